import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { FaultInjector } from './faults.js';
import { sendError } from './http.js';
import { parseLogBatch } from './logs.js';
import { registerRegistrationRoute } from './provisioning.js';
import { UPDATE_STATUSES, type DevCloudStore, type IncomingMessage, type JobUpdateStatus } from './store.js';
import {
  badRequest,
  DEVICE_UUID,
  fail,
  requireFiniteNumber,
  requireId,
  requireObject,
  requireString,
  requireUuid,
} from './validate.js';

/** The HTTP device API of PROTOCOL.md, under `/device/v1/:uuid/`. */

export const DEVICE_PREFIX = '/device/v1/:uuid';

export interface DeviceApiDeps {
  store: DevCloudStore;
  faults: FaultInjector;
  autoProvision: boolean;
  observe?: ((e: DeviceRequestEvent) => void) | undefined;
}

/** A device request as it arrives and as it is answered (what a bench or test observing the cloud sees). */
export interface DeviceRequestEvent {
  phase: 'request' | 'response';
  /** The device the path names, when it names one. */
  uuid: string | undefined;
  method: string;
  /** The matched route, e.g. `/device/v1/:uuid/state` (empty when none matched). */
  route: string;
  status?: number;
}

type UuidRequest = FastifyRequest<{ Params: { uuid: string } }>;

export function registerDeviceApi(app: FastifyInstance, deps: DeviceApiDeps): void {
  const { store, faults } = deps;

  // Counted before the faults run, so a test sees every request a device made, including the ones
  // a fault answered (e.g. how many came during a throttle).
  app.addHook('onRequest', (request, _reply, done) => {
    const uuid = deviceOf(request);
    const route = request.routeOptions.url ?? '';
    if (uuid !== undefined) store.countRequest(uuid, `${request.method} ${route}`);
    deps.observe?.({ phase: 'request', uuid, method: request.method, route });
    done();
  });
  app.addHook('onRequest', faults.onRequest);
  app.addHook('onResponse', (request, reply, done) => {
    const uuid = deviceOf(request);
    if (uuid !== undefined) store.bump(uuid, `status:${reply.statusCode}`);
    deps.observe?.({ phase: 'response', uuid, method: request.method, route: request.routeOptions.url ?? '', status: reply.statusCode });
    done();
  });

  registerRegistrationRoute(app, store.provisioning);

  // Encapsulated so that auth runs after the hooks above and only on matched device routes.
  void app.register((device, _opts, done) => {
    device.addHook('onRequest', (request: UuidRequest, reply, next) => {
      let denial: Denial | null;
      try {
        denial = authenticate(request, deps);
      } catch (err) {
        next(err as Error);
        return;
      }
      if (denial === null) return next();
      void reply.header('www-authenticate', denial.challenge);
      sendError(reply, 401, denial.message, 'UNAUTHORIZED');
    });
    registerRoutes(device, store, faults);
    done();
  });
}

function deviceOf(request: FastifyRequest): string | undefined {
  const uuid = (request.params as { uuid?: unknown } | undefined)?.uuid;
  return typeof uuid === 'string' && DEVICE_UUID.test(uuid) ? uuid : undefined;
}

interface Denial {
  message: string;
  challenge: string;
}

/** Checks the bearer key; an unknown device is registered with it when auto-provisioning is on. */
function authenticate(request: UuidRequest, deps: DeviceApiDeps): Denial | null {
  const uuid = requireUuid(request.params.uuid, 'uuid (in the path)');
  const header = request.headers.authorization;
  const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!match?.[1]) {
    return {
      message: `Authorization header: expected "Bearer <apiKey>", got ${header === undefined ? 'none' : 'another form'}`,
      challenge: 'Bearer',
    };
  }
  const result = deps.store.authenticate(uuid, match[1], deps.autoProvision);
  if (result === 'provisioned') request.log.info({ uuid }, 'devcloud registered a device on first use');
  if (result === 'ok' || result === 'provisioned') return null;
  return {
    message:
      result === 'wrong-key'
        ? `device ${uuid}: the API key does not match the one registered for this device`
        : result === 'revoked'
          ? `device ${uuid}: the device key was revoked; register again (POST /device/v1/register)`
          : `device ${uuid} is not registered and auto-provisioning is off`,
    challenge: 'Bearer error="invalid_token"',
  };
}

/** Weak comparison, as RFC 9110 asks for If-None-Match; `*` matches any current document. */
function ifNoneMatchHits(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  const opaque = (tag: string): string => (tag.startsWith('W/') ? tag.slice(2) : tag);
  return header.split(',').some((t) => {
    const tag = t.trim();
    return tag === '*' || opaque(tag) === opaque(etag);
  });
}

function parseMessages(body: unknown): IncomingMessage[] {
  const obj = requireObject(body, 'body');
  if (!Array.isArray(obj.messages)) fail('messages', 'an array', obj.messages);
  return obj.messages.map((raw: unknown, i): IncomingMessage => {
    const at = `messages[${i}]`;
    const m = requireObject(raw, at);
    const id = requireId(m.id, `${at}.id`);
    const channel = requireString(m.channel, `${at}.channel`);
    const ts = requireFiniteNumber(m.ts, `${at}.ts`);
    if (!('payload' in m)) fail(`${at}.payload`, 'a JSON value (null is allowed)', undefined);
    if (m.backfill !== undefined && typeof m.backfill !== 'boolean') fail(`${at}.backfill`, 'a boolean when present', m.backfill);
    return { id, channel, ts, payload: m.payload, ...(m.backfill === true ? { backfill: true as const } : {}) };
  });
}

interface Rejection {
  id: string;
  status: number;
  reason: string;
}

/** Messages whose id the admin poisoned (faults.ts) are rejected one by one; the rest go on. */
function splitPoisoned<T extends { id: string }>(batch: readonly T[], faults: FaultInjector): { accepted: T[]; rejected: Rejection[] } {
  const accepted: T[] = [];
  const rejected: Rejection[] = [];
  for (const m of batch) {
    if (faults.poisoned(m.id)) rejected.push({ id: m.id, status: 422, reason: 'rejected by the devcloud: poisoned message id (fault injection)' });
    else accepted.push(m);
  }
  return { accepted, rejected };
}

function secretsVersion(n: number): string {
  return `s${n}`;
}

/** The target as served: with `secretsVersion` once the device has secrets, and an ETag that changes with it. */
function withSecretsVersion(target: { etag: string; json: string }, version: number): { etag: string; json: string } {
  if (version === 0) return target;
  const doc = JSON.parse(target.json) as Record<string, unknown>;
  return { etag: `${target.etag.slice(0, -1)}-${secretsVersion(version)}"`, json: JSON.stringify({ ...doc, secretsVersion: secretsVersion(version) }) };
}

function registerRoutes(app: FastifyInstance, store: DevCloudStore, faults: FaultInjector): void {
  app.get(`${DEVICE_PREFIX}/state`, async (request: UuidRequest, reply) => {
    const target = withSecretsVersion(store.target(request.params.uuid), store.secrets.version(request.params.uuid));
    void reply.header('etag', target.etag).header('cache-control', 'no-cache');
    if (ifNoneMatchHits(request.headers['if-none-match'], target.etag)) return reply.code(304).send();
    return reply.type('application/json; charset=utf-8').send(target.json);
  });

  // The device's secrets (docs/protocol.md, "Secrets"); the ETag is the version the target carries.
  app.get(`${DEVICE_PREFIX}/secrets`, async (request: UuidRequest, reply) => {
    const version = secretsVersion(store.secrets.version(request.params.uuid));
    const etag = JSON.stringify(version);
    void reply.header('etag', etag).header('cache-control', 'no-store');
    if (ifNoneMatchHits(request.headers['if-none-match'], etag)) return reply.code(304).send();
    return { version, secrets: store.secrets.values(request.params.uuid) };
  });

  // The shadow's desired state for devices without MQTT: 204 until one is set; the ETag is its version.
  app.get(`${DEVICE_PREFIX}/shadow/desired`, async (request: UuidRequest, reply) => {
    const desired = store.shadowDesired(request.params.uuid);
    if (!desired) return reply.code(204).send();
    const etag = `"shadow-${desired.version}"`;
    void reply.header('etag', etag).header('cache-control', 'no-cache');
    if (ifNoneMatchHits(request.headers['if-none-match'], etag)) return reply.code(304).send();
    return desired;
  });

  app.patch(`${DEVICE_PREFIX}/state`, async (request: UuidRequest) => {
    const body = requireObject(request.body, 'body');
    const reportId = requireId(body.reportId, 'reportId');
    const state = requireObject(body.state, 'state');
    const key = request.headers['idempotency-key'];
    if (key !== reportId) {
      throw badRequest(
        `Idempotency-Key header: expected the reportId ${JSON.stringify(reportId)}, got ${key === undefined ? 'no header' : JSON.stringify(key)}`,
      );
    }
    const duplicate = store.addReport(request.params.uuid, reportId, state);
    return { reportId, duplicate };
  });

  app.post(`${DEVICE_PREFIX}/messages`, async (request: UuidRequest) => {
    const { accepted, rejected } = splitPoisoned(parseMessages(request.body), faults);
    const { duplicates } = store.addMessages(request.params.uuid, accepted, rejected.length);
    return { accepted: [...new Set(accepted.map((m) => m.id))], rejected, duplicates };
  });

  // Device logs (docs/protocol.md, "Logs"): answered like messages; a log message seen before keeps its first lines.
  app.post(`${DEVICE_PREFIX}/logs`, async (request: UuidRequest) => {
    const { accepted, rejected } = splitPoisoned(parseLogBatch(request.body), faults);
    const { duplicates } = store.logs.add(request.params.uuid, accepted, rejected.length);
    return { accepted: [...new Set(accepted.map((m) => m.id))], rejected, duplicates };
  });

  app.post(`${DEVICE_PREFIX}/health`, async (request: UuidRequest, reply) => {
    const key = request.headers['idempotency-key'];
    store.addHealth(request.params.uuid, requireObject(request.body, 'body'), typeof key === 'string' ? requireId(key, 'Idempotency-Key') : undefined);
    return reply.code(204).send();
  });

  app.get(`${DEVICE_PREFIX}/jobs/next`, async (request: UuidRequest, reply) => {
    const job = store.takeNextJob(request.params.uuid);
    return job ?? reply.code(204).send();
  });

  app.patch(`${DEVICE_PREFIX}/jobs/:jobId`, async (request: FastifyRequest<{ Params: { uuid: string; jobId: string } }>, reply) => {
    const body = requireObject(request.body, 'body');
    const updateId = requireId(body.updateId, 'updateId');
    const status = body.status;
    if (typeof status !== 'string' || !(UPDATE_STATUSES as readonly string[]).includes(status)) {
      fail('status', `one of ${UPDATE_STATUSES.join('|')}`, status);
    }
    const details = body.details === undefined ? null : body.details;
    const { uuid, jobId } = request.params;
    const result = store.updateJob(uuid, jobId, updateId, status as JobUpdateStatus, details);
    if (!result.found) return sendError(reply, 404, `device ${uuid} has no job ${JSON.stringify(jobId)}`, 'UNKNOWN_JOB');
    return { jobId, updateId, duplicate: result.duplicate, status: result.status };
  });
}
