import { describe, expect, it } from 'vitest';
import { recoverOutbox } from '../../src/outbox/recovery.js';
import { durabilityOf, outboxStats } from '../../src/outbox/stats.js';
import { captureLogger } from '../helpers/logger.js';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** Stats from the ledger alone, and the ledger recovered from the database at open. */

const freshParts = partsPerTest();

const totals = { commits: 3, pending: 1, durability: 'power-loss' as const, disk: { freeBytes: null, minFreeBytes: 0, low: false } };

describe('outbox stats', () => {
  it('sum per channel and in total: depth, bytes, age of the oldest, leases, counters, configured channels', async () => {
    const p = freshParts({ channels: { quiet: {} } });
    const t0 = p.clock.now();
    p.lanes.add('telemetry', 20, 10, t0, 1);
    p.lanes.add('events', 50, 5, t0 + 500, 2);
    p.leases.grant('x', { seq: 1, channel: 'telemetry', priority: 20, bytes: 10 });
    p.counters.bump('telemetry', 'delivered', 4);
    p.counters.bump('telemetry', 'overflow', 2);
    p.counters.bump('telemetry', 'count', 1);
    p.counters.bump('events', 'expired', 3);
    p.counters.addParked('events', 2);
    await p.clock.advance(1_000);
    const s = outboxStats({ ...p, now: p.clock.now(), totals });
    expect(Object.keys(s.channels)).toEqual(['events', 'quiet', 'telemetry']);
    expect(s.channels.telemetry).toMatchObject({ depth: 1, bytes: 10, oldestAgeMs: 1_000, leased: 1, delivered: 4, dropped: 3, drops: { count: 3 }, onLimit: { count: 'drop-oldest' } });
    expect(s.channels.events).toMatchObject({ depth: 1, oldestAgeMs: 500, expired: 3, parked: 2, drops: { ttl: 3 }, onLimit: { count: 'refuse' } });
    expect(s.channels.quiet).toMatchObject({ depth: 0, oldestAgeMs: 0 });
    expect(s).toMatchObject({ depth: 2, bytes: 15, oldestAgeMs: 1_000, leased: 1, dropped: 3, expired: 3, parked: 2, commits: 3, pending: 1, durability: 'power-loss' });
  });

  it('name what synchronous means for a resolved enqueue', () => {
    expect([0, 1, 2, 3].map(durabilityOf)).toEqual(['none', 'process-crash', 'power-loss', 'power-loss']);
  });
});

describe('outbox recovery', () => {
  it('rebuilds the ledger, counters, parked counts and next expiry from the database, and says what it holds', async () => {
    const p = freshParts();
    const now = p.clock.now();
    p.q.insert.run('a', 'telemetry', 20, now, now + 10, null, 0, 4, '"aa"', null, null, null);
    p.q.insert.run('b', 'telemetry', 20, now, null, null, 0, 6, '"bbbb"', null, null, null);
    p.q.insert.run('c', 'events', 50, now, null, null, 0, 3, '"c"', null, null, null);
    p.q.counterSet.run('telemetry', 'delivered', 9);
    p.q.parkInsert.run(now, 'bad', 3);
    p.q.deleteSeq.run(3);
    const cap = captureLogger();
    recoverOutbox({ ...p, logger: cap.logger, trustTotals: false });
    expect(p.lanes.total).toEqual({ count: 2, bytes: 10 });
    // Counted from the rows, the totals are persisted whole at the next write.
    expect(p.lanes.unwritten).toBe(true);
    p.tx.run('test', () => undefined);
    expect(p.db.prepare('SELECT channel, priority, count, bytes FROM outbox_lane_totals ORDER BY channel').all()).toEqual([
      { channel: 'telemetry', priority: 20, count: 2, bytes: 10 },
    ]);
    expect(p.counters.of('telemetry')?.delivered).toBe(9);
    expect(p.counters.parkedOf('events')).toBe(1);
    expect(p.expiry.due()).toBe(false);
    await p.clock.advance(10);
    expect(p.expiry.due()).toBe(true);
    await new Promise((r) => setImmediate(r));
    expect(cap.text()).toContain('outbox holds 2 undelivered message(s) from before');
  });

  it('loads the persisted lane totals as they are when told to trust them, without counting the rows', () => {
    const p = freshParts();
    const now = p.clock.now();
    p.q.insert.run('a', 'telemetry', 20, now, null, null, 0, 4, '"aa"', null, null, null);
    // Totals that are not the rows' (one row, 4 bytes): what is loaded is the table's.
    p.q.laneTotalSet.run('telemetry', 20, 7, 70);
    p.q.laneTotalSet.run('events', 50, 2, 5);
    recoverOutbox({ ...p, logger: captureLogger().logger, trustTotals: true });
    expect(p.lanes.total).toEqual({ count: 9, bytes: 75 });
    expect(p.lanes.channel('events')).toEqual({ count: 2, bytes: 5 });
    expect(p.lanes.unwritten).toBe(false);
  });
});
