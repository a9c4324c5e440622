import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { AdminApi, StoredMessage } from './server.js';

/**
 * Helpers for tests that need a device cloud in another process (the agent's integration tests
 * and the chaos runner): `spawnDevCloud` runs the built CLI, `adminClient` drives its admin API over HTTP.
 * In-process tests can call `startDevCloud` and use its `admin` object instead; both have the
 * same methods.
 */

// Always the built CLI: next to this file once compiled, under dist/ when this runs from source (tests).
export const DEVCLOUD_CLI = fileURLToPath(
  new URL(import.meta.url.includes('/dist/devcloud/') ? './cli.js' : '../dist/devcloud/cli.js', import.meta.url),
);

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnDevCloudOptions {
  /** SQLite file to keep state in; without it the devcloud keeps everything in memory. */
  dataFile?: string;
  /** Device API port; 0 (the default) picks a free one. Pass a previous `port` to restart on it. */
  port?: number;
  /** Admin API port; default: a free one. */
  adminPort?: number;
  adminToken?: string;
  autoProvision?: boolean;
  /** More CLI arguments, e.g. `['--log-level', 'debug']`. */
  args?: string[];
  /** A command the devcloud runs under, e.g. `['ip', 'netns', 'exec', 'ns1']` (in a network namespace); it must exec it. */
  prefix?: string[];
  /** How long to wait for the listening line. Default 15 s. */
  startTimeoutMs?: number;
}

export interface SpawnedDevCloud {
  url: string;
  adminUrl: string;
  port: number;
  adminPort: number;
  child: ChildProcess;
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  /** Sends `signal` (default SIGTERM) and resolves with how the process ended. */
  stop(signal?: NodeJS.Signals): Promise<ExitInfo>;
  /** SIGKILL: no cleanup, as after a crash or power cut. */
  kill(): Promise<ExitInfo>;
}

interface ListeningLine {
  event: 'listening';
  url: string;
  adminUrl: string;
  port: number;
  adminPort: number;
}

export async function spawnDevCloud(opts: SpawnDevCloudOptions = {}): Promise<SpawnedDevCloud> {
  if (!existsSync(DEVCLOUD_CLI)) {
    throw new Error(`${DEVCLOUD_CLI} does not exist: build first with "npx tsc -p tsconfig.json"`);
  }
  // --exit-on-stdin-end: if this test process dies, the pipe closes and the devcloud stops too.
  const args = [DEVCLOUD_CLI, '--port', String(opts.port ?? 0), '--admin-port', String(opts.adminPort ?? 0), '--exit-on-stdin-end'];
  if (opts.dataFile !== undefined) args.push('--data', opts.dataFile);
  if (opts.autoProvision === false) args.push('--no-auto-provision');
  if (opts.adminToken !== undefined) args.push('--admin-token', opts.adminToken);
  args.push(...(opts.args ?? []));

  const [file = '', ...rest] = [...(opts.prefix ?? []), process.execPath, ...args];
  const child = spawn(file, rest, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<ExitInfo>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const lines = createInterface({ input: child.stdout });
  const timeoutMs = opts.startTimeoutMs ?? 15_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    const line = await Promise.race([
      new Promise<ListeningLine>((resolve) => {
        lines.on('line', (text) => {
          try {
            const parsed = JSON.parse(text) as Partial<ListeningLine>;
            if (parsed.event === 'listening') resolve(parsed as ListeningLine);
          } catch {
            // not our line
          }
        });
      }),
      exited.then((info): never => {
        throw new Error(`devcloud exited before listening (code ${info.code}, signal ${info.signal}): ${stderr.trim()}`);
      }),
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`devcloud did not print its listening line within ${timeoutMs} ms: ${stderr.trim()}`)), timeoutMs);
      }),
    ]);
    const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<ExitInfo> => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    };
    return {
      url: line.url,
      adminUrl: line.adminUrl,
      port: line.port,
      adminPort: line.adminPort,
      child,
      stderr: () => stderr,
      stop,
      kill: () => stop('SIGKILL'),
    };
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Each method of the in-process AdminApi, as an HTTP call resolving to the same result. */
type Remote<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : never;
};

export type AdminClient = Remote<AdminApi> & {
  healthz(): Promise<boolean>;
  /** Every stored message of a device, following the cursor page by page. */
  allMessages(uuid: string): Promise<StoredMessage[]>;
};

export class AdminHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
    message: string,
  ) {
    super(message);
    this.name = 'AdminHttpError';
  }
}

export function adminClient(adminUrl: string, opts: { token?: string } = {}): AdminClient {
  const base = adminUrl.replace(/\/$/, '');

  async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    const parsed: unknown = text === '' ? undefined : JSON.parse(text);
    if (!res.ok) {
      const message = (parsed as { message?: string } | undefined)?.message ?? text;
      throw new AdminHttpError(res.status, parsed, `${method} ${path} answered ${res.status}: ${message}`);
    }
    return parsed as T;
  }

  const device = (uuid: string): string => `/admin/devices/${encodeURIComponent(uuid)}`;
  const query = (q: Record<string, string | number | undefined>): string => {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
    const s = params.toString();
    return s === '' ? '' : `?${s}`;
  };

  const client: AdminClient = {
    healthz: async () => (await call<{ ok: boolean }>('GET', '/admin/healthz')).ok,
    createDevice: (d) => call('POST', '/admin/devices', d),
    setTarget: (uuid, target) => call('PUT', `${device(uuid)}/target`, target),
    target: (uuid) => call('GET', `${device(uuid)}/target`),
    received: (uuid) => call('GET', `${device(uuid)}/received`),
    messages: (uuid, q = {}) => call('GET', `${device(uuid)}/messages${query({ after: q.after, limit: q.limit })}`),
    async allMessages(uuid) {
      const all: StoredMessage[] = [];
      for (let after = 0; ; ) {
        const page = await client.messages(uuid, { after, limit: 1000 });
        all.push(...page.messages);
        if (!page.more) return all;
        after = page.nextAfter;
      }
    },
    reports: (uuid, q = {}) => call('GET', `${device(uuid)}/reports${query({ limit: q.limit })}`),
    health: (uuid, q = {}) => call('GET', `${device(uuid)}/health${query({ limit: q.limit })}`),
    ledger: (uuid) => call('GET', `${device(uuid)}/ledger`),
    createJob: (uuid, job) => call('POST', `${device(uuid)}/jobs`, job),
    setShadowDesired: (uuid, state) => call('PUT', `${device(uuid)}/shadow/desired`, state),
    shadowDesired: (uuid) => call('GET', `${device(uuid)}/shadow/desired`),
    job: (uuid, id) => call('GET', `${device(uuid)}/jobs/${encodeURIComponent(id)}`),
    logs: (uuid, q = {}) =>
      call('GET', `${device(uuid)}/logs${query({ service: q.service, since: q.since, until: q.until, afterSeq: q.afterSeq, limit: q.limit })}`),
    logServices: (uuid) => call('GET', `${device(uuid)}/logs/services`),
    setSecret: (uuid, name, body) => call('PUT', `${device(uuid)}/secrets/${encodeURIComponent(name)}`, body),
    deleteSecret: (uuid, name) => call('DELETE', `${device(uuid)}/secrets/${encodeURIComponent(name)}`),
    secrets: (uuid) => call('GET', `${device(uuid)}/secrets`),
    createProvisioningKey: (spec) => call('POST', '/admin/provisioning-keys', spec),
    provisioningKeys: () => call('GET', '/admin/provisioning-keys'),
    revokeProvisioningKey: (id) => call('POST', `/admin/provisioning-keys/${encodeURIComponent(id)}/revoke`),
    revokeDeviceKey: (uuid) => call('POST', `${device(uuid)}/revoke-key`),
    setFaults: (spec) => call('PUT', '/admin/faults', spec),
    clearFaults: () => call('DELETE', '/admin/faults'),
    faults: () => call('GET', '/admin/faults'),
  };
  return client;
}
