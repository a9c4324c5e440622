import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { z } from 'zod';
import { formatIssue, fromZodIssues } from '../config/issues.js';
import { isIPv6 } from 'node:net';
import type { HeldListener } from '../util/held-listener.js';
import type { Logger } from '../util/logger.js';
import type { LoopStatus } from '../util/loops.js';
import { bearerMatches } from './auth.js';
import { dashboardHtml } from './dashboard.js';
import { drainBody } from './drain-body.js';
import type { TargetValidation } from '../workloads/target-schema.js';
import { isOutboxError } from '../outbox/types.js';
import { ShadowError } from '../shadow/shadow.js';
import { LIMIT_DEFAULTS, type AgentConfig } from '../config/schema.js';
import { depthMessage, jsonDeeperThan } from '../util/json-limits.js';

function isShadowError(err: unknown): err is ShadowError {
  return err instanceof ShadowError;
}
import type { Json } from '../util/json-diff.js';

/** What the local API shows and controls; `assembly/api.ts` builds it from the agent's parts. */
export interface ApiView {
  version: string;
  uuid: string;
  loops(): LoopStatus[];
  healthy(): boolean;
  connection(): unknown;
  state(): unknown;
  /** The effective config (secrets redacted), its source and, on a fallback, why. */
  config(): unknown;
  /** Triggers an immediate target-state poll; false when the agent has no cloud. */
  pollNow(): boolean;
  /** Local mode: validates and applies a target set on the device. */
  setLocalTarget(doc: unknown): TargetValidation;
  /** Ends local mode; false when it was not on. */
  clearLocalTarget(): boolean;
  /** Local ingestion: resolves once every item is durable on disk. */
  ingest(items: { stream: string; payload: Json }[]): Promise<{ id: string }[]>;
  /** The outbox per channel, the flushers, parked messages. */
  queue(): unknown;
  /** Puts parked messages (all, or these ids) back in the queue; returns how many. */
  retryParked(ids?: string[]): number;
  /** Deletes parked messages (all, or these ids), counted as dropped; returns how many. */
  purgeParked(ids?: string[]): number;
  /** Cloud jobs: enabled or why not, the one running, the latest ones. */
  jobs(): unknown;
  /** The local shadow; undefined when `features.shadow` is off. `patch` throws a ShadowError for bad input. */
  shadow?: { get(): unknown; patch(body: unknown): unknown; clearOverrides(): unknown } | undefined;
  metrics: MetricsExposition;
}

/** The Prometheus exposition (a prom-client Registry is one); its content type is read after `metrics()`. */
export interface MetricsExposition {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface ApiOptions {
  host: string;
  port: number;
  key: string;
  logger: Logger;
  dashboard: boolean;
  view: ApiView;
  /** Body size and JSON depth bounds; default the schema's. */
  limits?: Pick<AgentConfig['limits'], 'maxApiBodyBytes' | 'maxTargetBytes' | 'maxJsonDepth'>;
  /** The port bound early in the start (its held connections are answered now); used when it is `host:port`. */
  listener?: HeldListener;
}

const LOCAL_TARGET_ROUTE = '/v2/local/target-state';

const OPEN_ROUTES = new Set(['/ping', '/v1/healthy', '/']);
// A refused body is read (and thrown away) up to this much and this long before the 413 goes out.
const REFUSED_BODY_DRAIN = { maxBytes: 64 * 1_048_576, maxMs: 10_000 };

export class BadRequest extends Error {
  readonly statusCode = 400;
}

/** Parses a body with a zod schema; failures become a 400 whose message names each field. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.output<T> {
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  // Stryker disable next-line StringLiteral: formatIssue shows a source only for environment variables (IOTISTIC_*)
  const issues = fromZodIssues(r.error.issues, body, () => 'body', () => false);
  throw new BadRequest(issues.map((i) => formatIssue({ ...i, path: i.path === '' ? 'body' : `body.${i.path}` })).join('; '));
}

const updateBody = z.strictObject({ force: z.boolean().optional() }).optional();

const parkedIds = z.array(z.string().min(1).max(128)).min(1).max(10_000);
/** No body (or no ids): every parked message. */
const retryParkedBody = z.strictObject({ ids: parkedIds.optional() }).optional();
/** Deleting is for good: the body names the ids, or says `all: true` (one of the two). */
const purgeParkedBody = z.strictObject({ ids: parkedIds.optional(), all: z.literal(true).optional() });

const STREAM = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const telemetryItem = z.strictObject({
  stream: z.string().regex(STREAM, 'a stream name of 1-64 letters, digits, ".", "_" or "-"'),
  payload: z.json(),
});
/** One item or up to 1000 at once (parsed apart, so errors name the item: a union would not). */
const telemetryBatch = z.array(telemetryItem).min(1).max(1000);

/** A route the API serves, as fastify registered it (HEAD included). */
export interface ApiRoute {
  method: string;
  url: string;
}

type Limits = Required<NonNullable<ApiOptions['limits']>>;

export async function startApi(opts: ApiOptions): Promise<{ app: FastifyInstance; url: string; routes: readonly ApiRoute[] }> {
  const { view } = opts;
  const limits = { ...LIMIT_DEFAULTS, ...opts.limits };
  const app = Fastify({
    // Stryker disable next-line BooleanLiteral: fastify's own request log (stdout) is off; nothing the API answers depends on it
    logger: false,
    bodyLimit: limits.maxApiBodyBytes,
    // A stop must not wait for a client holding a request open (a stuck ingest, a slow reader).
    forceCloseConnections: true,
  });
  // The route table, so that a test can check every route for auth (a new route cannot slip in open).
  const routes: ApiRoute[] = [];
  app.addHook('onRoute', (r) => {
    for (const method of [r.method].flat()) routes.push({ method, url: r.url });
  });
  installGuards(app, opts, limits);
  statusRoutes(app, view, opts.dashboard);
  controlRoutes(app, view, limits);
  shadowRoutes(app, view);

  const held = opts.listener;
  if (held?.available && held.host === opts.host && held.requestedPort === opts.port) {
    await app.ready();
    // Closing the app closes the listener and ends its connections (forceCloseConnections, for it).
    app.addHook('onClose', async () => held.close());
    held.adopt((socket) => app.server.emit('connection', socket));
    return { app, url: `http://${isIPv6(opts.host) ? `[${opts.host}]` : opts.host}:${held.port}`, routes };
  }
  await held?.close();
  const address = await app.listen({ host: opts.host, port: opts.port });
  return { app, url: address, routes };
}

/** What every request passes: the body limits and parser, the key, and errors as JSON naming the cause. */
function installGuards(app: FastifyInstance, opts: ApiOptions, limits: Limits): void {
  // Bodies are measured before they are parsed: what handles them (schemas, stringify) recurses.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  // Stryker disable next-line StringLiteral: fastify also lets a parser for application/json replace its built-in one
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if (jsonDeeperThan(body as string, limits.maxJsonDepth)) {
      opts.logger.warn({ url: req.url }, `local API: body refused, ${depthMessage('it', 'limits.maxJsonDepth', limits.maxJsonDepth)}`);
      done(new BadRequest(depthMessage('body', 'limits.maxJsonDepth', limits.maxJsonDepth)), undefined);
      return;
    }
    parseJson(req, body as string, done);
  });
  const bodyLimitOf = (url: string) =>
    url.split('?')[0] === LOCAL_TARGET_ROUTE
      ? `limits.maxTargetBytes (${limits.maxTargetBytes} bytes)`
      : `limits.maxApiBodyBytes (${limits.maxApiBodyBytes} bytes)`;

  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    const path =
      req.url.split('?')[0] ??
      // Stryker disable next-line StringLiteral: split() always returns a first element; the fallback is for the type checker
      '';
    if (OPEN_ROUTES.has(path)) return;
    if (!bearerMatches(req.headers.authorization, opts.key)) {
      await reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="iotistic-agent"')
        .send({ error: 'unauthorized', message: 'this route needs Authorization: Bearer <local API key> (see `iotistic-agent status --show-key`)' });
    }
  });

  app.setErrorHandler(async (err: Error & { statusCode?: number; code?: string }, req, reply) => {
    const status = err.statusCode ?? 500;
    if (status >= 500) opts.logger.error({ err: err.message, url: req.url }, 'local API error');
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      opts.logger.warn({ url: req.url, length: req.headers['content-length'] }, `local API: body refused, over ${bodyLimitOf(req.url)}`);
      // The answer waits for the rest of the body (thrown away), or the client never reads it.
      await drainBody(req.raw, REFUSED_BODY_DRAIN);
      return reply.code(413).send({ error: 'too_large', message: `body is larger than ${bodyLimitOf(req.url)}` });
    }
    // Fastify's JSON parser reports bad JSON with this code (not a SyntaxError).
    const message = err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' ? `body is not valid JSON: ${err.message}` : err.message;
    void reply.code(status).send({ error: status === 400 ? 'bad_request' : 'error', message });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` });
  });
}

/** What the agent shows: liveness, health, the views, metrics and the dashboard page. */
function statusRoutes(app: FastifyInstance, view: ApiView, dashboard: boolean | undefined): void {
  app.get('/ping', async (_req, reply) => {
    // Stryker disable next-line StringLiteral: fastify sends a string as text/plain anyway
    reply.type('text/plain');
    return reply.send('OK');
  });

  // Healthy means the agent's own loops are alive. It never looks at the cloud: a supervisor that
  // restarts agents whose cloud is down would restart a whole offline fleet in a storm.
  app.get('/v1/healthy', async (_req, reply) => {
    const healthy = view.healthy();
    const down = view.loops().filter((l) => l.state !== 'running');
    return reply.code(healthy ? 200 : 503).send({ healthy, down: down.map((l) => ({ loop: l.name, state: l.state, lastError: l.lastError })) });
  });

  app.get('/v2/connection', async () => view.connection());
  app.get('/v2/state', async () => view.state());
  app.get('/v2/config', async () => view.config());
  app.get('/v2/loops', async () => view.loops());
  app.get('/v2/device', async () => ({ uuid: view.uuid, version: view.version }));

  app.get('/v2/queue', async () => view.queue());
  app.get('/v2/jobs', async () => view.jobs());
  app.get('/metrics', async (_req, reply) => {
    const text = await view.metrics.metrics();
    return reply.type(view.metrics.contentType).send(text);
  });

  if (dashboard) {
    // The page holds no data: it asks the API for it with the key the user supplies (URL fragment).
    app.get('/', async (_req, reply) =>
      reply
        .type('text/html; charset=utf-8')
        .header('content-security-policy', "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
        .send(dashboardHtml(view.version)),
    );
  }
}

/** What local apps and operators change: a poll now, the local target, telemetry, parked messages. */
function controlRoutes(app: FastifyInstance, view: ApiView, limits: Limits): void {
  app.post('/v1/update', async (req, reply) => {
    parseBody(updateBody, req.body);
    if (!view.pollNow()) {
      return reply.code(409).send({ error: 'no_cloud', message: 'cloud.apiUrl is not set: the agent runs in local mode and has nothing to poll' });
    }
    return reply.code(202).send({ polling: true });
  });

  app.post(LOCAL_TARGET_ROUTE, { bodyLimit: limits.maxTargetBytes }, async (req, reply) => {
    const r = view.setLocalTarget(req.body);
    if (!r.ok) return reply.code(400).send({ error: 'bad_request', message: r.message, issues: r.issues });
    return reply.code(200).send({ version: r.target.version, mode: 'local' });
  });
  app.delete('/v2/local/target-state', async (_req, reply) => {
    if (!view.clearLocalTarget()) return reply.code(409).send({ error: 'not_local', message: 'the agent is not in local mode' });
    return reply.code(200).send({ mode: 'cloud' });
  });

  // Local apps hand data to the agent; 202 only once it is durable on disk (a power cut after the
  // answer loses nothing). A full queue or disk answers 507, a closed one 503, with the reason.
  app.post('/v2/telemetry', async (req, reply) => {
    const items = Array.isArray(req.body) ? parseBody(telemetryBatch, req.body) : [parseBody(telemetryItem, req.body)];
    try {
      const results = await view.ingest(items.map((i) => ({ stream: i.stream, payload: i.payload as Json })));
      return reply.code(202).send({ ids: results.map((r) => r.id) });
    } catch (err) {
      if (isOutboxError(err)) {
        const status = err.code === 'OUTBOX_CLOSED' || err.code === 'OUTBOX_WRITE_FAILED' ? 503 : err.code === 'OUTBOX_TOO_LARGE' || err.code === 'OUTBOX_INVALID' ? 400 : 507;
        return reply.code(status).send({ error: err.code, message: err.message, ...err.details });
      }
      throw err;
    }
  });
  app.post('/v2/queue/parked/retry', async (req) => ({ requeued: view.retryParked(parseBody(retryParkedBody, req.body)?.ids) }));
  app.post('/v2/queue/parked/purge', async (req) => {
    const body = parseBody(purgeParkedBody, req.body ?? {});
    if ((body.ids === undefined) === (body.all === undefined)) {
      const got = body.ids === undefined ? 'neither' : 'both';
      throw new BadRequest(`body: expected "ids" (the parked messages to delete) or "all": true, one of the two, got ${got}`);
    }
    return { purged: view.purgeParked(body.ids) };
  });
}

/** The device shadow's routes; 404 saying why when the shadow is off. */
function shadowRoutes(app: FastifyInstance, view: ApiView): void {
  const shadow = view.shadow;
  const noShadow = async (_req: FastifyRequest, reply: FastifyReply) =>
    reply.code(404).send({ error: 'not_found', message: 'the device shadow is off here (features.shadow is false)' });
  app.get('/v2/shadow', shadow ? async () => shadow.get() : noShadow);
  app.patch(
    '/v2/shadow',
    shadow
      ? async (req: FastifyRequest, reply: FastifyReply) => {
          try {
            return shadow.patch(req.body);
          } catch (err) {
            if (isShadowError(err)) {
              return reply.code(err.code === 'SHADOW_TOO_LARGE' ? 413 : 400).send({ error: err.code === 'SHADOW_TOO_LARGE' ? 'too_large' : 'bad_request', message: err.message });
            }
            throw err;
          }
        }
      : noShadow,
  );
  app.delete('/v2/shadow/overrides', shadow ? async () => shadow.clearOverrides() : noShadow);
}
