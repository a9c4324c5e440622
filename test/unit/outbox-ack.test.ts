import { describe, expect, it } from 'vitest';
import { Acks } from '../../src/outbox/ack.js';
import { captureLogger } from '../helpers/logger.js';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** Acknowledgement alone: leased rows deleted in one statement, others one by one, counted as delivered. */

const freshParts = partsPerTest();

function acks(syncLevel = 1) {
  const cap = captureLogger();
  const p = freshParts({ logger: cap.logger });
  const a = new Acks({ ...p, syncLevel });
  const insert = (id: string, lease = true) => {
    const seq = Number(p.q.insert.run(id, 'telemetry', 20, 1, null, null, 0, 1, '1', null, null, null).lastInsertRowid);
    p.lanes.add('telemetry', 20, 1, 1, seq);
    if (lease) p.leases.grant(id, { seq, channel: 'telemetry', priority: 20, bytes: 1 });
    return seq;
  };
  return { ...p, a, insert, cap };
}

describe('acks', () => {
  it('delete leased and unleased messages named, count them delivered, end their leases, ignore unknown ids', () => {
    const { a, insert, rows, counters, leases, lanes } = acks();
    insert('a');
    insert('b', false);
    insert('c');
    expect(a.ack(['a', 'b', 'nope'])).toBe(2);
    expect(a.ack([])).toBe(0);
    expect(rows()).toEqual(['telemetry:1']);
    expect(counters.of('telemetry')?.delivered).toBe(2);
    expect(leases.get('a')).toBeUndefined();
    expect(lanes.total.count).toBe(1);
  });

  it('take every message the slow way when a leased row is missing, and say so', async () => {
    const { a, insert, q, counters, cap } = acks();
    insert('a');
    insert('b');
    q.deleteIds.run(JSON.stringify(['a'])); // gone behind the lease's back
    expect(a.ack(['a', 'b'])).toBe(1);
    expect(counters.of('telemetry')?.delivered).toBe(1);
    await new Promise((r) => setImmediate(r));
    expect(cap.text()).toContain('a leased message was missing at its ack');
  });

  it('commit without their own fsync under synchronous=FULL, and put FULL back after', () => {
    const { a, insert, db } = acks(2);
    db.pragma('synchronous = FULL');
    insert('a');
    expect(a.ack(['a'])).toBe(1);
    expect(db.pragma('synchronous', { simple: true })).toBe(2);
  });
});
