import { describe, expect, it } from 'vitest';
import { LANE_TOTALS_MISMATCH_SQL } from '../../src/outbox/migration.js';
import type { Outbox } from '../../src/outbox/outbox.js';
import { outboxesPerTest } from '../helpers/outbox-per-test.js';

/**
 * A coalesced message in flight when a newer one with its key arrives keeps its place; if its
 * delivery then fails it is stale: deleted (counted as coalesced), not sent again after the newer one.
 */

const { make: open } = outboxesPerTest();
const make = () => open({ overrides: { limits: { maxCount: 1_000, maxBytes: 1 << 24 } } });

const report = (n: number) => ({ channel: 'health', payload: { n }, coalesceKey: 'latest' });
const queued = (o: Outbox) => o.peekBatch({ maxCount: 100, lease: false }).map((m) => m.payload);

describe('outbox: superseded while in flight', () => {
  it('a failed delivery of a message replaced meanwhile deletes it (coalesced); the newer one stays', async () => {
    const { store, outbox } = make();
    await outbox.enqueue(report(1));
    const [inFlight] = outbox.peekBatch({ maxCount: 10 });
    await outbox.enqueue(report(2));
    // Both are there while the first is in flight: it may already be at the cloud.
    expect(outbox.stats().channels['health']?.depth).toBe(2);
    expect(outbox.nack([inFlight!.id])).toBe(1);
    expect(queued(outbox)).toEqual([{ n: 2 }]);
    expect(outbox.stats().channels['health']).toMatchObject({ depth: 1, coalesced: 1 });
    expect(store.db.prepare(LANE_TOTALS_MISMATCH_SQL).get()).toBeUndefined();
  });

  it('one after another: every stale one goes, the latest stays', async () => {
    const { outbox } = make();
    await outbox.enqueue(report(1));
    const [a] = outbox.peekBatch({ maxCount: 10 });
    await outbox.enqueue(report(2));
    const [b] = outbox.peekBatch({ maxCount: 10 });
    await outbox.enqueue(report(3));
    outbox.nack([a!.id, b!.id]);
    expect(queued(outbox)).toEqual([{ n: 3 }]);
    expect(outbox.stats().channels['health']?.coalesced).toBe(2);
  });

  it('a delivered one is delivered: only a failed delivery drops it', async () => {
    const { outbox } = make();
    await outbox.enqueue(report(1));
    const [a] = outbox.peekBatch({ maxCount: 10 });
    await outbox.enqueue(report(2));
    expect(outbox.ack([a!.id])).toBe(1);
    expect(queued(outbox)).toEqual([{ n: 2 }]);
    expect(outbox.stats().channels['health']).toMatchObject({ delivered: 1, coalesced: 0 });
  });

  it('when no newer message holds the key (it was delivered first), the failed one goes back to the queue', async () => {
    const { outbox } = make();
    await outbox.enqueue(report(1));
    const [a] = outbox.peekBatch({ maxCount: 10 });
    await outbox.enqueue(report(2));
    const [b] = outbox.peekBatch({ maxCount: 10 });
    outbox.ack([b!.id]);
    outbox.nack([a!.id]);
    expect(queued(outbox)).toEqual([{ n: 1 }]);
  });
});
