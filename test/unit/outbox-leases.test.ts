import { describe, expect, it } from 'vitest';
import { Leases } from '../../src/outbox/leases.js';
import { FakeClock } from '../helpers/fake-clock.js';

/** Leases alone: granted, looked up by id and seq, released (requeued or not), lapsing on time. */

function leases(leaseMs = 1_000) {
  const clock = new FakeClock();
  const requeued: string[] = [];
  const l = new Leases({ requeued: (channel, priority, seq) => void requeued.push(`${channel}/${priority}@${seq}`) }, clock, leaseMs);
  return { l, clock, requeued };
}

const ref = (seq: number, channel = 'telemetry') => ({ seq, channel, priority: 20, bytes: 10 });

describe('leases', () => {
  it('are found by id and by seq until released; a released one says so once', () => {
    const { l } = leases();
    l.grant('a', ref(1));
    l.grant('b', ref(2, 'events'));
    expect(l.get('a')).toMatchObject({ seq: 1, channel: 'telemetry', until: 1_000 });
    expect(l.isLeased(2)).toBe(true);
    expect([...l.countByChannel()]).toEqual([
      ['telemetry', 1],
      ['events', 1],
    ]);
    expect(l.release('a')).toBe(true);
    expect(l.release('a')).toBe(false);
    expect(l.isLeased(1)).toBe(false);
    expect(l.get('a')).toBeUndefined();
  });

  it('tell the lane of a row that goes back to the queue, and only then', () => {
    const { l, requeued } = leases();
    l.grant('a', ref(1));
    l.grant('b', ref(2));
    l.release('a'); // acked: gone
    l.release('b', true); // nacked: back in its lane
    expect(requeued).toEqual(['telemetry/20@2']);
  });

  it('lapse after leaseMs of monotonic time, each at its own time', async () => {
    const { l, clock, requeued } = leases(1_000);
    l.grant('a', ref(1));
    await clock.advance(500);
    l.grant('b', ref(2));
    expect(l.untilFromNow()).toBe(1_500);
    await clock.advance(499);
    l.releaseExpired();
    expect(l.isLeased(1)).toBe(true);
    await clock.advance(1);
    l.releaseExpired();
    expect(l.isLeased(1)).toBe(false);
    expect(l.isLeased(2)).toBe(true);
    await clock.advance(500);
    l.releaseExpired();
    expect(l.isLeased(2)).toBe(false);
    expect(requeued).toEqual(['telemetry/20@1', 'telemetry/20@2']);
  });

  it('take an explicit lapse time (one for a whole batch)', () => {
    const { l } = leases();
    l.grant('a', ref(1), 42);
    expect(l.get('a')?.until).toBe(42);
  });
});
