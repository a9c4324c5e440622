import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { createAdminApi, registerAdminRoutes, type AdminApi } from './admin.js';
import { registerDeviceApi, type DeviceRequestEvent } from './device-api.js';
import { FaultInjector } from './faults.js';
import { formatUrl, installErrorHandling, installGunzip } from './http.js';
import { Listener } from './listener.js';
import { DevCloudStore } from './store.js';

export type { DeviceRequestEvent } from './device-api.js';

export type { AdminApi } from './admin.js';
export { DevCloudError } from './validate.js';
export type { FaultSpec, FaultStatus } from './faults.js';
export type { LogPage, LogServiceSummary, StoredLogLine } from './log-store.js';
export type { LogQuery } from './logs.js';
export type {
  HealthRecord,
  JobStatus,
  JobUpdateRecord,
  JobView,
  MessagePage,
  ReceivedCounts,
  ReportRecord,
  StoredMessage,
} from './store.js';

export interface DevCloudOptions {
  /** Address both listeners bind to. Default `127.0.0.1`. */
  host?: string;
  /** Device API port; 0 (the default) picks a free one. */
  port?: number;
  /** Admin API port; 0 (the default) picks a free one. */
  adminPort?: number;
  /** SQLite file; `:memory:` (the default) keeps nothing after close. */
  dbPath?: string;
  /** Register an unknown device with the key it presents first (trust on first use). Default true. */
  autoProvision?: boolean;
  /** When set, the admin API requires `Authorization: Bearer <adminToken>`. */
  adminToken?: string;
  /** Request logging goes here; without it the devcloud logs nothing. */
  logger?: Logger;
  /** Largest device request body, after decompression. Default 8 MiB. */
  bodyLimit?: number;
  /** Wall clock for stored timestamps. Default `Date.now`. */
  now?: () => number;
  /** Sees every device API request as it arrives and as it is answered (a benchmark's clock on the cloud side). */
  observe?: DeviceRequestObserver;
}

/** A device request seen by the devcloud: `request` on arrival (before faults), `response` with the status sent. */
export type DeviceRequestObserver = (e: DeviceRequestEvent) => void;

export interface DevCloud {
  /** Device API base URL, e.g. `http://127.0.0.1:41234` (the agent's `cloud.apiUrl`). */
  url: string;
  adminUrl: string;
  port: number;
  adminPort: number;
  /** The admin operations, in process. */
  admin: AdminApi;
  /** Stops both listeners, drops held connections, closes the database. Safe to call twice. */
  close(): Promise<void>;
}

export const DEFAULT_BODY_LIMIT = 8 * 1024 * 1024;

function createApp(opts: DevCloudOptions, bodyLimit: number): FastifyInstance {
  const app = opts.logger
    ? Fastify({ loggerInstance: opts.logger, bodyLimit, routerOptions: { maxParamLength: 200 }, forceCloseConnections: true })
    : Fastify({ logger: false, bodyLimit, routerOptions: { maxParamLength: 200 }, forceCloseConnections: true });
  installErrorHandling(app as unknown as FastifyInstance, bodyLimit);
  return app as unknown as FastifyInstance;
}

export async function startDevCloud(opts: DevCloudOptions = {}): Promise<DevCloud> {
  const host = opts.host ?? '127.0.0.1';
  const bodyLimit = opts.bodyLimit ?? DEFAULT_BODY_LIMIT;
  const now = opts.now ?? Date.now;
  const store = DevCloudStore.open(opts.dbPath ?? ':memory:', now);

  const deviceApp = createApp(opts, bodyLimit);
  const adminApp = createApp(opts, bodyLimit);
  // The device app's server is driven by a Listener, not app.listen(), so "refuse" can close it
  // and listen again on the same port.
  const listener = new Listener(deviceApp.server, host);
  const faults = new FaultInjector(listener, now, opts.logger);
  const admin = createAdminApi(store, faults);

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      await faults.dispose();
      await listener.close();
      await Promise.allSettled([deviceApp.close(), adminApp.close()]);
      store.close();
    })();
    return closing;
  };

  try {
    installGunzip(deviceApp);
    registerDeviceApi(deviceApp, { store, faults, autoProvision: opts.autoProvision ?? true, observe: opts.observe });
    registerAdminRoutes(adminApp, admin, opts.adminToken);
    await deviceApp.ready();
    const port = await listener.listen(opts.port ?? 0);
    await adminApp.listen({ host, port: opts.adminPort ?? 0 });
    const adminPort = (adminApp.server.address() as { port: number }).port;
    return { url: formatUrl(host, port), adminUrl: formatUrl(host, adminPort), port, adminPort, admin, close };
  } catch (err) {
    await close();
    throw err;
  }
}
