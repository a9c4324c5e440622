import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Flusher, type Sink, type SinkResult } from '../../src/outbox/flusher.js';
import { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { seededRandom } from '../../src/util/random.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

/** Stands in for the cloud (named fake): takes what `decide` says, and records every batch. */
class FakePeer implements Sink {
  readonly name = 'http';
  readonly monitorChannel = 'api';
  batches: string[][] = [];
  inflight = 0;
  maxSeen = 0;
  gate: Promise<void> | undefined;
  constructor(private readonly decide: (batch: OutboxMessage[]) => SinkResult | Error) {}
  async send(batch: OutboxMessage[]): Promise<SinkResult> {
    this.batches.push(batch.map((m) => m.id));
    this.inflight++;
    this.maxSeen = Math.max(this.maxSeen, this.inflight);
    try {
      if (this.gate) await this.gate;
      const r = this.decide(batch);
      if (r instanceof Error) throw r;
      return r;
    } finally {
      this.inflight--;
    }
  }
  isPermanent(err: unknown): boolean {
    return err instanceof CloudError && err.status === 400;
  }
}

const acceptAll = (batch: OutboxMessage[]): SinkResult => ({ accepted: batch.map((m) => m.id), rejected: [] });

async function setup(peer: FakePeer, opts: { maxInflight?: number; maxCount?: number; rate?: number } = {}) {
  const clock = new FakeClock();
  const random = seededRandom(11);
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 100_000, maxBytes: 64 * 1_048_576 } });
  const marks: string[] = [];
  const flusher = new Flusher({
    outbox,
    sink: peer,
    monitor: { markSuccess: () => marks.push('ok'), markFailure: () => marks.push('fail') },
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock, random }), sleeper: new Wakeup({ clock, random }), clock }),
    clock,
    logger: silentLogger(),
    batch: { maxCount: opts.maxCount ?? 10, maxBytes: 1_048_576 },
    maxInflight: opts.maxInflight ?? 2,
    ...(opts.rate ? { rate: { messagesPerSecond: opts.rate } } : {}),
  });
  const stop = new AbortController();
  const done = flusher.run(stop.signal);
  cleanup(async () => {
    stop.abort();
    await done;
    await outbox.close();
    store.close();
  });
  const enqueue = async (count: number, channel = 'telemetry', priority?: number): Promise<string[]> => {
    const r = await outbox.enqueueMany(Array.from({ length: count }, (_, i) => ({ channel, payload: { i }, ...(priority !== undefined ? { priority } : {}) })));
    flusher.kick();
    return r.map((x) => x.id);
  };
  return { clock, outbox, flusher, marks, enqueue };
}

describe('flusher', () => {
  it('delivers everything, highest priority first, and deletes only what the peer acknowledged', async () => {
    let refuseOnce = true;
    const peer = new FakePeer((batch) => {
      if (refuseOnce) {
        refuseOnce = false;
        // The peer answers for only half of the first batch: the rest stays queued.
        return { accepted: batch.slice(0, 5).map((m) => m.id), rejected: [] };
      }
      return acceptAll(batch);
    });
    const t = await setup(peer, { maxInflight: 1 });
    // Both in one transaction, metrics first, so only priority can put events ahead.
    const all = await t.outbox.enqueueMany([
      ...Array.from({ length: 10 }, (_, i) => ({ channel: 'metrics', payload: { i } })),
      ...Array.from({ length: 10 }, (_, i) => ({ channel: 'events', payload: { i } })),
    ]);
    t.flusher.kick();
    const low = all.slice(0, 10).map((r) => r.id);
    const high = all.slice(10).map((r) => r.id);
    await t.clock.advance(100);
    await t.clock.advance(31_000);
    expect(t.outbox.stats().depth).toBe(0);
    expect(t.outbox.stats().delivered).toBe(20);
    // Events (priority 50) went before metrics (10).
    expect(peer.batches[0]?.every((id) => high.includes(id))).toBe(true);
    const sent = new Set(peer.batches.flat());
    for (const id of [...low, ...high]) expect(sent.has(id)).toBe(true);
  });

  it('finds a poison message by halving the batch, parks it alone, and delivers the rest', async () => {
    let poison = '';
    const peer = new FakePeer((batch) => (batch.some((m) => m.id === poison) ? new CloudError('http', 'answered 400', 400) : acceptAll(batch)));
    const t = await setup(peer, { maxCount: 16, maxInflight: 1 });
    const ids = await t.enqueue(16);
    poison = ids[11] as string;
    await t.clock.advance(100);
    await t.clock.advance(1_000);
    expect(t.outbox.stats().depth).toBe(0);
    expect(t.outbox.stats().delivered).toBe(15);
    expect(t.outbox.parked().map((p) => p.id)).toEqual([poison]);
    // 1 + 2 per halving level (log2 16 = 4): not one request per message.
    expect(peer.batches.length).toBeLessThanOrEqual(9);
  });

  it('backs off after a transient failure, then delivers, never losing a message', async () => {
    let up = false;
    const peer = new FakePeer((batch) => (up ? acceptAll(batch) : new CloudError('network', 'connection refused (ECONNREFUSED)')));
    const t = await setup(peer);
    await t.enqueue(30);
    await t.clock.advance(100);
    const attempts = peer.batches.length;
    expect(attempts).toBeGreaterThan(0);
    await t.clock.advance(500);
    // Within the first backoff step (1 s) nothing more is tried.
    expect(peer.batches.length).toBe(attempts);
    expect(t.marks).toContain('fail');
    up = true;
    await t.clock.advance(30_000);
    expect(t.outbox.stats().depth).toBe(0);
    expect(t.outbox.stats().delivered).toBe(30);
  });

  it('keeps at most maxInflight batches unanswered', async () => {
    const peer = new FakePeer(acceptAll);
    let open!: () => void;
    peer.gate = new Promise<void>((r) => (open = r));
    const t = await setup(peer, { maxInflight: 3, maxCount: 5 });
    await t.enqueue(50);
    await t.clock.advance(100);
    expect(peer.inflight).toBe(3);
    peer.gate = undefined;
    open();
    await t.clock.advance(1_000);
    expect(peer.maxSeen).toBe(3);
    expect(t.outbox.stats().delivered).toBe(50);
  });

  it('keeps to the messages-per-second limit', async () => {
    const peer = new FakePeer(acceptAll);
    const t = await setup(peer, { maxCount: 10, rate: 20, maxInflight: 1 });
    await t.enqueue(200);
    await t.clock.advance(5_000);
    // 20/s with a burst of one batch: about 110 in 5 s, far from all 200.
    const delivered = t.outbox.stats().delivered;
    expect(delivered).toBeGreaterThanOrEqual(90);
    expect(delivered).toBeLessThanOrEqual(120);
    await t.clock.advance(10_000);
    expect(t.outbox.stats().delivered).toBe(200);
  });
});
