import { describe, expect, it } from 'vitest';
import { Reader } from '../../src/outbox/reader.js';
import { partsPerTest } from '../helpers/outbox-parts.js';

/** The reader alone: delivery order, byte bounds, leases taken and skipped, undecodable rows handed back. */

const freshParts = partsPerTest();

function reader() {
  const p = freshParts();
  const r = new Reader(p);
  const insert = (id: string, channel: string, priority: number, payload: string = JSON.stringify(id)) => {
    const seq = p.q.insert.run(id, channel, priority, 1, null, null, 0, payload.length, payload, null, null, null).lastInsertRowid;
    p.lanes.add(channel, priority, payload.length, 1, seq);
  };
  return { ...p, r, insert };
}

const ids = (batch: { id: string }[]) => batch.map((m) => m.id);

describe('reader', () => {
  it('reads the highest priority first and interleaves lanes of one priority by arrival', () => {
    const { r, insert } = reader();
    insert('t1', 'telemetry', 20);
    insert('e1', 'events', 50);
    insert('l1', 'logs', 20);
    insert('t2', 'telemetry', 20);
    expect(ids(r.peek({ maxCount: 10, lease: false }).batch)).toEqual(['e1', 't1', 'l1', 't2']);
    expect(ids(r.peek({ maxCount: 10, lease: false, channels: ['telemetry', 'logs'], excludeChannels: ['logs'] }).batch)).toEqual(['t1', 't2']);
  });

  it('stops before a message that would pass maxBytes, but always takes one', () => {
    const { r, insert } = reader();
    insert('a', 'telemetry', 20, '"aaaaaaaa"');
    insert('b', 'telemetry', 20, '"bb"');
    expect(ids(r.peek({ maxCount: 10, maxBytes: 5, lease: false }).batch)).toEqual(['a']);
    expect(ids(r.peek({ maxCount: 10, maxBytes: 14, lease: false }).batch)).toEqual(['a', 'b']);
    expect(r.peek({ maxCount: 0 })).toEqual({ batch: [], undecodable: [] });
  });

  it('leases what it returns and skips leased and excluded messages the next time', () => {
    const { r, insert, leases } = reader();
    for (const id of ['a', 'b', 'c', 'd']) insert(id, 'telemetry', 20);
    expect(ids(r.peek({ maxCount: 2 }).batch)).toEqual(['a', 'b']);
    expect(leases.get('a')).toMatchObject({ channel: 'telemetry', priority: 20 });
    expect(ids(r.peek({ maxCount: 10, excludeIds: ['c'] }).batch)).toEqual(['d']);
    leases.release('a', true);
    expect(ids(r.peek({ maxCount: 10 }).batch)).toEqual(['a', 'c']);
  });

  it('never skips an excluded message later: the scan restarts at it, past the leased ones after it', () => {
    const { r, insert } = reader();
    for (const id of ['a', 'b', 'c', 'd']) insert(id, 'telemetry', 20);
    expect(ids(r.peek({ maxCount: 1 }).batch)).toEqual(['a']);
    // b is in flight elsewhere (excluded): c, then d are taken, each past a leased one.
    expect(ids(r.peek({ maxCount: 1, excludeIds: ['b'] }).batch)).toEqual(['c']);
    expect(ids(r.peek({ maxCount: 1, excludeIds: ['b'] }).batch)).toEqual(['d']);
    // Without the exclusion b is due: nothing may have moved the lane's start past it.
    expect(ids(r.peek({ maxCount: 10 }).batch)).toEqual(['b']);
  });

  it('finds the next message behind many excluded ones, read in chunks, in one lane or several', () => {
    const { r, insert, db } = reader();
    // More exclusions than the batch is long (a flusher with many messages in flight) and more rows
    // than one chunk: the scan goes on, chunk after chunk, to the first message it may take.
    db.transaction(() => {
      for (let i = 0; i < 700; i++) {
        insert(`t${i}`, 'telemetry', 20);
        if (i === 300) insert('l0', 'logs', 20);
      }
    })();
    const inFlight = Array.from({ length: 600 }, (_, i) => `t${i}`);
    expect(ids(r.peek({ maxCount: 1, lease: false, channels: ['telemetry'], excludeIds: inFlight }).batch)).toEqual(['t600']);
    expect(ids(r.peek({ maxCount: 2, lease: false, excludeIds: inFlight }).batch)).toEqual(['l0', 't600']);
    expect(ids(r.peek({ maxCount: 1, lease: false, excludeIds: inFlight.slice(0, 20) }).batch)).toEqual(['t20']);
  });

  it('hands back the ids whose payload cannot be decoded, and leases none of them', () => {
    const { r, insert, q, leases } = reader();
    insert('good', 'telemetry', 20);
    const seq = Number(q.insert.run('bad', 'telemetry', 20, 1, null, null, 1, 3, Buffer.from('zzz'), null, null, null).lastInsertRowid);
    const p = r.peek({ maxCount: 10 });
    expect(ids(p.batch)).toEqual(['good']);
    expect(p.undecodable).toEqual(['bad']);
    expect(leases.isLeased(seq)).toBe(false);
  });

  it('reads one channel in order with each message’s lease state', () => {
    const { r, insert } = reader();
    insert('a', 'metrics', 10);
    insert('x', 'telemetry', 20);
    insert('b', 'metrics', 30);
    r.peek({ maxCount: 1, channels: ['metrics'] });
    expect(r.readChannel('metrics', 10).map((m) => `${m.id}:${m.leased}`)).toEqual(['a:false', 'b:true']);
    expect(r.readChannel('metrics', 1)).toHaveLength(1);
    expect(r.readChannel('metrics', 0)).toEqual([]);
  });
});
