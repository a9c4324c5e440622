import { describe, expect, it } from 'vitest';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** Expiry alone: messages past their TTL go (counted, leases ended), and the check is free until the earliest expiry. */

const freshParts = partsPerTest();

function parts() {
  const p = freshParts();
  const insert = (id: string, expiresAt: number | null) => {
    const seq = Number(p.q.insert.run(id, 'telemetry', 20, 1, expiresAt, null, 0, 1, JSON.stringify(id), null, null, null).lastInsertRowid);
    p.lanes.add('telemetry', 20, 1, 1, seq);
    p.expiry.note(expiresAt);
    return seq;
  };
  return { ...p, insert };
}

describe('expiry', () => {
  it('deletes what is due, counts it, ends its lease, and knows the next expiry', async () => {
    const { expiry, insert, clock, rows, counters, leases, lanes } = parts();
    const t0 = clock.now();
    const seq = insert('a', t0 + 100);
    insert('b', t0 + 300);
    insert('c', null);
    leases.grant('a', { seq, channel: 'telemetry', priority: 20, bytes: 1 });
    expect(expiry.due()).toBe(false);
    await clock.advance(100);
    expect(expiry.due()).toBe(true);
    expect(expiry.expireDue()).toBe(1);
    expect(rows()).toEqual(['telemetry:"b"', 'telemetry:"c"']);
    expect(counters.of('telemetry')?.expired).toBe(1);
    expect(leases.isLeased(seq)).toBe(false);
    expect(lanes.total.count).toBe(2);
    expect(expiry.due()).toBe(false);
    await clock.advance(200);
    expect(expiry.due()).toBe(true);
  });

  it('looks at the database only when due or forced, and loads the earliest expiry at open', async () => {
    const { expiry, insert, clock, q } = parts();
    q.insert.run('raw', 'telemetry', 20, 1, clock.now() + 10, null, 0, 1, '1', null, null, null); // behind its back
    expect(expiry.expireDue()).toBe(0);
    expiry.load();
    await clock.advance(10);
    expect(expiry.expireDue()).toBe(1);
    insert('x', clock.now() + 1_000);
    expiry.force();
    expect(expiry.due()).toBe(true);
    expect(expiry.expireDue()).toBe(0);
    expect(expiry.due()).toBe(false);
  });

  it('expires more than one read at a time, and restores its next expiry from a checkpoint', async () => {
    const { expiry, insert, clock, rows } = parts();
    for (let i = 0; i < 300; i++) insert(`m${i}`, clock.now() + 1);
    const restore = expiry.checkpoint();
    expiry.force();
    restore();
    expect(expiry.due()).toBe(false);
    await clock.advance(1);
    expect(expiry.expireDue()).toBe(300);
    expect(rows()).toEqual([]);
  });
});
