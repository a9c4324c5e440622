import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { badRequest, fail, isObject, rejectUnknownKeys, requireId, requireInt } from './validate.js';

/**
 * Fault injection for the device API. `PUT /admin/faults` merges a FaultSpec into the active
 * faults: a key that is present replaces that fault, `null` (or `false`, `0`, `[]`) clears it, a
 * key that is absent leaves it as it is. Everything lives in memory: a restart starts clean.
 */
export interface FaultSpec {
  /** Answer the next `count` matching requests with `status`. */
  fail?: { count: number; status: number; path?: string; method?: string } | null;
  /** Answer with 429/503 and `Retry-After` (seconds or an HTTP date), `count` times or until cleared. */
  throttle?: { status: 429 | 503; retryAfter?: string | number; count?: number; path?: string; method?: string } | null;
  /** Delay every device request by this many milliseconds. */
  latencyMs?: number | null;
  /** Accept matching requests and never answer, `count` times or until cleared. */
  hang?: { count?: number; path?: string; method?: string } | null;
  /** Close the device listener (ECONNREFUSED) until cleared, or for `forMs`. */
  refuse?: boolean | { forMs: number } | null;
  /** Messages with these ids are rejected one by one with 422 and not stored. */
  poisonMessageIds?: string[] | null;
}

export interface FaultStatus {
  active: {
    fail: { status: number; remaining: number; path: string | null } | null;
    throttle: { status: number; retryAfter: string | null; remaining: number | null; path: string | null } | null;
    latencyMs: number;
    hang: { remaining: number | null; path: string | null } | null;
    refuse: { since: number; until: number | null } | null;
    poisonMessageIds: string[];
  };
  /** Requests being held by `hang` right now. */
  hanging: number;
  /** How often each fault fired since start: requests failed, throttled, delayed, hung; refusals begun; messages poisoned. */
  fired: { fail: number; throttle: number; latency: number; hang: number; refuse: number; poison: number };
}

/** The part of the device listener the refuse fault drives. */
export interface Refusable {
  refuse(): Promise<void>;
  restore(): Promise<void>;
}

interface PathFilter {
  path: RegExp | null;
  source: string | null;
  /** Only requests with this method (GET, PATCH...); any when null. */
  method: string | null;
}

interface FailFault extends PathFilter {
  status: number;
  remaining: number;
}

interface ThrottleFault extends PathFilter {
  status: number;
  retryAfter: string | null;
  remaining: number | null;
}

interface HangFault extends PathFilter {
  remaining: number | null;
}

interface RefuseState {
  since: number;
  until: number | null;
  timer: NodeJS.Timeout | null;
}

/** A validated spec: `undefined` leaves a fault alone, `null` clears it. */
interface ParsedSpec {
  fail?: FailFault | null;
  throttle?: ThrottleFault | null;
  latencyMs?: number;
  hang?: HangFault | null;
  refuse?: { forMs: number | null } | null;
  poisonMessageIds?: string[];
}

const SPEC_KEYS = ['fail', 'throttle', 'latencyMs', 'hang', 'refuse', 'poisonMessageIds'] as const;
const MAX_COUNT = 1_000_000_000;
const MAX_MS = 24 * 3600 * 1000;

export class FaultInjector {
  private failFault: FailFault | null = null;
  private throttleFault: ThrottleFault | null = null;
  private latencyMs = 0;
  private hangFault: HangFault | null = null;
  private refused: RefuseState | null = null;
  private poison = new Set<string>();
  private readonly fired = { fail: 0, throttle: 0, latency: 0, hang: 0, refuse: 0, poison: 0 };
  private readonly hung = new Set<Socket>();
  /** Pending latency timers and how to release their request (false: drop it, we are closing). */
  private readonly delays = new Map<NodeJS.Timeout, (proceed: boolean) => void>();
  private disposed = false;

  constructor(
    private readonly listener: Refusable,
    private readonly now: () => number,
    private readonly logger?: Logger,
  ) {}

  /** Validates the whole spec first, so a bad field changes nothing; then merges it in. */
  async set(input: unknown): Promise<FaultStatus> {
    const spec = parseFaultSpec(input);
    if (spec.fail !== undefined) this.failFault = spec.fail;
    if (spec.throttle !== undefined) this.throttleFault = spec.throttle;
    if (spec.latencyMs !== undefined) this.latencyMs = spec.latencyMs;
    if (spec.hang !== undefined) {
      this.hangFault = spec.hang;
      if (spec.hang === null) this.releaseHung();
    }
    if (spec.poisonMessageIds !== undefined) this.poison = new Set(spec.poisonMessageIds);
    if (spec.refuse !== undefined) {
      if (spec.refuse === null) await this.endRefusal();
      else await this.beginRefusal(spec.refuse.forMs);
    }
    this.logger?.info({ faults: this.status().active }, 'devcloud faults changed');
    return this.status();
  }

  async clear(): Promise<FaultStatus> {
    this.failFault = null;
    this.throttleFault = null;
    this.latencyMs = 0;
    this.hangFault = null;
    this.poison = new Set();
    this.releaseHung();
    await this.endRefusal();
    this.logger?.info('devcloud faults cleared');
    return this.status();
  }

  status(): FaultStatus {
    const f = this.failFault;
    const t = this.throttleFault;
    const h = this.hangFault;
    return {
      active: {
        fail: f && { status: f.status, remaining: f.remaining, path: f.source },
        throttle: t && { status: t.status, retryAfter: t.retryAfter, remaining: t.remaining, path: t.source },
        latencyMs: this.latencyMs,
        hang: h && { remaining: h.remaining, path: h.source },
        refuse: this.refused && { since: this.refused.since, until: this.refused.until },
        poisonMessageIds: [...this.poison],
      },
      hanging: this.hung.size,
      fired: { ...this.fired },
    };
  }

  /** Whether a message id is poisoned; counts it as fired when it is. */
  poisoned(id: string): boolean {
    if (!this.poison.has(id)) return false;
    this.fired.poison++;
    return true;
  }

  /** The fastify `onRequest` hook of the device API: runs before auth, so faults hit every request. */
  readonly onRequest = (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void => {
    if (this.latencyMs <= 0) {
      this.decide(request, reply, done);
      return;
    }
    this.fired.latency++;
    void this.delay(this.latencyMs).then((proceed) => {
      if (proceed) this.decide(request, reply, done);
    });
  };

  /** Stops timers and drops held requests; the listener is closed by its owner. */
  async dispose(): Promise<void> {
    this.disposed = true;
    for (const [timer, release] of this.delays) {
      clearTimeout(timer);
      release(false);
    }
    this.delays.clear();
    this.releaseHung();
    if (this.refused?.timer) clearTimeout(this.refused.timer);
    this.refused = null;
  }

  private decide(request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    const hang = this.hangFault;
    if (hang && matches(hang, request)) {
      if (hang.remaining !== null && --hang.remaining <= 0) this.hangFault = null;
      this.fired.hang++;
      this.hold(request.raw.socket);
      return; // never call done(): the request waits until the client, clear() or close() ends it
    }
    const f = this.failFault;
    if (f && matches(f, request)) {
      if (--f.remaining <= 0) this.failFault = null;
      this.fired.fail++;
      void reply.code(f.status).send(faultBody(f.status, `injected fault: fail (${f.remaining} more)`));
      return;
    }
    const t = this.throttleFault;
    if (t && matches(t, request)) {
      if (t.remaining !== null && --t.remaining <= 0) this.throttleFault = null;
      this.fired.throttle++;
      if (t.retryAfter !== null) void reply.header('retry-after', t.retryAfter);
      void reply.code(t.status).send(faultBody(t.status, 'injected fault: throttle'));
      return;
    }
    done();
  }

  private hold(socket: Socket): void {
    this.hung.add(socket);
    socket.once('close', () => this.hung.delete(socket));
  }

  private releaseHung(): void {
    for (const socket of this.hung) socket.destroy();
    this.hung.clear();
  }

  private delay(ms: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.delays.delete(timer);
        resolve(true);
      }, ms);
      this.delays.set(timer, resolve);
    });
  }

  private async beginRefusal(forMs: number | null): Promise<void> {
    if (this.disposed) return;
    if (this.refused?.timer) clearTimeout(this.refused.timer);
    const since = this.refused?.since ?? this.now();
    const timer =
      forMs === null
        ? null
        : setTimeout(() => {
            this.endRefusal().catch((err: unknown) => this.logger?.error({ err }, 'devcloud could not listen again after refuse'));
          }, forMs);
    const wasRefused = this.refused !== null;
    this.refused = { since, until: forMs === null ? null : this.now() + forMs, timer };
    if (!wasRefused) this.fired.refuse++;
    await this.listener.refuse();
  }

  private async endRefusal(): Promise<void> {
    if (!this.refused) return;
    if (this.refused.timer) clearTimeout(this.refused.timer);
    this.refused = null;
    if (!this.disposed) await this.listener.restore();
  }
}

function matches(filter: PathFilter, request: FastifyRequest): boolean {
  return (filter.method === null || filter.method === request.method) && (filter.path === null || filter.path.test(request.url));
}

function faultBody(status: number, message: string): { error: string; message: string; statusCode: number } {
  return { error: STATUS_CODES[status] ?? 'Error', message, statusCode: status };
}

function parseFilter(spec: Record<string, unknown>, field: string): PathFilter {
  const m = spec.method;
  let method: string | null = null;
  if (m !== undefined && m !== null) {
    if (typeof m !== 'string' || !/^[A-Za-z]+$/.test(m)) fail(`${field}.method`, 'an HTTP method such as "GET"', m);
    method = m.toUpperCase();
  }
  return { ...parsePath(spec.path, `${field}.path`), method };
}

function parsePath(value: unknown, field: string): Omit<PathFilter, 'method'> {
  if (value === undefined || value === null) return { path: null, source: null };
  if (typeof value !== 'string' || value === '') fail(field, 'a regular expression as a non-empty string', value);
  try {
    return { path: new RegExp(value), source: value };
  } catch (err) {
    throw badRequest(`${field}: ${JSON.stringify(value)} is not a valid regular expression (${(err as Error).message})`);
  }
}

function parseRetryAfter(value: unknown, field: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return String(value);
  if (typeof value === 'string' && (/^\d+$/.test(value) || (/[A-Za-z]/.test(value) && !Number.isNaN(Date.parse(value))))) {
    return value;
  }
  return fail(field, 'a number of seconds or an HTTP date (e.g. "120" or "Wed, 21 Oct 2026 07:28:00 GMT")', value);
}

/** Turns an untrusted FaultSpec into the internal form; throws a 400 naming the field. */
export function parseFaultSpec(input: unknown): ParsedSpec {
  if (!isObject(input)) fail('faults', 'a JSON object', input);
  rejectUnknownKeys(input, '', SPEC_KEYS);
  const spec: ParsedSpec = {};

  const f = input.fail;
  if (f === null || f === false) spec.fail = null;
  else if (f !== undefined) {
    if (!isObject(f)) fail('fail', 'an object { count, status, path? } or null', f);
    rejectUnknownKeys(f, 'fail', ['count', 'status', 'path', 'method']);
    spec.fail = {
      remaining: requireInt(f.count, 'fail.count', 1, MAX_COUNT),
      status: requireInt(f.status, 'fail.status', 400, 599),
      ...parseFilter(f, 'fail'),
    };
  }

  const t = input.throttle;
  if (t === null || t === false) spec.throttle = null;
  else if (t !== undefined) {
    if (!isObject(t)) fail('throttle', 'an object { status, retryAfter?, count?, path? } or null', t);
    rejectUnknownKeys(t, 'throttle', ['status', 'retryAfter', 'count', 'path', 'method']);
    if (t.status !== 429 && t.status !== 503) fail('throttle.status', '429 or 503', t.status);
    spec.throttle = {
      status: t.status,
      retryAfter: parseRetryAfter(t.retryAfter, 'throttle.retryAfter'),
      remaining: t.count === undefined || t.count === null ? null : requireInt(t.count, 'throttle.count', 1, MAX_COUNT),
      ...parseFilter(t, 'throttle'),
    };
  }

  if (input.latencyMs === null) spec.latencyMs = 0;
  else if (input.latencyMs !== undefined) spec.latencyMs = requireInt(input.latencyMs, 'latencyMs', 0, MAX_MS);

  const h = input.hang;
  if (h === null || h === false) spec.hang = null;
  else if (h !== undefined) {
    const obj = h === true ? {} : h;
    if (!isObject(obj)) fail('hang', 'an object { count?, path? }, true, or null', h);
    rejectUnknownKeys(obj, 'hang', ['count', 'path', 'method']);
    spec.hang = {
      remaining: obj.count === undefined || obj.count === null ? null : requireInt(obj.count, 'hang.count', 1, MAX_COUNT),
      ...parseFilter(obj, 'hang'),
    };
  }

  const r = input.refuse;
  if (r === null || r === false) spec.refuse = null;
  else if (r === true) spec.refuse = { forMs: null };
  else if (r !== undefined) {
    if (!isObject(r)) fail('refuse', 'true, { forMs }, false or null', r);
    rejectUnknownKeys(r, 'refuse', ['forMs']);
    spec.refuse = { forMs: requireInt(r.forMs, 'refuse.forMs', 1, MAX_MS) };
  }

  const p = input.poisonMessageIds;
  if (p === null) spec.poisonMessageIds = [];
  else if (p !== undefined) {
    if (!Array.isArray(p)) fail('poisonMessageIds', 'an array of message ids', p);
    spec.poisonMessageIds = p.map((id, i) => requireId(id, `poisonMessageIds[${i}]`));
  }
  return spec;
}
