import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { prepareOutboxStatements, type LaneRow } from '../../src/outbox/outbox-sql.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/** The outbox's statements alone, on a migrated database: what each reads and writes. */

const dirs = tempDirs();
const stores: Store[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  dirs.cleanup();
});

function open() {
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock: new FakeClock() });
  stores.push(store);
  const q = prepareOutboxStatements(store.db);
  const insert = (id: string, channel: string, priority: number, bytes = 10, expiresAt: number | null = null): number =>
    Number(q.insert.run(id, channel, priority, 1_000, expiresAt, null, 0, bytes, JSON.stringify(id), null, null, null).lastInsertRowid);
  return { store, q, insert };
}

describe('outbox statements', () => {
  it('read a lane in seq order after a given seq, raw for peeks, and total lanes from the index', () => {
    const { q, insert } = open();
    const a = insert('a', 'telemetry', 20, 5);
    insert('x', 'events', 50, 7);
    const b = insert('b', 'telemetry', 20, 6);
    expect(q.laneKeys.all('telemetry', 20, 0, 10)).toEqual([
      { seq: a, bytes: 5 },
      { seq: b, bytes: 6 },
    ]);
    expect(q.laneKeys.all('telemetry', 20, a, 10)).toEqual([{ seq: b, bytes: 6 }]);
    const raw = q.peekRows.all('telemetry', 20, 0, Number.MAX_SAFE_INTEGER, 1) as LaneRow[];
    expect(q.peekRows.all('telemetry', 20, 0, a, 10)).toHaveLength(1); // bounded above (a freshness-first drain's history)
    expect(raw).toEqual([[a, 'a', 1_000, null, null, 0, 5, '"a"', null, null]]);
    expect(q.loadLanes.all()).toEqual(
      expect.arrayContaining([
        { channel: 'telemetry', priority: 20, n: 2, b: 11 },
        { channel: 'events', priority: 50, n: 1, b: 7 },
      ]),
    );
    expect(q.laneOldest.get('telemetry', 20)).toEqual({ at: 1_000 });
  });

  it('delete an acked batch by the ids it names only', () => {
    const { q, insert } = open();
    for (const id of ['a', 'b', 'c']) insert(id, 'telemetry', 20);
    expect(q.deleteIds.run(JSON.stringify(['a', 'c', 'nope'])).changes).toBe(2);
    expect(q.idExists.get('b')).toBeDefined();
    expect(q.deleteById.get('b')).toMatchObject({ channel: 'telemetry', priority: 20, bytes: 10 });
    expect(q.idExists.get('b')).toBeUndefined();
  });

  it('move a row to the parked table and back, at the end of its lane, without its coalesce key', () => {
    const { q, insert } = open();
    const seq = insert('a', 'state', 40);
    q.parkInsert.run(123, 'HTTP 422', seq);
    q.deleteSeq.run(seq);
    expect(q.parkedGet.get('a')).toMatchObject({ id: 'a', channel: 'state', parked_at: 123, reason: 'HTTP 422' });
    const back = q.unparkInsert.run('a');
    expect(back.changes).toBe(1);
    expect(q.unparkInsert.run('a').changes).toBe(0); // already queued under that id
    expect(q.findById.get('a')).toMatchObject({ seq: Number(back.lastInsertRowid), channel: 'state' });
  });

  it('upsert counters and find the earliest expiry', () => {
    const { q, insert } = open();
    q.counterSet.run('telemetry', 'delivered', 3);
    q.counterSet.run('telemetry', 'delivered', 5);
    expect(q.loadCounters.all()).toEqual([{ channel: 'telemetry', counter: 'delivered', value: 5 }]);
    expect(q.minExpiry.get()).toEqual({ t: null });
    insert('a', 'telemetry', 20, 1, 9_000);
    insert('b', 'telemetry', 20, 1, 4_000);
    expect(q.minExpiry.get()).toEqual({ t: 4_000 });
    expect(q.expiredRows.all(5_000, 10)).toEqual([expect.objectContaining({ id: 'b' })]);
  });
});
