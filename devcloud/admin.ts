import type { FastifyInstance, FastifyRequest } from 'fastify';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FaultInjector, FaultSpec, FaultStatus } from './faults.js';
import { sendError } from './http.js';
import { checkLedger, type LedgerCheck } from './ledger-check.js';
import type { LogPage, LogServiceSummary } from './log-store.js';
import { logFilter, logFilterFromQuery, type LogQuery } from './logs.js';
import { provisioningAdmin, type NewProvisioningKey, type ProvisioningKeyView } from './provisioning.js';
import type { DevCloudStore, HealthRecord, JobView, MessagePage, ReceivedCounts, ReportRecord, ShadowDesiredView } from './store.js';
import {
  isObject,
  notFound,
  optionalInt,
  queryInt,
  rejectUnknownKeys,
  requireId,
  requireObject,
  requireUuid,
  fail,
} from './validate.js';
import { secretsAdmin } from './secrets.js';

/**
 * The admin operations, as methods for in-process tests and as HTTP routes on the admin listener.
 * The methods validate their arguments like the routes do (they throw a DevCloudError with a
 * statusCode), so both paths behave the same.
 */
export interface AdminApi {
  /** Creates a device or replaces its API key. */
  createDevice(device: { uuid: string; apiKey: string }): { uuid: string; created: boolean };
  /** Stores a new target document; the device's ETag changes even when the content does not. */
  setTarget(uuid: string, target: Record<string, unknown>): { etag: string; revision: number };
  target(uuid: string): { etag: string; revision: number; target: unknown };
  received(uuid: string): ReceivedCounts;
  messages(uuid: string, query?: { after?: number; limit?: number }): MessagePage;
  reports(uuid: string, query?: { limit?: number }): { reports: ReportRecord[] };
  health(uuid: string, query?: { limit?: number }): { health: HealthRecord[] };
  /** The device's latest health report's loss ledger checked against the ids stored (ledger-check.ts). */
  ledger(uuid: string): LedgerCheck;
  createJob(uuid: string, job: { type: string; params?: Record<string, unknown>; timeoutSeconds?: number }): { id: string };
  /** Sets the device shadow's desired state (what `GET …/shadow/desired` answers); the version goes up by one. */
  setShadowDesired(uuid: string, state: Record<string, unknown>): ShadowDesiredView;
  shadowDesired(uuid: string): ShadowDesiredView | null;
  job(uuid: string, id: string): JobView;
  /** Device log lines by service, seq, then arrival; filters as `GET /admin/devices/:uuid/logs` (logs.ts). */
  logs(uuid: string, query?: LogQuery): LogPage;
  /** Per service: lines, first and last seq, newest line ts, log messages. */
  logServices(uuid: string): { services: LogServiceSummary[] };
  /** Sets a device secret (the device fetches it when its target names it); the answer never holds the value. */
  setSecret(uuid: string, name: string, body: unknown): { name: string; version: number };
  deleteSecret(uuid: string, name: string): { name: string; removed: true };
  /** Names and times only. */
  secrets(uuid: string): { version: number; secrets: { name: string; updatedAt: number }[] };
  /** A fleet provisioning key `{ fleet, expiresInSeconds?, maxDevices? }`; the key is in this answer only. */
  createProvisioningKey(spec: { fleet: string; expiresInSeconds?: number; maxDevices?: number }): NewProvisioningKey;
  provisioningKeys(): { keys: ProvisioningKeyView[] };
  revokeProvisioningKey(id: string): { id: string; revoked: true };
  /** The device's key is refused (401 invalid_token) from now on; it may register again. */
  revokeDeviceKey(uuid: string): { uuid: string; revoked: true };
  setFaults(spec: FaultSpec): Promise<FaultStatus>;
  clearFaults(): Promise<FaultStatus>;
  faults(): FaultStatus;
}

export const DEFAULT_PAGE = 1000;
export const MAX_PAGE = 10_000;
export const DEFAULT_JOB_TIMEOUT_SECONDS = 300;

export function createAdminApi(store: DevCloudStore, faults: FaultInjector): AdminApi {
  return {
    createDevice(device) {
      const body = requireObject(device, 'body');
      rejectUnknownKeys(body, '', ['uuid', 'apiKey']);
      const uuid = requireUuid(body.uuid);
      const apiKey = requireId(body.apiKey, 'apiKey', 4096);
      return { uuid, created: store.upsertDevice(uuid, apiKey) };
    },
    setTarget(uuid, target) {
      const id = requireUuid(uuid);
      const { etag, revision } = store.setTarget(id, requireObject(target, 'target'));
      return { etag, revision };
    },
    ...secretsAdmin(store),
    setShadowDesired(uuid, state) {
      return store.setShadowDesired(requireUuid(uuid), requireObject(state, 'state'));
    },
    shadowDesired(uuid) {
      return store.shadowDesired(requireUuid(uuid)) ?? null;
    },
    target(uuid) {
      const t = store.target(requireUuid(uuid));
      return { etag: t.etag, revision: t.revision, target: JSON.parse(t.json) as unknown };
    },
    received(uuid) {
      return store.received(requireUuid(uuid));
    },
    messages(uuid, query = {}) {
      const after = optionalInt(query.after, 'after', 0, Number.MAX_SAFE_INTEGER, 0);
      const limit = optionalInt(query.limit, 'limit', 1, MAX_PAGE, DEFAULT_PAGE);
      return store.messages(requireUuid(uuid), after, limit);
    },
    reports(uuid, query = {}) {
      return { reports: store.reports(requireUuid(uuid), optionalInt(query.limit, 'limit', 1, MAX_PAGE, 100)) };
    },
    health(uuid, query = {}) {
      return { health: store.health(requireUuid(uuid), optionalInt(query.limit, 'limit', 1, MAX_PAGE, 100)) };
    },
    ledger(uuid) {
      const id = requireUuid(uuid);
      const last = store.health(id, 1)[0];
      return checkLedger(last?.health, last?.receivedAt ?? null, (channel) => store.idsOf(id, channel));
    },
    createJob(uuid, job) {
      const body = requireObject(job, 'body');
      rejectUnknownKeys(body, '', ['type', 'params', 'timeoutSeconds']);
      const type = requireId(body.type, 'type');
      const params = body.params === undefined ? {} : body.params;
      if (!isObject(params)) fail('params', 'a JSON object', params);
      const timeoutSeconds = optionalInt(body.timeoutSeconds, 'timeoutSeconds', 1, 30 * 24 * 3600, DEFAULT_JOB_TIMEOUT_SECONDS);
      return { id: store.createJob(requireUuid(uuid), { type, params, timeoutSeconds }) };
    },
    job(uuid, id) {
      const job = store.job(requireUuid(uuid), id);
      if (!job) throw notFound(`device ${uuid} has no job ${JSON.stringify(id)}`);
      return job;
    },
    logs(uuid, query = {}) {
      const filter = logFilter(query);
      return store.logs.lines(requireUuid(uuid), filter);
    },
    logServices(uuid) {
      return { services: store.logs.services(requireUuid(uuid)) };
    },
    ...provisioningAdmin(store.provisioning),
    setFaults: (spec) => faults.set(spec),
    clearFaults: () => faults.clear(),
    faults: () => faults.status(),
  };
}

function sameSecret(a: string, b: string): boolean {
  const x = createHash('sha256').update(a).digest();
  const y = createHash('sha256').update(b).digest();
  return timingSafeEqual(x, y);
}

type Uuid = { Params: { uuid: string } };
type Limit = { Querystring: { limit?: string; after?: string } };

/** Registers `/admin/...` on the admin listener. `GET /admin/healthz` needs no token, for probes. */
export function registerAdminRoutes(app: FastifyInstance, admin: AdminApi, adminToken?: string): void {
  if (adminToken !== undefined) {
    app.addHook('onRequest', (request, reply, done) => {
      if (request.url === '/admin/healthz') return done();
      const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '');
      if (match?.[1] !== undefined && sameSecret(match[1], adminToken)) return done();
      void reply.header('www-authenticate', 'Bearer');
      sendError(reply, 401, 'Authorization header: expected "Bearer <adminToken>"', 'UNAUTHORIZED');
    });
  }

  app.get('/admin/healthz', async () => ({ ok: true }));

  app.post('/admin/devices', async (request, reply) => {
    const result = admin.createDevice(request.body as { uuid: string; apiKey: string });
    return reply.code(result.created ? 201 : 200).send(result);
  });
  app.put('/admin/devices/:uuid/target', async (request: FastifyRequest<Uuid>) =>
    admin.setTarget(request.params.uuid, request.body as Record<string, unknown>),
  );
  app.get('/admin/devices/:uuid/target', async (request: FastifyRequest<Uuid>) => admin.target(request.params.uuid));
  app.put('/admin/devices/:uuid/shadow/desired', async (request: FastifyRequest<Uuid>) =>
    admin.setShadowDesired(request.params.uuid, request.body as Record<string, unknown>),
  );
  app.get('/admin/devices/:uuid/shadow/desired', async (request: FastifyRequest<Uuid>) => admin.shadowDesired(request.params.uuid));
  app.get('/admin/devices/:uuid/received', async (request: FastifyRequest<Uuid>) => admin.received(request.params.uuid));
  app.get('/admin/devices/:uuid/messages', async (request: FastifyRequest<Uuid & Limit>) =>
    admin.messages(request.params.uuid, {
      after: queryInt(request.query.after, 'after', 0, Number.MAX_SAFE_INTEGER, 0),
      limit: queryInt(request.query.limit, 'limit', 1, MAX_PAGE, DEFAULT_PAGE),
    }),
  );
  app.get('/admin/devices/:uuid/reports', async (request: FastifyRequest<Uuid & Limit>) =>
    admin.reports(request.params.uuid, { limit: queryInt(request.query.limit, 'limit', 1, MAX_PAGE, 100) }),
  );
  app.get('/admin/devices/:uuid/health', async (request: FastifyRequest<Uuid & Limit>) =>
    admin.health(request.params.uuid, { limit: queryInt(request.query.limit, 'limit', 1, MAX_PAGE, 100) }),
  );
  app.get('/admin/devices/:uuid/ledger', async (request: FastifyRequest<Uuid>) => admin.ledger(request.params.uuid));
  app.post('/admin/devices/:uuid/jobs', async (request: FastifyRequest<Uuid>, reply) =>
    reply.code(201).send(admin.createJob(request.params.uuid, request.body as { type: string })),
  );
  app.get('/admin/devices/:uuid/jobs/:id', async (request: FastifyRequest<{ Params: { uuid: string; id: string } }>) =>
    admin.job(request.params.uuid, request.params.id),
  );

  app.get('/admin/devices/:uuid/logs', async (request: FastifyRequest<Uuid & { Querystring: Record<string, string | undefined> }>) =>
    admin.logs(request.params.uuid, logFilterFromQuery(request.query)),
  );
  app.get('/admin/devices/:uuid/logs/services', async (request: FastifyRequest<Uuid>) => admin.logServices(request.params.uuid));

  app.put('/admin/devices/:uuid/secrets/:name', async (request: FastifyRequest<{ Params: { uuid: string; name: string } }>) =>
    admin.setSecret(request.params.uuid, request.params.name, request.body),
  );
  app.delete('/admin/devices/:uuid/secrets/:name', async (request: FastifyRequest<{ Params: { uuid: string; name: string } }>) =>
    admin.deleteSecret(request.params.uuid, request.params.name),
  );
  app.get('/admin/devices/:uuid/secrets', async (request: FastifyRequest<Uuid>) => admin.secrets(request.params.uuid));
  app.post('/admin/provisioning-keys', async (request, reply) => reply.code(201).send(admin.createProvisioningKey(request.body as { fleet: string })));
  app.get('/admin/provisioning-keys', async () => admin.provisioningKeys());
  app.post('/admin/provisioning-keys/:id/revoke', async (request: FastifyRequest<{ Params: { id: string } }>) => admin.revokeProvisioningKey(request.params.id));
  app.post('/admin/devices/:uuid/revoke-key', async (request: FastifyRequest<Uuid>) => admin.revokeDeviceKey(request.params.uuid));

  app.get('/admin/faults', async () => admin.faults());
  app.put('/admin/faults', async (request) => admin.setFaults(request.body as FaultSpec));
  app.delete('/admin/faults', async () => admin.clearFaults());
}
