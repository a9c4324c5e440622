import { describe, expect, it } from 'vitest';
import { Parking } from '../../src/outbox/parking.js';
import { captureLogger } from '../helpers/logger.js';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** The parked table alone: park, list, retry at the end of the queue, purge, and the cap. */

const freshParts = partsPerTest();

function parking(maxParked = 10, logger = captureLogger().logger) {
  const p = freshParts({ logger });
  const k = new Parking({ ...p, maxParked });
  const insert = (id: string, channel = 'telemetry', expiresAt: number | null = null) => {
    const seq = Number(p.q.insert.run(id, channel, 20, 1, expiresAt, null, 0, 1, JSON.stringify(id), null, null, null).lastInsertRowid);
    p.lanes.add(channel, 20, 1, 1, seq);
    return seq;
  };
  return { ...p, k, insert };
}

describe('parking', () => {
  it('moves messages to the parked table with their reason, counted, leases ended', () => {
    const { k, insert, rows, counters, leases, clock } = parking();
    const seq = insert('a');
    insert('b');
    leases.grant('a', { seq, channel: 'telemetry', priority: 20, bytes: 1 });
    expect(k.park(['a', 'nope'], 'HTTP 422')).toBe(1);
    expect(k.park([], 'x')).toBe(0);
    expect(rows()).toEqual(['telemetry:"b"']);
    expect(leases.get('a')).toBeUndefined();
    expect(counters.parkedOf('telemetry')).toBe(1);
    expect(counters.of('telemetry')?.parked).toBe(1);
    expect(k.list()).toEqual([expect.objectContaining({ id: 'a', payload: 'a', reason: 'HTTP 422', parkedAt: clock.now() })]);
    expect(k.list({ channel: 'events' })).toEqual([]);
  });

  it('lists a parked message whose payload cannot be decoded with the error instead of failing', () => {
    const { k, q, lanes } = parking();
    const seq = Number(q.insert.run('bad', 'telemetry', 20, 1, null, null, 1, 3, Buffer.from('zzz'), null, null, null).lastInsertRowid);
    lanes.add('telemetry', 20, 3, 1, seq);
    k.park(['bad'], 'undecodable payload');
    expect(k.list()[0]).toMatchObject({ id: 'bad', payload: null, payloadError: expect.stringContaining('cannot be decoded') });
  });

  it('puts parked messages back at the end of the queue, except an id queued again meanwhile, keeping their expiry', async () => {
    const { k, insert, rows, counters, expiry, clock } = parking();
    insert('a', 'telemetry', clock.now() + 50);
    insert('b');
    k.park(['a', 'b'], 'bad');
    insert('c');
    insert('b');
    expect(k.retry()).toBe(1);
    expect(rows()).toEqual(['telemetry:"c"', 'telemetry:"b"', 'telemetry:"a"']);
    expect(counters.parkedOf('telemetry')).toBe(0);
    expect(expiry.due()).toBe(false);
    await clock.advance(50);
    expect(expiry.due()).toBe(true);
  });

  it('purges parked messages, all or the ids named, counted as purged drops', () => {
    const { k, insert, counters } = parking();
    for (const id of ['a', 'b', 'c']) insert(id);
    k.park(['a', 'b', 'c'], 'bad');
    expect(k.purge(['b', 'nope'])).toBe(1);
    expect(k.list().map((m) => m.id)).toEqual(['a', 'c']);
    expect(k.purge()).toBe(2);
    expect(counters.parkedTotal()).toBe(0);
    expect(counters.of('telemetry')?.parked).toBe(3);
    expect(counters.of('telemetry')?.purged).toBe(3);
  });

  it("says in the log what an operator's retry and purge did: asked for, and done", () => {
    const cap = captureLogger();
    const { k, insert } = parking(10, cap.logger);
    for (const id of ['a', 'b', 'c']) insert(id);
    k.park(['a', 'b', 'c'], 'bad');
    k.retry(['a', 'nope']);
    k.purge();
    const lines = cap.records().filter((r) => /^(requeued|purged) /.test(String(r.msg)));
    expect(lines).toEqual([
      expect.objectContaining({ asked: 2, requeued: 1, msg: 'requeued 1 parked outbox message(s)' }),
      expect.objectContaining({ asked: 2, purged: 2, msg: 'purged 2 parked outbox message(s): counted as dropped (purged)' }),
    ]);
  });

  it('keeps at most maxParked: the oldest parked give way, counted as parkedLimit drops', () => {
    const { k, insert, counters } = parking(2);
    for (const id of ['a', 'b', 'c']) insert(id);
    k.park(['a'], 'bad');
    k.park(['b', 'c'], 'bad');
    expect(k.list().map((m) => m.id)).toEqual(['b', 'c']);
    expect(counters.of('telemetry')?.parkedLimit).toBe(1);
    expect(counters.parkedTotal()).toBe(2);
  });
});
