import type { ServerResponse } from 'node:http';
import type { LogEvents, ServiceLogStats } from '../logs/collector.js';
import type { LogStore } from '../logs/log-store.js';
import { AGENT_SERVICE, type LogLine } from '../logs/types.js';
import type { Clock } from '../util/clock.js';
import { HttpError, Streamed, type Router } from './http-router.js';

/**
 * `GET /v2/logs` (docs/api.md, "Logs"): the last lines of the workloads and of the agent from the
 * local tail, and with `follow=1` every line committed after them, streamed as NDJSON until the
 * client goes away. `GET /v2/logs/services`: per service its counts and last lines (the dashboard).
 */

/** What the log routes read, at each request (assembly/api.ts builds it from the LogCollector). */
export interface LogsView {
  tail: Pick<LogStore, 'read' | 'services'>;
  events: Pick<LogEvents, 'on'>;
  serviceStats(): Record<string, ServiceLogStats>;
  clock: Pick<Clock, 'now' | 'sleep'>;
}

export const LOGS_LIMIT = { default: 1000, max: 10_000 } as const;

/** A follower's bounds: an empty line this often (proxies and clients see the stream alive), and how much may wait in its socket's buffer. */
export interface FollowBounds {
  keepAliveMs: number;
  /** Past this many bytes not yet taken by the reader, new lines are skipped and counted (a marker says how many once it catches up). */
  maxBufferedBytes: number;
}

export const FOLLOW_BOUNDS: FollowBounds = { keepAliveMs: 15_000, maxBufferedBytes: 1_048_576 };

export interface LogsQuery {
  service?: string;
  /** Epoch ms. */
  since?: number;
  limit: number;
  follow: boolean;
}

/** What a follower is sent in place of the lines it could not take: not a stored line (no `seq`). */
export interface ReaderMarker {
  service: string;
  ts: number;
  stream: 'marker';
  line: string;
  dropped: number;
  reason: 'reader';
}

const PARAMS = ['service', 'since', 'limit', 'follow'];
const DURATION_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SINCE_EXPECTED = 'epoch milliseconds, an ISO time (2026-01-02T03:04:05Z) or a duration ago (30s, 10m, 2h, 1d)';

function badRequest(message: string): HttpError {
  return new HttpError(400, 'bad_request', message);
}

/** The query of `GET /v2/logs`, checked: a 400 names the parameter, the value and what was expected. */
export function parseLogsQuery(search: URLSearchParams, known: () => readonly string[], now: number): LogsQuery {
  for (const name of new Set(search.keys())) {
    if (!PARAMS.includes(name)) throw badRequest(`unknown parameter "${name}": expected ${PARAMS.join(', ')}`);
    if (search.getAll(name).length > 1) throw badRequest(`${name}: given ${search.getAll(name).length} times, expected once`);
  }
  const q: LogsQuery = { limit: parseLimit(search.get('limit')), follow: parseFollow(search.get('follow')) };
  const service = search.get('service');
  if (service !== null && service !== '') q.service = resolveService(service, known());
  const since = search.get('since');
  if (since !== null) q.since = parseSince(since, now);
  return q;
}

function parseLimit(v: string | null): number {
  if (v === null) return LOGS_LIMIT.default;
  const n = /^\d{1,6}$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= LOGS_LIMIT.max)) throw badRequest(`limit: expected an integer from 1 to ${LOGS_LIMIT.max}, got ${JSON.stringify(v)}`);
  return n;
}

function parseFollow(v: string | null): boolean {
  if (v === null || v === '0' || v === 'false') return false;
  if (v === '1' || v === 'true' || v === '') return true;
  throw badRequest(`follow: expected 1 or true (0 or false: no), got ${JSON.stringify(v)}`);
}

/** `since` as epoch ms: epoch ms, an ISO time, or a duration before `now`. */
export function parseSince(v: string, now: number): number {
  if (/^\d{1,15}$/.test(v)) return Number(v);
  const d = /^(\d{1,9})([smhd])$/.exec(v);
  if (d) return now - Number(d[1]) * (DURATION_MS[d[2] as string] as number);
  const t = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(v) ? Date.parse(v) : NaN;
  if (Number.isNaN(t)) throw badRequest(`since: expected ${SINCE_EXPECTED}, got ${JSON.stringify(v)}`);
  return t;
}

/**
 * The service a `service` parameter names: `agent`, an `<app>/<service>` as given (it may have no
 * lines yet: a follower waits for them), or a bare service name that one app's service has.
 */
export function resolveService(name: string, known: readonly string[]): string {
  if (name === AGENT_SERVICE) return name;
  if (name.includes('/')) {
    if (!/^[^/\s]{1,63}\/[^/\s]{1,63}$/.test(name)) throw badRequest(`service: expected <app>/<service>, a service name or "agent", got ${JSON.stringify(name)}`);
    return name;
  }
  const matches = known.filter((s) => s.slice(s.indexOf('/') + 1) === name && s.includes('/'));
  if (matches.length === 1) return matches[0] as string;
  if (matches.length === 0) {
    const list = known.length > 0 ? known.join(', ') : 'none yet';
    throw badRequest(`service: no service named ${JSON.stringify(name)} has logs here (services with logs: ${list}); expected <app>/<service>, a service name or "agent"`);
  }
  throw badRequest(`service: ${JSON.stringify(name)} is a service of ${matches.length} apps (${matches.join(', ')}): name one as <app>/<service>`);
}

/** Every service with lines in the tail or counted this run. */
function knownServices(logs: LogsView): string[] {
  return [...new Set([...logs.tail.services(), ...Object.keys(logs.serviceStats())])].sort();
}

/** `GET /v2/logs/services`: per service what was stored and dropped since the start, what waits, and its last lines. */
export function logServices(logs: LogsView, last = 10): unknown {
  const stats = logs.serviceStats();
  return {
    services: knownServices(logs).map((service) => {
      const s = stats[service];
      return { service, lines: s?.lines ?? 0, dropped: s?.dropped ?? {}, backlogBytes: s?.backlogBytes ?? 0, last: logs.tail.read({ service, limit: last }) };
    }),
  };
}

export function logRoutes(r: Router, view: () => LogsView, bounds: FollowBounds = FOLLOW_BOUNDS): void {
  r.get('/v2/logs', (req) => {
    const logs = view();
    const url = req.raw.url ?? '';
    const q = parseLogsQuery(new URLSearchParams(url.includes('?') ? url.slice(url.indexOf('?') + 1) : ''), () => knownServices(logs), logs.clock.now());
    if (!q.follow) return { lines: logs.tail.read(tailQuery(q)) };
    return new Streamed((res, raw) => {
      if (raw.method === 'HEAD') {
        res.writeHead(200, { 'content-type': NDJSON });
        res.end();
        return;
      }
      new Follower(res, logs, q, bounds).start();
    });
  });
  r.get('/v2/logs/services', () => logServices(view()));
}

const NDJSON = 'application/x-ndjson; charset=utf-8';

function tailQuery(q: LogsQuery): Parameters<LogsView['tail']['read']>[0] {
  return { limit: q.limit, ...(q.service !== undefined ? { service: q.service } : {}), ...(q.since !== undefined ? { since: q.since } : {}) };
}

/**
 * One `follow=1` client: the tail, then each committed chunk of its service(s) as it comes. Lines
 * the reader does not take pile up in its socket's buffer only up to `maxBufferedBytes`; past it
 * they are skipped and counted, and a marker line says how many once the buffer has drained.
 */
class Follower {
  /** Per service, the last sequence number sent (a chunk committed while the tail was read comes again as an event). */
  private readonly sent = new Map<string, number>();
  private skipped = 0;
  private readonly stop = new AbortController();
  private readonly cap: number;
  private off: (() => void) | undefined;

  constructor(
    private readonly res: ServerResponse,
    private readonly logs: LogsView,
    private readonly q: LogsQuery,
    private readonly bounds: FollowBounds,
  ) {
    // At least the socket's high-water mark: past it a write returns false, so 'drain' is sure to come.
    this.cap = Math.max(bounds.maxBufferedBytes, res.writableHighWaterMark);
  }

  start(): void {
    const { res } = this;
    res.writeHead(200, { 'content-type': NDJSON, 'cache-control': 'no-store' });
    // Listening before the tail is read: no line is missed between the two (and none is sent twice: `sent`).
    this.off = this.logs.events.on('lines', (lines) => this.onLines(lines));
    res.once('close', () => this.end());
    res.on('drain', () => this.caughtUp());
    const tail = this.logs.tail.read(tailQuery(this.q));
    for (const l of tail) this.sent.set(l.service, l.seq);
    res.write(tail.map(ndjson).join(''));
    void this.keepAlive();
  }

  private onLines(lines: readonly LogLine[]): void {
    const service = lines[0]?.service;
    if (service === undefined || (this.q.service !== undefined && service !== this.q.service)) return;
    const after = this.sent.get(service) ?? -1;
    const fresh = lines.filter((l) => l.seq > after);
    const last = fresh[fresh.length - 1];
    if (!last) return;
    this.sent.set(service, last.seq);
    if (this.skipped > 0 || this.res.writableLength >= this.cap) {
      this.skipped += fresh.length;
      return;
    }
    this.res.write(fresh.map(ndjson).join(''));
  }

  /** The buffer drained: a marker for what was skipped. */
  private caughtUp(): void {
    if (this.skipped === 0) return;
    const n = this.skipped;
    this.skipped = 0;
    const marker: ReaderMarker = { service: this.q.service ?? '*', ts: this.logs.clock.now(), stream: 'marker', line: `${n} lines not shown (the reader was too slow)`, dropped: n, reason: 'reader' };
    this.res.write(ndjson(marker));
  }

  private async keepAlive(): Promise<void> {
    const { signal } = this.stop;
    while (!signal.aborted) {
      try {
        await this.logs.clock.sleep(this.bounds.keepAliveMs, signal);
      } catch {
        return; // stopped
      }
      if (this.res.writableLength < this.cap) this.res.write('\n');
    }
  }

  private end(): void {
    this.off?.();
    this.off = undefined;
    this.stop.abort();
  }
}

function ndjson(v: unknown): string {
  return `${JSON.stringify(v)}\n`;
}
