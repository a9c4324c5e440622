import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { FreshEpisode } from '../../src/outbox/episode.js';
import type { Outbox } from '../../src/outbox/outbox.js';
import { outboxesPerTest } from '../helpers/outbox-per-test.js';

/**
 * Whatever the interleaving of enqueues, peeks, acks, nacks and returns (a new episode after every
 * lease was put back, as the flusher begins one), every message is acknowledged exactly once, and
 * in each episode a stream's first message from before the return is its newest then (unless a
 * newer one was already delivered); exactly the others from before the return are marked backfill.
 */

const { make, close } = outboxesPerTest();

type Op =
  | { kind: 'enqueue'; stream: number; count: number }
  | { kind: 'peek'; count: number }
  | { kind: 'ack'; pick: number }
  | { kind: 'nack'; pick: number }
  | { kind: 'return' };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('enqueue' as const), stream: fc.integer({ min: 0, max: 3 }), count: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ kind: fc.constant('peek' as const), count: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ kind: fc.constant('ack' as const), pick: fc.integer({ min: 0, max: 15 }) }),
  fc.record({ kind: fc.constant('nack' as const), pick: fc.integer({ min: 0, max: 15 }) }),
  fc.record({ kind: fc.constant('return' as const) }),
);

interface Item {
  id: string;
  stream: string;
  /** Enqueue order: among rows queued at the same time, the seq order too. */
  n: number;
}

/** The model of one episode: what was queued at its start, per stream, and what it sent first. */
class EpisodeModel {
  readonly before = new Set<string>();
  readonly head = new Map<string, string>();
  readonly firstSent = new Map<string, string>();

  constructor(queued: Iterable<Item>, newestAcked: Map<string, number>) {
    const newest = new Map<string, Item>();
    for (const it of queued) {
      this.before.add(it.id);
      if ((newest.get(it.stream)?.n ?? -1) < it.n) newest.set(it.stream, it);
    }
    // No head when the cloud already holds a newer message of the stream.
    for (const [s, it] of newest) if ((newestAcked.get(s) ?? -1) < it.n) this.head.set(s, it.id);
  }
}

async function run(outbox: Outbox, ops: Op[]): Promise<void> {
  const items = new Map<string, Item>();
  const queued = new Map<string, Item>();
  const leased: string[] = [];
  const acked = new Set<string>();
  const newestAcked = new Map<string, number>();
  let n = 0;
  let episode: FreshEpisode = outbox.beginEpisode();
  let model = new EpisodeModel(queued.values(), newestAcked);
  const ack = (ids: string[]): void => {
    expect(outbox.ack(ids)).toBe(ids.length);
    for (const id of ids) {
      expect(acked.has(id)).toBe(false);
      acked.add(id);
      const it = items.get(id) as Item;
      queued.delete(id);
      newestAcked.set(it.stream, Math.max(newestAcked.get(it.stream) ?? -1, it.n));
      leased.splice(leased.indexOf(id), 1);
    }
  };
  const peek = (count: number): number => {
    const batch = outbox.peekBatch({ maxCount: count, episode });
    for (const m of batch) {
      const it = items.get(m.id) as Item;
      expect(leased).not.toContain(m.id);
      expect(queued.has(m.id)).toBe(true);
      leased.push(m.id);
      const before = model.before.has(m.id);
      if (before && !model.firstSent.has(it.stream)) {
        model.firstSent.set(it.stream, m.id);
        if (model.head.has(it.stream)) expect(m.id).toBe(model.head.get(it.stream));
      }
      expect(m.backfill === true).toBe(before && model.head.get(it.stream) !== m.id);
    }
    return batch.length;
  };
  const begin = (): void => {
    outbox.nack(leased.splice(0));
    episode.close();
    episode = outbox.beginEpisode();
    model = new EpisodeModel(queued.values(), newestAcked);
  };
  for (const o of ops) {
    if (o.kind === 'enqueue') {
      const stream = `s${o.stream}`;
      const batch = Array.from({ length: o.count }, () => ({ n: n++, stream }));
      const ids = (await outbox.enqueueMany(batch.map((b) => ({ channel: 'telemetry', stream, payload: b.n })))).map((r) => r.id);
      ids.forEach((id, i) => {
        const it = { id, ...(batch[i] as { n: number; stream: string }) };
        items.set(id, it);
        queued.set(id, it);
      });
    } else if (o.kind === 'peek') peek(o.count);
    else if (o.kind === 'return') begin();
    else {
      const chosen = leased.filter((_, i) => (o.pick >> i % 4) & 1);
      if (o.kind === 'ack') ack(chosen);
      else {
        outbox.nack(chosen);
        for (const id of chosen) leased.splice(leased.indexOf(id), 1);
      }
    }
  }
  begin();
  for (;;) {
    const before = leased.length;
    if (peek(3) === 0) break;
    ack(leased.slice(before));
  }
  expect([...acked].sort()).toEqual([...items.keys()].sort());
  expect(queued.size).toBe(0);
}

describe('freshness-first drain: any interleaving', () => {
  it('acknowledges every message exactly once and sends each stream’s newest before its history', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (ops) => {
        const env = make({ synchronous: 'normal' });
        try {
          await run(env.outbox, ops);
        } finally {
          await close(env);
        }
      }),
      { numRuns: 100 },
    );
  });
});
