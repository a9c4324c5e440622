import { describe, expect, it } from 'vitest';
import { Admission } from '../../src/outbox/admission.js';
import { OutboxError, type EnqueueMessage } from '../../src/outbox/types.js';
import { partsPerTest, type PartsOptions } from '../helpers/outbox-parts.js';

/** Admission alone (no group commit, no front): what fits, what gives way, what is refused and leaves everything as it was. */

const freshParts = partsPerTest();

function admission(o: PartsOptions = {}) {
  const p = freshParts(o);
  const a = new Admission(p);
  const admit = (m: EnqueueMessage) => a.admit(p.prepare(m));
  return { ...p, a, admit };
}

/** The stored size of a message, as admission counts it. */
function prepare0(m: EnqueueMessage): number {
  const p = freshParts();
  return p.prepare(m).enc.bytes;
}

describe('admission', () => {
  it('inserts what fits, counted as accepted, and answers a queued id as a duplicate without writing', () => {
    const { admit, rows, lanes, counters } = admission();
    expect(admit({ channel: 'telemetry', payload: 1, id: 'a' })).toEqual({ id: 'a' });
    expect(admit({ channel: 'telemetry', payload: 2, id: 'a' })).toEqual({ id: 'a', duplicate: true });
    expect(rows()).toEqual(['telemetry:1']);
    expect(lanes.total.count).toBe(1);
    expect(counters.of('telemetry')?.accepted).toBe(1);
  });

  it('drops the oldest of the lowest priority that may give way at the count limit, counted by reason', () => {
    const { admit, rows, counters } = admission({ limits: { maxCount: 3, maxBytes: 1 << 30 } });
    admit({ channel: 'metrics', payload: 'm1' });
    admit({ channel: 'telemetry', payload: 't1' });
    admit({ channel: 'events', payload: 'e1' });
    expect(admit({ channel: 'telemetry', payload: 't2' })).toEqual({ id: expect.any(String) });
    expect(rows()).toEqual(['telemetry:"t1"', 'events:"e1"', 'telemetry:"t2"']);
    expect(counters.of('metrics')?.count).toBe(1);
    expect(counters.takeDrops()).toBe(true);
  });

  it('refuses when nothing may give way and leaves the queue as it was', () => {
    const { admit, rows, lanes } = admission({ limits: { maxCount: 2, maxBytes: 1 << 30 } });
    admit({ channel: 'events', payload: 1 });
    admit({ channel: 'telemetry', payload: 2, priority: 60 });
    const r = admit({ channel: 'events', payload: 3 });
    expect(r).toBeInstanceOf(OutboxError);
    expect((r as OutboxError).code).toBe('OUTBOX_FULL');
    expect(rows()).toEqual(['events:1', 'telemetry:2']);
    expect(lanes.total.count).toBe(2);
  });

  it('applies a channel limit within the channel only', () => {
    const { admit, rows } = admission({ channels: { telemetry: { maxCount: 1 } } });
    admit({ channel: 'metrics', payload: 'm' });
    admit({ channel: 'telemetry', payload: 1 });
    admit({ channel: 'telemetry', payload: 2 });
    expect(rows()).toEqual(['metrics:"m"', 'telemetry:2']);
  });

  it('replaces a queued message with the same coalesce key; a leased one keeps its place and loses its key', () => {
    const { admit, rows, counters, leases, q } = admission();
    admit({ channel: 'state', payload: 1, coalesceKey: 'k' });
    admit({ channel: 'state', payload: 2, coalesceKey: 'k' });
    expect(rows()).toEqual(['state:2']);
    expect(counters.of('state')?.coalesced).toBe(1);
    const row = q.coalesceFind.get('state', 'k') as { seq: number };
    leases.grant('x', { seq: row.seq, channel: 'state', priority: 40, bytes: 1 });
    admit({ channel: 'state', payload: 3, coalesceKey: 'k' });
    expect(rows()).toEqual(['state:2', 'state:3']);
    expect(q.coalesceFind.get('state', 'k')).toMatchObject({ seq: row.seq + 1 });
  });

  it('admits an enqueueMany all or none: a refused member rolls back the rest, rows and memory', () => {
    const { a, prepare, rows, lanes, counters } = admission({ limits: { maxCount: 2, maxBytes: 1 << 30 } });
    const r = a.admitCall([{ channel: 'events', payload: 1 }, { channel: 'events', payload: 2 }, { channel: 'events', payload: 3 }].map(prepare));
    expect((r as OutboxError).code).toBe('OUTBOX_FULL');
    expect(rows()).toEqual([]);
    expect(lanes.total).toEqual({ count: 0, bytes: 0 });
    expect(counters.of('events')?.accepted ?? 0).toBe(0);
    expect(a.admitCall([prepare({ channel: 'events', payload: 1 })])).toEqual([{ id: expect.any(String) }]);
  });

  it('a message larger than the oldest takes as many as it needs at the bytes limit, and no more', () => {
    const size = (n: number) => ({ channel: 'telemetry', payload: 'x'.repeat(n) });
    const { admit, rows, counters, prepare } = admission({ limits: { maxCount: 100, maxBytes: 3 * prepare0(size(100)) } });
    for (let i = 0; i < 3; i++) admit(size(100));
    // Twice as large as each queued one: two give way, the third stays.
    expect(admit(size(100 + prepare(size(100)).enc.bytes))).toEqual({ id: expect.any(String) });
    expect(rows()).toHaveLength(2);
    expect(counters.of('telemetry')?.bytes).toBe(2);
  });

  it('below the disk watermark, takes as many as free what the message needs, and none when a replaced one frees enough', () => {
    let free = 1 << 40;
    const { admit, rows, disk, counters, prepare } = admission({ freeBytes: () => free, onLimit: { disk: 'refuse' }, channels: { metrics: { onLimit: { disk: 'drop-oldest' } } } });
    const b = prepare({ channel: 'metrics', payload: 'x'.repeat(100) }).enc.bytes;
    for (let i = 0; i < 3; i++) admit({ channel: 'metrics', payload: 'x'.repeat(100) });
    admit({ channel: 'state', payload: 'p'.repeat(100), coalesceKey: 'k' });
    free = 1_000;
    disk.check();
    // Exactly as large as two of them: two give way, the third stays.
    expect(admit({ channel: 'events', payload: 'y'.repeat(100 + b) })).toEqual({ id: expect.any(String) });
    expect(counters.of('metrics')?.disk).toBe(2);
    // Replacing a message of the same size frees what it takes: nothing else gives way.
    expect(admit({ channel: 'state', payload: 'q'.repeat(100), coalesceKey: 'k' })).toEqual({ id: expect.any(String) });
    expect(counters.of('metrics')?.disk).toBe(2);
    expect(counters.of('state')?.coalesced).toBe(1);
    expect(rows().filter((r) => r.startsWith('metrics:'))).toHaveLength(1);
  });

  it('between two readings of free space, counts what the queue grew by: a replacement of the same size adds nothing', () => {
    const min = 10_000;
    let free = 1 << 40;
    const { admit, disk, prepare } = admission({ minFreeBytes: min, freeBytes: () => free, onLimit: { disk: 'refuse' } });
    const b = prepare({ channel: 'state', payload: 'p'.repeat(1_000), coalesceKey: 'k' }).enc.bytes;
    // A reading adds the WAL and SQLite's free pages to the filesystem's free bytes: aim past them.
    free = 0;
    disk.check();
    free = min + Math.floor(2.5 * b) - (disk.free ?? 0);
    disk.check();
    expect(disk.free).toBe(min + Math.floor(2.5 * b));
    // The first takes b; each replacement frees what it takes: the disk is not low after five.
    for (let i = 0; i < 5; i++) expect(admit({ channel: 'state', payload: String(i).repeat(1_000), coalesceKey: 'k' })).toEqual({ id: expect.any(String) });
    expect(disk.low).toBe(false);
    // Two new ones grow the queue by 2b more: 3b is past what was free above the watermark.
    admit({ channel: 'events', payload: 'e'.repeat(1_000) });
    expect(disk.low).toBe(false);
    admit({ channel: 'events', payload: 'f'.repeat(1_000) });
    expect(disk.low).toBe(true);
    expect((admit({ channel: 'events', payload: 'g'.repeat(1_000) }) as OutboxError).code).toBe('OUTBOX_DISK_LOW');
  });

  it('below the disk watermark refuses, unless a channel that drops at the disk limit makes room', () => {
    let free = 1 << 40;
    const { admit, rows, disk, counters } = admission({ freeBytes: () => free, onLimit: { disk: 'refuse' }, channels: { metrics: { onLimit: { disk: 'drop-oldest' } } } });
    admit({ channel: 'metrics', payload: 'x'.repeat(100) });
    free = 1_000;
    disk.check();
    const refused = admit({ channel: 'events', payload: 'x'.repeat(200) });
    expect((refused as OutboxError).code).toBe('OUTBOX_DISK_LOW');
    expect(admit({ channel: 'events', payload: 'y'.repeat(50) })).toEqual({ id: expect.any(String) });
    expect(rows()).toEqual([`events:"${'y'.repeat(50)}"`]);
    expect(counters.of('metrics')?.disk).toBe(1);
  });
});
