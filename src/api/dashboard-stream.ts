import { hash, randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Clock } from '../util/clock.js';
import { DepthRing, diffFacts, factsOf, queueDepths, sameFacts, takeSnapshot, type DashboardEvent, type DashboardView, type Facts } from './dashboard-snapshot.js';
import { json, Streamed, type Router } from './http-router.js';

/**
 * The dashboard's live feed (docs/api.md, "The dashboard"): `POST /v2/dashboard/token` (with the
 * bearer key) gives a short-lived, single-use stream token; `GET /v2/dashboard/stream?token=…`
 * (EventSource cannot send headers) then pushes a snapshot as server-sent events every
 * `intervalMs` and as soon as something shown changes. One loop computes the snapshot for every
 * client; a client that does not take its events is dropped, never buffered for.
 */

export const TOKEN_ROUTE = '/v2/dashboard/token';
export const STREAM_ROUTE = '/v2/dashboard/stream';

export interface StreamBounds {
  /** A snapshot at least this often while a client is connected. */
  intervalMs: number;
  /** How often the views are read for a change while a client is connected. */
  checkMs: number;
  /** One depth sample (and event check) this often, clients or not; `samples` of them are kept (an hour). */
  sampleEveryMs: number;
  samples: number;
  /** A client with this many bytes not yet taken by its socket is dropped. */
  maxBufferedBytes: number;
  /** A stream token opens one stream within this long. */
  tokenTtlMs: number;
  /** Outstanding tokens; the oldest goes first. */
  maxTokens: number;
  /** Recent events kept. */
  events: number;
}

export const STREAM_BOUNDS: StreamBounds = {
  intervalMs: 2_000,
  checkMs: 500,
  sampleEveryMs: 10_000,
  samples: 360,
  maxBufferedBytes: 262_144,
  tokenTtlMs: 30_000,
  maxTokens: 32,
  events: 30,
};

const digest = (s: string): string => hash('sha256', s, 'hex');

/** Stream tokens: random, kept only as digests, each taken once before it expires (monotonic time). */
export class StreamTokens {
  private readonly live = new Map<string, number>();

  constructor(
    private readonly clock: Pick<Clock, 'monotonic'>,
    private readonly bounds: Pick<StreamBounds, 'tokenTtlMs' | 'maxTokens'>,
  ) {}

  get ttlMs(): number {
    return this.bounds.tokenTtlMs;
  }

  issue(): string {
    const token = randomBytes(24).toString('base64url');
    this.live.set(digest(token), this.clock.monotonic() + this.bounds.tokenTtlMs);
    while (this.live.size > this.bounds.maxTokens) this.live.delete(this.live.keys().next().value as string);
    return token;
  }

  /** True once for a token issued less than `tokenTtlMs` ago. */
  take(token: string | null): boolean {
    if (!token) return false;
    const key = digest(token);
    const until = this.live.get(key);
    this.live.delete(key);
    return until !== undefined && this.clock.monotonic() < until;
  }
}

type HubClock = Pick<Clock, 'now' | 'monotonic' | 'sleep'>;

/** The loop behind every stream client: samples, events, snapshots. */
export class DashboardHub {
  private readonly clients = new Set<ServerResponse>();
  private readonly ring: DepthRing;
  private readonly recent: DashboardEvent[] = [];
  private readonly stop = new AbortController();
  private facts: Facts | undefined;
  private sentFacts: Facts | undefined;
  private lastSent = -Infinity;
  private lastSample = -Infinity;
  private wake: (() => void) | undefined;

  constructor(
    private readonly view: DashboardView,
    private readonly clock: HubClock,
    private readonly bounds: StreamBounds,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {
    this.ring = new DepthRing(bounds.samples);
  }

  /** Clients connected now. */
  get size(): number {
    return this.clients.size;
  }

  /** Runs until `close`. */
  start(): void {
    void this.run();
  }

  close(): void {
    this.stop.abort();
    for (const res of this.clients) res.destroy();
    this.clients.clear();
  }

  /** Takes the response: the headers, a snapshot at once, then the feed until the client goes. */
  subscribe(res: ServerResponse): void {
    // Read before the headers go: a view that throws is the router's 500, not a stream cut short.
    const first = this.snapshotJson();
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    this.clients.add(res);
    res.once('close', () => this.clients.delete(res));
    this.send(res, first);
    this.wake?.();
  }

  private async run(): Promise<void> {
    const { signal } = this.stop;
    while (!signal.aborted) {
      try {
        this.tick();
      } catch (err) {
        // A view that throws once (a database busy, say) skips this tick; the next one reads again.
        this.onError(err);
      }
      try {
        await this.sleep(this.clients.size > 0 ? this.bounds.checkMs : this.bounds.sampleEveryMs, signal);
      } catch {
        return; // closed
      }
    }
  }

  /** A sleep that a first client cuts short (the loop then checks every `checkMs`). */
  private async sleep(ms: number, signal: AbortSignal): Promise<void> {
    const cut = new AbortController();
    const both = AbortSignal.any([signal, cut.signal]);
    this.wake = () => cut.abort();
    try {
      await this.clock.sleep(ms, both);
    } catch (err) {
      if (signal.aborted) throw err;
    } finally {
      this.wake = undefined;
    }
  }

  private tick(): void {
    const mono = this.clock.monotonic();
    const sampleDue = mono - this.lastSample >= this.bounds.sampleEveryMs;
    if (!sampleDue && this.clients.size === 0) return;
    const snap = this.snapshot(this.clients.size > 0);
    const facts = factsOf(snap);
    this.record(diffFacts(this.facts, facts, snap.at));
    this.facts = facts;
    if (sampleDue) {
      this.lastSample = mono;
      this.ring.add({ t: snap.at, depths: queueDepths(snap.queue) });
    }
    if (this.clients.size === 0) return;
    if (sameFacts(this.sentFacts, facts) && mono - this.lastSent < this.bounds.intervalMs) return;
    const data = JSON.stringify({ ...snap, depth: this.depth(), events: this.recent.slice().reverse() });
    for (const res of [...this.clients]) this.send(res, data);
  }

  private record(events: DashboardEvent[]): void {
    this.recent.push(...events);
    if (this.recent.length > this.bounds.events) this.recent.splice(0, this.recent.length - this.bounds.events);
  }

  private depth() {
    return { everyMs: this.bounds.sampleEveryMs, samples: this.ring.samples() };
  }

  private snapshot(withLogs = true) {
    return takeSnapshot(this.view, this.clock.now(), this.depth(), this.recent.slice().reverse(), withLogs);
  }

  private snapshotJson(): string {
    return JSON.stringify(this.snapshot());
  }

  /** One event; a client whose socket still holds more than `maxBufferedBytes` is dropped instead. */
  private send(res: ServerResponse, data: string): void {
    if (res.destroyed) return void this.clients.delete(res);
    if (res.writableLength > this.bounds.maxBufferedBytes) {
      this.clients.delete(res);
      res.destroy();
      return;
    }
    this.sentFacts = this.facts;
    this.lastSent = this.clock.monotonic();
    res.write(`data: ${data}\n\n`);
  }
}

/** The token and stream routes; `authorized` checks a bearer header (the stream takes one too, for curl). */
export function dashboardRoutes(r: Router, hub: DashboardHub, tokens: StreamTokens, authorized: (header: string | undefined) => boolean): void {
  r.post(TOKEN_ROUTE, () => ({ token: tokens.issue(), expiresInMs: tokens.ttlMs }));
  r.get(STREAM_ROUTE, (req) => {
    const url = req.raw.url ?? '';
    const token = new URLSearchParams(url.includes('?') ? url.slice(url.indexOf('?') + 1) : '').get('token');
    if (!authorized(req.headers.authorization) && !tokens.take(token)) {
      return json(401, { error: 'unauthorized', message: `this route needs ?token=<a stream token from POST ${TOKEN_ROUTE}> (single use, ${tokens.ttlMs / 1000} s) or Authorization: Bearer <local API key>` }, { 'www-authenticate': 'Bearer realm="iotistic-agent"' });
    }
    return new Streamed((res, raw) => {
      if (raw.method === 'HEAD') {
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
        res.end();
        return;
      }
      hub.subscribe(res);
    });
  });
}
