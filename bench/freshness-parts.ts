import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { CloudHttpClient } from '../src/cloud/http-client.js';
import { HttpSink } from '../src/cloud/http-sink.js';
import { defaultConfig } from '../src/config/schema.js';
import { MIGRATIONS } from '../src/database-schema.js';
import { Flusher } from '../src/outbox/flusher.js';
import { Outbox } from '../src/outbox/outbox.js';
import { flusherSettings, outboxSettings } from '../src/outbox/policy.js';
import { backoffFromSettings } from '../src/resilience/backoff.js';
import { ConnectionMonitor } from '../src/resilience/connection-monitor.js';
import { RetryPolicy } from '../src/resilience/retry-policy.js';
import { Wakeup } from '../src/resilience/wakeup.js';
import { Store } from '../src/store/store.js';
import { systemClock } from '../src/util/clock.js';
import { IdGenerator } from '../src/util/ids.js';
import { createLogger } from '../src/util/logger.js';
import { systemRandom } from '../src/util/random.js';

/**
 * The parts of `bench:drain` (freshness.ts): the backlog it queues, a receiver that stands for the
 * cloud, and the agent's outbox + flusher + HTTP sink wired with every default.
 */

export const silent = createLogger({ level: 'silent', format: 'json', destination: new PassThrough() });

/** Item `i` belongs to stream `i % streams`; its payload is what telemetry ingest queues. */
export function item(i: number, streams: number): { channel: string; stream: string; payload: { stream: string; payload: { n: number } } } {
  const stream = `s${i % streams}`;
  return { channel: 'telemetry', stream, payload: { stream, payload: { n: i } } };
}

export function openStore(path: string, synchronous: 'full' | 'normal'): Store {
  return Store.open({ path, logger: silent, clock: systemClock, migrations: MIGRATIONS, synchronous, checkpoint: defaultConfig().store.checkpoint });
}

/** The agent's outbox settings, with room for the backlog and telemetry's `freshFirst` as asked. */
export function benchOutbox(store: Store, freshFirst: boolean, onCommit?: () => void): Outbox {
  const settings = outboxSettings(defaultConfig().settings.offline);
  return new Outbox({
    store,
    clock: systemClock,
    ids: new IdGenerator(),
    logger: silent,
    ...settings,
    limits: { maxCount: 100_000_000, maxBytes: 2 ** 45 },
    channels: { ...settings.channels, telemetry: { ...settings.channels.telemetry, freshFirst } },
    ...(onCommit ? { onCommit } : {}),
  });
}

/** What the receiver saw of one drain: ms from the return until it held each stream's newest, and everything. */
export interface Arrivals {
  freshMs: number;
  allMs: number;
  backfill: number;
  duplicates: number;
}

/**
 * Stands for the cloud: `POST …/messages` refused with 503 while `down`, then every id accepted.
 * It notes the first arrival of each item (a bitmap, not a set of 1,000,000 ids) and the moment
 * it holds the newest item of every stream and then all of them.
 */
export class Receiver {
  private server: Server | undefined;
  private down = true;
  private t0 = 0;
  private seen = new Uint8Array(0);
  private newest: number[] = [];
  private freshLeft = 0;
  private left = 0;
  private out: Arrivals = { freshMs: NaN, allMs: NaN, backfill: 0, duplicates: 0 };
  private resolve: (a: Arrivals) => void = () => undefined;

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method !== 'POST') return void res.writeHead(304).end();
        if (this.down) return void res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"away"}');
        const raw = Buffer.concat(chunks);
        const text = (req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8');
        const { messages } = JSON.parse(text) as { messages: { id: string; payload: { payload: { n: number } }; backfill?: boolean }[] };
        for (const m of messages) this.arrived(m.payload.payload.n, m.backfill === true);
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ accepted: messages.map((m) => m.id) }));
      });
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Away again, expecting `items` over `streams`; resolves once all arrived after `comeBack`. */
  expect(items: number, streams: number): Promise<Arrivals> {
    this.down = true;
    this.seen = new Uint8Array(items);
    this.newest = Array.from({ length: streams }, (_, s) => s + streams * Math.floor((items - 1 - s) / streams));
    this.freshLeft = streams;
    this.left = items;
    this.out = { freshMs: NaN, allMs: NaN, backfill: 0, duplicates: 0 };
    return new Promise((resolve) => (this.resolve = resolve));
  }

  comeBack(): void {
    this.t0 = performance.now();
    this.down = false;
  }

  private arrived(n: number, backfill: boolean): void {
    if (backfill) this.out.backfill++;
    if (this.seen[n]) {
      this.out.duplicates++;
      return;
    }
    this.seen[n] = 1;
    const stream = n % this.newest.length;
    if (this.newest[stream] === n && --this.freshLeft === 0) this.out.freshMs = performance.now() - this.t0;
    if (--this.left === 0) {
      this.out.allMs = performance.now() - this.t0;
      this.resolve(this.out);
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server?.closeAllConnections();
      this.server?.close(() => resolve());
    });
  }
}

/** The agent's flusher over the HTTP sink, every default (batches of 500, 2 in flight, gzip) but the backoff. */
export function benchFlusher(outbox: Outbox, url: string): { flusher: Flusher; http: CloudHttpClient } {
  const config = defaultConfig();
  const offline = config.settings.offline;
  const http = new CloudHttpClient({ baseUrl: url, apiKey: 'bench-device-key', timeoutMs: config.cloud.requestTimeoutMs, clock: systemClock });
  const flusher = new Flusher({
    outbox,
    sink: new HttpSink(http, 'bench-device'),
    monitor: new ConnectionMonitor({ clock: systemClock, offlineAfterFailures: offline.offlineAfterFailures, channels: ['api'] }),
    retry: new RetryPolicy({
      // Retries every 50 ms while the cloud is away, so the return is seen within 50 ms in either mode (the
      // agent's default backoff would add up to seconds of waiting that has nothing to do with the order).
      backoff: backoffFromSettings({ ...offline, minBackoffSeconds: 0.05, maxBackoffSeconds: 0.05 }, { clock: systemClock, random: systemRandom }),
      sleeper: new Wakeup({ clock: systemClock, random: systemRandom }),
      clock: systemClock,
    }),
    clock: systemClock,
    logger: silent,
    ...flusherSettings(offline),
  });
  return { flusher, http };
}
