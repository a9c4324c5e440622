import { describe, expect, it } from 'vitest';
import { OutboxError } from '../../src/outbox/types.js';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** The transactor alone: rows, ledger and counters commit together or not at all; errors become OutboxErrors. */

const freshParts = partsPerTest();

function parts() {
  const p = freshParts();
  const insert = (id: string) => {
    const seq = p.q.insert.run(id, 'telemetry', 20, 1, null, null, 0, 1, '1', null, null, null).lastInsertRowid;
    p.lanes.add('telemetry', 20, 1, 1, seq);
  };
  return { ...p, insert };
}

describe('transactor', () => {
  it('commits rows and the counters changed with them, and tells of drops once committed', () => {
    const { tx, insert, counters, q, drops } = parts();
    expect(tx.run('writing', () => {
      insert('a');
      counters.bump('telemetry', 'count');
      return 7;
    })).toBe(7);
    expect(q.loadCounters.all()).toEqual([{ channel: 'telemetry', counter: 'count', value: 1 }]);
    expect(drops).toEqual([1]);
    tx.run('writing', () => insert('b'));
    expect(drops).toEqual([1]);
  });

  it('on a failure rolls back the rows and restores the ledger, counters and expiry, and names what it was doing', () => {
    const { tx, insert, counters, lanes, expiry, rows, drops } = parts();
    tx.run('writing', () => insert('a'));
    let err: unknown;
    try {
      tx.run('writing 2 message(s)', () => {
        insert('b');
        counters.bump('telemetry', 'count');
        expiry.note(5);
        throw new Error('insert blocked');
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OutboxError);
    expect(err).toMatchObject({ code: 'OUTBOX_WRITE_FAILED', message: 'writing 2 message(s) failed: insert blocked', cause: expect.objectContaining({ message: 'insert blocked' }) });
    expect(rows()).toEqual(['telemetry:1']);
    expect(lanes.total.count).toBe(1);
    expect(counters.of('telemetry')?.count ?? 0).toBe(0);
    expect(expiry.due()).toBe(false);
    expect(drops).toEqual([]);
    expect(counters.takeDrops()).toBe(false);
  });

  it('passes an OutboxError through as it is, and turns a full disk into OUTBOX_DISK_FULL', () => {
    const { tx } = parts();
    const own = new OutboxError('OUTBOX_FULL', 'full');
    expect(() => tx.run('x', () => { throw own; })).toThrow(own);
    const full = Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    expect(() => tx.run('writing', () => { throw full; })).toThrow(expect.objectContaining({ code: 'OUTBOX_DISK_FULL' }));
  });

  it('on a full disk folds the WAL back and tries once more, only when that freed something; other failures are not retried', () => {
    const { tx, insert, rows, disk } = parts();
    const full = () => Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    // The WAL holds pages: a full disk may be only a full WAL, which a checkpoint gives back.
    tx.run('writing', () => insert('a'));
    let calls = 0;
    tx.run('writing', () => {
      if (++calls === 1) throw full();
      insert('b');
    });
    expect(calls).toBe(2);
    expect(rows()).toEqual(['telemetry:1', 'telemetry:1']);
    // Nothing left to fold back: the failure stands, after one try.
    disk.reclaimWal();
    calls = 0;
    expect(() => tx.run('writing', () => {
      calls++;
      throw full();
    })).toThrow(expect.objectContaining({ code: 'OUTBOX_DISK_FULL' }));
    expect(calls).toBe(1);
    // Any other failure: no second try either.
    tx.run('writing', () => insert('c'));
    calls = 0;
    expect(() => tx.run('writing', () => {
      calls++;
      throw new Error('insert blocked');
    })).toThrow(expect.objectContaining({ code: 'OUTBOX_WRITE_FAILED' }));
    expect(calls).toBe(1);
  });

  it('runs `atomic` as a savepoint inside a transaction: an inner failure undoes the inner part only', () => {
    const { tx, insert, rows } = parts();
    tx.run('writing', () => {
      insert('a');
      try {
        tx.atomic(() => {
          insert('b');
          throw new Error('undo b');
        });
      } catch {
        // expected
      }
    });
    expect(rows()).toEqual(['telemetry:1']);
  });
});
