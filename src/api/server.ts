import { z } from 'zod';
import { formatIssue, fromZodIssues } from '../config/issues.js';
import type { HeldListener } from '../util/held-listener.js';
import type { Logger } from '../util/logger.js';
import type { LoopStatus } from '../util/loops.js';
import { bearerMatcher } from './auth.js';
import { dashboardHtml } from './dashboard.js';
import { DashboardHub, dashboardRoutes, STREAM_BOUNDS, STREAM_ROUTE, StreamTokens, type StreamBounds } from './dashboard-stream.js';
import { HttpError, json, Router, text, type ApiRoute, type RouteGate } from './http-router.js';
import { serveHttp, type HttpApp, type HttpTimeouts } from './http-server.js';
import { FOLLOW_BOUNDS, logRoutes, type FollowBounds, type LogsView } from './logs-route.js';
import { secretRoutes, type SecretsView } from './secret-routes.js';
import { actionRoutes, type ActionsView } from './action-routes.js';
import { imageRoutes, type ImagesView } from './image-routes.js';
import type { TargetValidation } from '../workloads/target-schema.js';
import { isOutboxError } from '../outbox/types.js';
import { ShadowError } from '../shadow/shadow.js';
import { LIMIT_DEFAULTS, type AgentConfig } from '../config/schema.js';
import type { Json } from '../util/json-diff.js';
import type { Clock } from '../util/clock.js';

function isShadowError(err: unknown): err is ShadowError {
  return err instanceof ShadowError;
}

/** What the local API shows and controls; `assembly/api.ts` builds it from the agent's parts. */
export interface ApiView {
  version: string;
  uuid: string;
  /** False in local mode (no cloud.apiUrl). */
  hasCloud: boolean;
  /** The agent's clock: the dashboard stream's schedule and timestamps. */
  clock: Pick<Clock, 'now' | 'monotonic' | 'sleep'>;
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
  /** The local MQTT broker: enabled or why not, its clients, what it accepted, refused, keeps and dropped. */
  localBroker(): unknown;
  /** The local shadow; undefined when `features.shadow` is off. `patch` throws a ShadowError for bad input. */
  shadow?: { get(): unknown; patch(body: unknown): unknown; clearOverrides(): unknown } | undefined;
  /** Device logs (GET /v2/logs): the local tail, the committed lines as they come, the counts per service. */
  logs(): LogsView;
  /** The device's secrets: names and sources out, values only in. */
  secrets: SecretsView;
  /** Device actions and the plan preview (docs/api.md, "Actions"). */
  actions?: ActionsView | undefined;
  /** Image import and the target's images (the agent always has them; undefined: the routes answer 404). */
  images?: ImagesView | undefined;
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
  /** How long a connection may take (idle, headers, whole request); tests shorten them. */
  timeouts?: Partial<HttpTimeouts>;
  /** Shares the event loop with delivery (the LoopShare): `POST /v2/telemetry` bodies wait while it pauses. */
  ingestGate?: RouteGate;
  /** A log follower's keep-alive and buffer bounds (GET /v2/logs?follow=1); tests shorten them. */
  follow?: Partial<FollowBounds>;
  /** The dashboard stream's schedule and bounds (GET /v2/dashboard/stream); tests shorten them. */
  stream?: Partial<StreamBounds>;
}

const LOCAL_TARGET_ROUTE = '/v2/local/target-state';

const OPEN_ROUTES = new Set(['/ping', '/v1/healthy', '/']);
// A refused body is read (and thrown away) up to this much and this long before the 413 goes out.
const REFUSED_BODY_DRAIN = { maxBytes: 64 * 1_048_576, maxMs: 10_000 };

/** A request the API refuses: 400 `bad_request` with the message. */
export class BadRequest extends HttpError {
  constructor(message: string) {
    super(400, 'bad_request', message);
  }
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
  // The body came from JSON.parse, so any value present is JSON: only its presence is checked
  // (z.json() walked every payload again, a sixth of a one-item POST's CPU).
  payload: z.custom<Json>((v) => v !== undefined, 'a JSON value (null is allowed)'),
});
/** One item or up to 1000 at once (parsed apart, so errors name the item: a union would not). */
const telemetryBatch = z.array(telemetryItem).min(1).max(1000);

export type { ApiRoute } from './http-router.js';

type Limits = Required<NonNullable<ApiOptions['limits']>>;

export async function startApi(opts: ApiOptions): Promise<{ app: HttpApp; url: string; routes: readonly ApiRoute[] }> {
  const { view } = opts;
  const limits = { ...LIMIT_DEFAULTS, ...opts.limits };
  const authorized = bearerMatcher(opts.key);
  const router = new Router({
    logger: opts.logger,
    bodyLimit: { bytes: limits.maxApiBodyBytes, setting: 'limits.maxApiBodyBytes' },
    maxJsonDepth: limits.maxJsonDepth,
    drain: REFUSED_BODY_DRAIN,
    // The stream authenticates itself: a single-use stream token in the query (EventSource sends no headers) or the bearer key.
    guard: (req, path) => (OPEN_ROUTES.has(path) || path === STREAM_ROUTE || authorized(req.headers.authorization) ? undefined : UNAUTHORIZED),
  });
  statusRoutes(router, view, opts.dashboard);
  controlRoutes(router, view, limits, opts.ingestGate);
  shadowRoutes(router, view);
  secretRoutes(router, view.secrets);
  if (view.actions) actionRoutes(router, view.actions, { bytes: limits.maxTargetBytes, setting: 'limits.maxTargetBytes' });
  imageRoutes(router, view.images, REFUSED_BODY_DRAIN);
  logRoutes(router, () => view.logs(), { ...FOLLOW_BOUNDS, ...opts.follow });
  const hub = opts.dashboard ? dashboardStream(router, opts, authorized) : undefined;
  const served = await serveHttp(router.listener, { host: opts.host, port: opts.port, listener: opts.listener, timeouts: opts.timeouts, untimed: router.untimed }).catch((err: unknown) => {
    hub?.close();
    throw err;
  });
  const app: HttpApp = hub ? { close: () => (hub.close(), served.app.close()) } : served.app;
  // The route table, so that a test can check every route for auth (a new route cannot slip in open).
  return { app, url: served.url, routes: router.routes };
}

function dashboardStream(router: Router, opts: ApiOptions, authorized: (h: string | undefined) => boolean): DashboardHub {
  const { view, logger } = opts;
  const bounds: StreamBounds = { ...STREAM_BOUNDS, ...opts.stream };
  const hub = new DashboardHub(view, view.clock, bounds, (err) => logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'dashboard stream: reading the views failed'));
  dashboardRoutes(router, hub, new StreamTokens(view.clock, bounds), authorized);
  hub.start();
  return hub;
}

const UNAUTHORIZED = json(
  401,
  { error: 'unauthorized', message: 'this route needs Authorization: Bearer <local API key> (see `iotistic-agent status --show-key`)' },
  { 'www-authenticate': 'Bearer realm="iotistic-agent"' },
);

/** What the agent shows: liveness, health, the views, metrics and the dashboard page. */
function statusRoutes(r: Router, view: ApiView, dashboard: boolean | undefined): void {
  r.get('/ping', () => text(200, 'text/plain', 'OK'));

  // Healthy means the agent's own loops are alive. It never looks at the cloud: a supervisor that
  // restarts agents whose cloud is down would restart a whole offline fleet in a storm.
  r.get('/v1/healthy', () => {
    const healthy = view.healthy();
    const down = view.loops().filter((l) => l.state !== 'running');
    return json(healthy ? 200 : 503, { healthy, down: down.map((l) => ({ loop: l.name, state: l.state, lastError: l.lastError })) });
  });

  r.get('/v2/connection', () => view.connection());
  r.get('/v2/state', () => view.state());
  r.get('/v2/config', () => view.config());
  r.get('/v2/loops', () => view.loops());
  r.get('/v2/device', () => ({ uuid: view.uuid, version: view.version }));

  r.get('/v2/queue', () => view.queue());
  r.get('/v2/jobs', () => view.jobs());
  r.get('/v2/local-broker', () => view.localBroker());
  r.get('/metrics', async () => {
    const body = await view.metrics.metrics();
    return text(200, view.metrics.contentType, body);
  });

  if (dashboard) {
    // The page holds no data: it asks the API for it with the key the user supplies (URL fragment).
    r.get('/', () =>
      text(200, 'text/html; charset=utf-8', dashboardHtml(view.version), {
        'content-security-policy': "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
      }),
    );
  }
}

/** What local apps and operators change: a poll now, the local target, telemetry, parked messages. */
function controlRoutes(r: Router, view: ApiView, limits: Limits, ingestGate: RouteGate | undefined): void {
  r.post('/v1/update', (req) => {
    parseBody(updateBody, req.body);
    if (!view.pollNow()) {
      return json(409, { error: 'no_cloud', message: 'cloud.apiUrl is not set: the agent runs in local mode and has nothing to poll' });
    }
    return json(202, { polling: true });
  });

  r.post(
    LOCAL_TARGET_ROUTE,
    (req) => {
      const v = view.setLocalTarget(req.body);
      if (!v.ok) return json(400, { error: 'bad_request', message: v.message, issues: v.issues });
      return { version: v.target.version, mode: 'local' };
    },
    { bodyLimit: { bytes: limits.maxTargetBytes, setting: 'limits.maxTargetBytes' } },
  );
  r.delete(LOCAL_TARGET_ROUTE, () => {
    if (!view.clearLocalTarget()) return json(409, { error: 'not_local', message: 'the agent is not in local mode' });
    return { mode: 'cloud' };
  });

  // Local apps hand data to the agent; 202 only once it is durable on disk (a power cut after the
  // answer loses nothing). A full queue or disk answers 507, a closed one 503, with the reason.
  r.post(
    '/v2/telemetry',
    async (req) => {
      const items = Array.isArray(req.body) ? parseBody(telemetryBatch, req.body) : [parseBody(telemetryItem, req.body)];
      try {
        const results = await view.ingest(items.map((i) => ({ stream: i.stream, payload: i.payload as Json })));
        return json(202, { ids: results.map((x) => x.id) });
      } catch (err) {
        if (isOutboxError(err)) {
          const status = err.code === 'OUTBOX_CLOSED' || err.code === 'OUTBOX_OFFLINE' || err.code === 'OUTBOX_WRITE_FAILED' ? 503 : err.code === 'OUTBOX_TOO_LARGE' || err.code === 'OUTBOX_INVALID' ? 400 : 507;
          return json(status, { error: err.code, message: err.message, ...err.details });
        }
        throw err;
      }
    },
    ingestGate ? { gate: ingestGate } : {},
  );
  r.post('/v2/queue/parked/retry', (req) => ({ requeued: view.retryParked(parseBody(retryParkedBody, req.body)?.ids) }));
  r.post('/v2/queue/parked/purge', (req) => {
    const body = parseBody(purgeParkedBody, req.body ?? {});
    if ((body.ids === undefined) === (body.all === undefined)) {
      const got = body.ids === undefined ? 'neither' : 'both';
      throw new BadRequest(`body: expected "ids" (the parked messages to delete) or "all": true, one of the two, got ${got}`);
    }
    return { purged: view.purgeParked(body.ids) };
  });
}

/** The device shadow's routes; 404 saying why when the shadow is off. */
function shadowRoutes(r: Router, view: ApiView): void {
  const shadow = view.shadow;
  const noShadow = () => json(404, { error: 'not_found', message: 'the device shadow is off here (features.shadow is false)' });
  r.get('/v2/shadow', shadow ? () => shadow.get() : noShadow);
  r.patch(
    '/v2/shadow',
    shadow
      ? (req) => {
          try {
            return shadow.patch(req.body);
          } catch (err) {
            if (isShadowError(err)) {
              const tooLarge = err.code === 'SHADOW_TOO_LARGE';
              return json(tooLarge ? 413 : 400, { error: tooLarge ? 'too_large' : 'bad_request', message: err.message });
            }
            throw err;
          }
        }
      : noShadow,
  );
  r.delete('/v2/shadow/overrides', shadow ? () => shadow.clearOverrides() : noShadow);
}
