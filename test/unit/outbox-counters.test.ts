import { addToDigest } from '../../src/outbox/ledger.js';
import { describe, expect, it } from 'vitest';
import { OutboxCounters, dropsOf, zeroCounters } from '../../src/outbox/counters.js';

/** The counters alone: what is written and when, drops noticed once committed, parked counts, rollback. */

function counters() {
  const written: string[] = [];
  const c = new OutboxCounters((channel, counter, value) => void written.push(`${channel}.${counter}=${value}`));
  return { c, written };
}

describe('outbox counters', () => {
  it('load what was persisted, ignoring names they do not know', () => {
    const { c } = counters();
    c.load(
      [
        { channel: 'telemetry', counter: 'delivered', value: 7 },
        { channel: 'telemetry', counter: 'logged.count', value: 3 },
      ],
      [{ channel: 'events', n: 2 }],
    );
    expect(c.of('telemetry')).toEqual({ ...zeroCounters(), delivered: 7 });
    expect(c.parkedOf('events')).toBe(2);
    expect(c.channelNames().sort()).toEqual(['events', 'telemetry']);
  });

  it('write only the counters that changed since the last write, `accepted` and the digest included', () => {
    const { c, written } = counters();
    c.bump('telemetry', 'accepted', 5);
    c.write();
    expect(written).toEqual(['telemetry.accepted=5']);
    written.length = 0;
    c.bump('telemetry', 'delivered');
    c.digest('telemetry', 'id-1');
    c.bump('events', 'expired', 2);
    c.write();
    expect(written.sort()).toEqual(['events.expired=2', 'telemetry.delivered=1', `telemetry.digest=${addToDigest(0, 'id-1')}`]);
    written.length = 0;
    c.write();
    expect(written).toEqual([]);
  });

  it('say once that a drop happened, and forget one that was rolled back', () => {
    const { c } = counters();
    c.bump('telemetry', 'delivered');
    expect(c.takeDrops()).toBe(false);
    for (const reason of ['count', 'bytes', 'disk', 'expired', 'parkedLimit', 'purged', 'corrupt', 'offline'] as const) {
      c.bump('telemetry', reason);
      expect(c.takeDrops()).toBe(true);
      expect(c.takeDrops()).toBe(false);
    }
    c.bump('telemetry', 'count');
    c.discardDrops();
    expect(c.takeDrops()).toBe(false);
    expect(dropsOf(c.of('telemetry')!)).toEqual({ count: 2, bytes: 1, disk: 1, ttl: 1, parkedLimit: 1, purged: 1, corrupt: 1, offline: 1 });
    expect(c.dropTotals()).toEqual([['telemetry', dropsOf(c.of('telemetry')!)]]);
  });

  it('count parked messages per channel and in all', () => {
    const { c } = counters();
    c.addParked('telemetry', 1);
    c.addParked('telemetry', 1);
    c.addParked('events', 1);
    c.addParked('telemetry', -1);
    expect(c.parkedOf('telemetry')).toBe(1);
    expect(c.parkedTotal()).toBe(2);
    c.addParked('other', -1);
    expect(c.parkedOf('other')).toBe(0);
  });

  it('roll back to a checkpoint, dirty channels included', () => {
    const { c, written } = counters();
    c.bump('telemetry', 'delivered');
    c.write();
    const restore = c.checkpoint();
    c.bump('telemetry', 'delivered');
    c.addParked('events', 1);
    restore();
    expect(c.of('telemetry')?.delivered).toBe(1);
    expect(c.parkedOf('events')).toBe(0);
    written.length = 0;
    c.write();
    expect(written).toEqual([]);
  });
});
