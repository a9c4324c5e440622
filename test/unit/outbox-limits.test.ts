import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveOnLimit } from '../../src/outbox/limits.js';
import { Outbox, type OutboxOptions } from '../../src/outbox/outbox.js';
import { isOutboxError, type OutboxError, type OutboxMessage } from '../../src/outbox/types.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Logger } from '../../src/util/logger.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const open: { store: Store; outbox: Outbox; closed?: boolean }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) {
    if (!o.closed) await o.outbox.close();
    o.store.close();
  }
  dirs.cleanup();
});

type Overrides = Partial<Omit<OutboxOptions, 'store' | 'clock' | 'ids' | 'logger'>>;

/** An outbox on a real SQLite file, fake time. */
function make(path: string, overrides: Overrides = {}, o: { clock?: FakeClock; logger?: Logger } = {}) {
  const clock = o.clock ?? new FakeClock();
  const store = Store.open({ path, logger: silentLogger(), clock });
  const outbox = new Outbox({
    store,
    clock,
    ids: new IdGenerator(() => clock.now()),
    logger: o.logger ?? silentLogger(),
    limits: { maxCount: 1000, maxBytes: 64 * 1_048_576 },
    disk: { minFreeBytes: 0 },
    groupCommit: { windowMs: 0 },
    ...overrides,
  });
  const entry = { store, outbox };
  open.push(entry);
  return { ...entry, clock };
}

const dbPath = (): string => join(dirs.make(), 'agent.db');
const all = (outbox: Outbox): OutboxMessage[] => outbox.peekBatch({ maxCount: 1_000_000, lease: false });
const tag = (m: OutboxMessage): string => `${m.channel}:${JSON.stringify(m.payload)}`;
const rejection = (p: Promise<unknown>): Promise<OutboxError> => p.then(
  () => {
    throw new Error('expected a rejection');
  },
  (e: unknown) => e as OutboxError,
);

describe('outbox limits: the policy in force', () => {
  it('resolves a channel setting over the global one over the built-in default', () => {
    expect(resolveOnLimit('telemetry')).toEqual({ count: 'drop-oldest', bytes: 'drop-oldest', disk: 'refuse' });
    expect(resolveOnLimit('events')).toEqual({ count: 'refuse', bytes: 'refuse', disk: 'refuse' });
    expect(resolveOnLimit('my-app')).toEqual({ count: 'refuse', bytes: 'refuse', disk: 'refuse' });
    expect(resolveOnLimit('telemetry', undefined, { count: 'refuse' })).toMatchObject({ count: 'refuse', bytes: 'drop-oldest' });
    expect(resolveOnLimit('telemetry', { count: 'drop-oldest' }, { count: 'refuse', disk: 'drop-oldest' })).toEqual({
      count: 'drop-oldest',
      bytes: 'drop-oldest',
      disk: 'drop-oldest',
    });
  });

  it('by default telemetry drops its oldest at the count limit; events are refused at theirs and never dropped', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 4, maxBytes: 1 << 30 }, channels: { events: { maxCount: 2 } } });
    for (let i = 1; i <= 2; i++) await outbox.enqueue({ channel: 'events', payload: i });
    const err = await rejection(outbox.enqueue({ channel: 'events', payload: 3 }));
    expect(err.code).toBe('OUTBOX_FULL');
    expect(err.message).toMatch(/"events" channel's limit of 2 messages \(settings\.offline\.channels\.events\.maxCount\)/);
    expect(err.message).toMatch(/onLimit\.count: "refuse"/);
    expect(err.details).toMatchObject({ limit: 'settings.offline.channels.events.maxCount', kind: 'count', max: 2 });
    for (let i = 1; i <= 4; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    // Total 4: telemetry made room by dropping telemetry (its own priority), never the events.
    expect(all(outbox).map(tag)).toEqual(['events:1', 'events:2', 'telemetry:3', 'telemetry:4']);
    const s = outbox.stats();
    expect(s.channels.telemetry).toMatchObject({ dropped: 2, drops: { count: 2, bytes: 0, disk: 0 }, onLimit: { count: 'drop-oldest', disk: 'refuse' } });
    expect(s.channels.events).toMatchObject({ dropped: 0, onLimit: { count: 'refuse' } });
  });

  it('a message in flight is never a victim: the oldest not in flight gives way, then the rest in order', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 6, maxBytes: 1 << 30 } });
    const queue = (): string[] => outbox.readChannel('telemetry', 100).map((m) => `${JSON.stringify(m.payload)}${m.leased ? ' in flight' : ''}`);
    for (let i = 1; i <= 6; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    const inFlight = outbox.peekBatch({ maxCount: 3 }); // a sink holds 1, 2, 3
    for (let i = 7; i <= 9; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    expect(queue()).toEqual(['1 in flight', '2 in flight', '3 in flight', '7', '8', '9']);
    outbox.nack([inFlight[1]!.id]); // 2 is back in the queue: the oldest that may give way, then 7 (past 3)
    await outbox.enqueue({ channel: 'telemetry', payload: 10 });
    await outbox.enqueue({ channel: 'telemetry', payload: 11 });
    expect(queue()).toEqual(['1 in flight', '3 in flight', '8', '9', '10', '11']);
    expect(outbox.stats().channels.telemetry).toMatchObject({ depth: 6, dropped: 5 });
  });

  it('more messages than the limit in one group commit: each drops the oldest, messages of the same commit too', async () => {
    for (const maxCount of [1, 2]) {
      const { outbox } = make(dbPath(), { limits: { maxCount, maxBytes: 1 << 30 } });
      // One commit: every enqueue of this turn. SQLite gives a row inserted into an emptied table the seq just freed.
      const ids = await Promise.all([1, 2, 3, 4, 5].map((i) => outbox.enqueue({ channel: 'telemetry', payload: i })));
      expect(ids).toHaveLength(5);
      expect(outbox.stats().commits).toBe(1);
      expect(all(outbox).map(tag)).toEqual(['telemetry:4', 'telemetry:5'].slice(2 - maxCount));
      expect(outbox.stats().channels.telemetry).toMatchObject({ depth: maxCount, dropped: 5 - maxCount });
    }
  });

  it('an enqueueMany refused after it dropped gives its victims back, and a later message of the same commit drops the oldest', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 4, maxBytes: 1 << 30 }, channels: { events: { maxCount: 1 } } });
    for (const i of [1, 2, 3]) await outbox.enqueue({ channel: 'telemetry', payload: i });
    await outbox.enqueue({ channel: 'events', payload: 1 });
    // One commit: "a" drops telemetry 1, then the events message is refused at its channel's limit
    // and the whole call rolls back (1 is queued again); "b" must drop 1, not 2.
    const [many, one] = await Promise.allSettled([
      outbox.enqueueMany([
        { channel: 'telemetry', payload: 'a' },
        { channel: 'events', payload: 2 },
      ]),
      outbox.enqueue({ channel: 'telemetry', payload: 'b' }),
    ]);
    expect(outbox.stats().commits).toBe(5);
    expect(many.status === 'rejected' && (many.reason as OutboxError).code).toBe('OUTBOX_FULL');
    expect(one.status).toBe('fulfilled');
    expect(all(outbox).map(tag)).toEqual(['events:1', 'telemetry:2', 'telemetry:3', 'telemetry:"b"']);
  });

  it('a channel that refuses is never a victim: telemetry is refused when only events fill the queue', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 3, maxBytes: 1 << 30 }, channels: { events: { priority: 10 } } });
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'events', payload: i });
    const err = await rejection(outbox.enqueue({ channel: 'telemetry', payload: 1 }));
    expect(err.code).toBe('OUTBOX_FULL');
    expect(err.message).toMatch(/outbox's limit of 3 messages \(settings\.offline\.maxQueueSize\)/);
    expect(outbox.stats().dropped).toBe(0);
  });

  it('with refuse everywhere nothing is ever dropped and every refusal names the limit', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 5, maxBytes: 1 << 30 }, onLimit: { count: 'refuse', bytes: 'refuse' } });
    let refused = 0;
    for (let i = 0; i < 20; i++) {
      const r = await outbox.enqueue({ channel: i % 2 ? 'telemetry' : 'metrics', payload: i }).catch((e: unknown) => e);
      if (isOutboxError(r, 'OUTBOX_FULL')) refused++;
    }
    expect(refused).toBe(15);
    expect(outbox.stats()).toMatchObject({ depth: 5, dropped: 0 });
  });

  it('counts bytes drops as bytes', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 1000, maxBytes: 2_048 }, compressAboveBytes: 1 << 30 });
    for (let i = 0; i < 10; i++) await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(400) + String(i) });
    expect(outbox.stats().channels.telemetry!.drops).toMatchObject({ count: 0, bytes: 5 });
  });

  it('refuses at the disk watermark by default, naming the data dir and the free bytes', async () => {
    let free = 1_000_000_000;
    const path = dbPath();
    const { outbox, clock } = make(path, { disk: { minFreeBytes: 100_000_000, checkIntervalMs: 1_000, freeBytes: () => free } });
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    free = 50_000_000;
    await clock.advance(1_000);
    const err = await rejection(outbox.enqueue({ channel: 'telemetry', payload: 4 }));
    expect(err.code).toBe('OUTBOX_DISK_LOW');
    expect(err.message).toContain(join(path, '..'));
    expect(err.message).toMatch(/4\d\.\d MiB free for the data dir .*settings\.offline\.minFreeDiskBytes/);
    expect(err.details).toMatchObject({ dataDir: join(path, '..'), freeBytes: expect.any(Number), minFreeBytes: 100_000_000 });
    expect(outbox.stats()).toMatchObject({ depth: 3, dropped: 0 });

  });
});

describe('outbox limits: the drop log', () => {
  const lines = (records: () => Record<string, unknown>[]) =>
    records().filter((r) => typeof r.msg === 'string' && r.msg.startsWith('outbox dropped')) as { msg: string; total: number; dropped: Record<string, Record<string, number>> }[];

  it('logs an accurate summary at most once per interval, and the rest when due without more drops', async () => {
    const cap = captureLogger('info');
    const { outbox, clock } = make(dbPath(), { limits: { maxCount: 3, maxBytes: 1 << 30 }, dropLogIntervalMs: 10_000 }, { logger: cap.logger });
    for (let i = 0; i < 4; i++) await outbox.enqueue({ channel: 'telemetry', payload: i }); // 1 dropped: logged at once
    await tick();
    expect(lines(cap.records)).toHaveLength(1);
    for (let i = 0; i < 50; i++) await outbox.enqueue({ channel: 'telemetry', payload: i }); // 50 more, within the interval
    await tick();
    expect(lines(cap.records)).toHaveLength(1);
    await clock.advance(10_000);
    await tick();
    const ls = lines(cap.records);
    expect(ls).toHaveLength(2);
    expect(ls.map((l) => l.total)).toEqual([1, 50]);
    expect(ls[1]!.dropped).toEqual({ telemetry: { count: 50 } });
    expect(ls[1]!.msg).toMatch(/outbox dropped 50 message\(s\) since the last report: telemetry 50 \(count\)/);
    expect(outbox.stats().dropped).toBe(51);
  });

  it('drops a killed process did not log are logged by the next start, each exactly once', async () => {
    const path = dbPath();
    const cap = captureLogger('info');
    let dropped = 0;
    // Three short-lived "processes", each killed (never closed) with drops not logged yet.
    for (let run = 0; run < 3; run++) {
      const p = make(path, { limits: { maxCount: 3, maxBytes: 1 << 30 }, dropLogIntervalMs: 60_000, channels: { health: { ttlMs: 10 } } }, { logger: cap.logger });
      for (let i = 0; i < 10 + run; i++) await p.outbox.enqueue({ channel: 'telemetry', payload: i });
      await p.outbox.enqueue({ channel: 'health', payload: run });
      await p.clock.advance(20);
      p.outbox.expire();
      const entry = open.find((e) => e.outbox === p.outbox)!;
      entry.closed = true; // a kill -9: no close(), so nothing flushed
      dropped = p.outbox.stats().dropped + p.outbox.stats().expired;
    }
    const last = make(path, { limits: { maxCount: 3, maxBytes: 1 << 30 } }, { logger: cap.logger });
    await last.outbox.close();
    open.find((e) => e.outbox === last.outbox)!.closed = true;
    await tick();
    const ls = lines(cap.records);
    const sum = ls.reduce((n, l) => n + l.total, 0);
    expect(sum).toBe(dropped);
    expect(ls.some((l) => /before this start/.test(l.msg))).toBe(true);
    const byReason: Record<string, number> = {};
    for (const l of ls) for (const d of Object.values(l.dropped)) for (const [r, n] of Object.entries(d)) byReason[r] = (byReason[r] ?? 0) + n;
    const s = last.outbox.stats();
    expect(byReason).toEqual({ count: s.drops.count, ttl: s.drops.ttl });
  });
});

describe('outbox limits: what a refusal says', () => {
  it('names the bytes limit and its setting, per channel and in total, in MiB, KiB or bytes', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 1000, maxBytes: 2_048 }, channels: { bulk: { maxBytes: 1_000 } }, compressAboveBytes: 1 << 30 });
    await outbox.enqueue({ channel: 'bulk', payload: 'x'.repeat(898) });
    let err = await rejection(outbox.enqueue({ channel: 'bulk', payload: 'y'.repeat(198) }));
    expect(err.code).toBe('OUTBOX_FULL');
    expect(err.message).toBe(
      'outbox full: the "bulk" channel\'s limit of 1000 B (settings.offline.channels.bulk.maxBytes) is reached and channel "bulk" refuses at this limit (onLimit.bytes: "refuse"), so none of its queued messages is dropped; the bulk message was not queued: send it again later',
    );
    expect(err.details).toEqual({ limit: 'settings.offline.channels.bulk.maxBytes', kind: 'bytes', max: 1_000, channel: 'bulk' });
    await outbox.enqueue({ channel: 'events', payload: 'e'.repeat(1_000) });
    err = await rejection(outbox.enqueue({ channel: 'events', payload: 'f'.repeat(200) }));
    expect(err.message).toBe(
      'outbox full: the outbox\'s limit of 2.0 KiB (settings.offline.maxQueueBytes) is reached and no queued message of priority <= 50 in a channel whose onLimit.bytes is "drop-oldest" is left to make room; the events message was not queued: send it again later',
    );
    expect(err.details).toEqual({ limit: 'settings.offline.maxQueueBytes', kind: 'bytes', max: 2_048, channel: 'events' });
  });

  it('a channel of its own limit that gives way but finds nothing of its priority says so', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 1000, maxBytes: 1 << 30 }, channels: { telemetry: { maxCount: 1 } } });
    await outbox.enqueue({ channel: 'telemetry', payload: 1, priority: 90 });
    const err = await rejection(outbox.enqueue({ channel: 'telemetry', payload: 2, priority: 10 }));
    expect(err.message).toBe(
      'outbox full: the "telemetry" channel\'s limit of 1 messages (settings.offline.channels.telemetry.maxCount) is reached and no queued message of priority <= 10 in a channel whose onLimit.count is "drop-oldest" is left to make room; the telemetry message was not queued: send it again later',
    );
    expect(err.details).toEqual({ limit: 'settings.offline.channels.telemetry.maxCount', kind: 'count', max: 1, channel: 'telemetry' });
  });

  it('the disk refusal gives its numbers in the details and the message', async () => {
    let free = 1_000_000_000;
    const path = dbPath();
    const { outbox, clock } = make(path, { disk: { minFreeBytes: 100 * 1_048_576, checkIntervalMs: 1_000, freeBytes: () => free } });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    free = 1;
    await clock.advance(1_000);
    const err = await rejection(outbox.enqueue({ channel: 'events', payload: 2 }));
    expect(err.code).toBe('OUTBOX_DISK_LOW');
    const got = err.details as { freeBytes: number };
    expect(err.details).toEqual({ limit: 'settings.offline.minFreeDiskBytes', kind: 'disk', dataDir: join(path, '..'), freeBytes: got.freeBytes, minFreeBytes: 100 * 1_048_576, channel: 'events' });
    expect(got.freeBytes).toBeLessThan(100 * 1_048_576);
    expect(err.message).toContain('under the watermark of 100.0 MiB (settings.offline.minFreeDiskBytes), and no queued message of priority <= 50 in a channel whose onLimit.disk is "drop-oldest" is left to make room; the events message was not queued: send it again once space is freed');
  });
});

describe('outbox limits: the drop log, edges', () => {
  const dropLines = (records: () => Record<string, unknown>[]) => records().filter((r) => typeof r.msg === 'string' && r.msg.startsWith('outbox dropped'));

  it('one line for every channel and reason, channels in name order; close() logs what the interval held back', async () => {
    const cap = captureLogger('info');
    const { outbox, clock } = make(
      dbPath(),
      { limits: { maxCount: 2, maxBytes: 1 << 30 }, dropLogIntervalMs: 60_000, channels: { metrics: { ttlMs: 10 } } },
      { logger: cap.logger },
    );
    await outbox.enqueue({ channel: 'metrics', payload: 0 });
    await clock.advance(10);
    await outbox.enqueue({ channel: 'telemetry', payload: 0 }); // metrics 0 expires here
    await tick();
    expect(dropLines(cap.records)).toHaveLength(1);
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    await outbox.enqueue({ channel: 'state', payload: 0 });
    await outbox.enqueue({ channel: 'metrics', payload: 1 }).catch(() => undefined);
    await tick();
    expect(dropLines(cap.records)).toHaveLength(1); // within the interval
    await outbox.close();
    open[open.length - 1]!.closed = true;
    const ls = dropLines(cap.records);
    expect(ls).toHaveLength(2);
    expect(ls[0]).toMatchObject({ total: 1, dropped: { metrics: { ttl: 1 } }, level: 40, msg: 'outbox dropped 1 message(s) since the last report: metrics 1 (ttl)' });
    expect(ls[1]!.msg).toBe('outbox dropped 3 message(s) since the last report: telemetry 3 (count)');
    // Closed: no more lines, whatever happens.
    await clock.advance(120_000);
    await tick();
    expect(dropLines(cap.records)).toHaveLength(2);
  });

  it('several reasons and channels in one line, sorted by channel name', async () => {
    const cap = captureLogger('info');
    const { outbox, clock } = make(dbPath(), { limits: { maxCount: 2, maxBytes: 1 << 30 }, dropLogIntervalMs: 0, channels: { zeta: { ttlMs: 5 }, alpha: { ttlMs: 5 } }, onLimit: { count: 'drop-oldest' } }, { logger: cap.logger });
    await outbox.enqueueMany([
      { channel: 'zeta', payload: 1 },
      { channel: 'alpha', payload: 1 },
    ]);
    await clock.advance(5);
    // One commit: both expire, then the newcomers push out one of themselves... of zeta and alpha.
    await outbox.enqueueMany([
      { channel: 'zeta', payload: 2, ttlMs: 60_000 },
      { channel: 'alpha', payload: 2, ttlMs: 60_000 },
      { channel: 'zeta', payload: 3, ttlMs: 60_000 },
    ]);
    await tick();
    const ls = dropLines(cap.records);
    expect(ls).toHaveLength(1);
    expect(ls[0]!.msg).toBe('outbox dropped 3 message(s) since the last report: alpha 1 (ttl); zeta 1 (count), 1 (ttl)');
    // An interval of 0: the next drop, at the same instant, has its own line at once.
    await outbox.enqueue({ channel: 'zeta', payload: 4 });
    await tick();
    expect(dropLines(cap.records).map((l) => l.msg)).toEqual([ls[0]!.msg, 'outbox dropped 1 message(s) since the last report: alpha 1 (count)']);
  });

  it('a line is not repeated by the next start, and a record it cannot make is only a debug line', async () => {
    const path = dbPath();
    const cap = captureLogger('debug');
    const a = make(path, { limits: { maxCount: 1, maxBytes: 1 << 30 }, dropLogIntervalMs: 0 }, { logger: cap.logger });
    await a.outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await a.outbox.enqueue({ channel: 'telemetry', payload: 2 });
    await tick();
    expect(dropLines(cap.records)).toHaveLength(1);
    // A counter row the reporter does not know is ignored.
    a.store.db.prepare("INSERT INTO outbox_counters (channel, counter, value) VALUES ('telemetry', 'logged.bogus', 5)").run();
    await a.outbox.close();
    open.find((e) => e.outbox === a.outbox)!.closed = true;
    a.store.close();
    open.splice(open.findIndex((e) => e.outbox === a.outbox), 1);
    const b = make(path, { limits: { maxCount: 1, maxBytes: 1 << 30 }, dropLogIntervalMs: 0 }, { logger: cap.logger });
    await tick();
    expect(dropLines(cap.records)).toHaveLength(1);
    // The record of what is logged cannot be written: the line is logged anyway.
    b.store.db.exec("CREATE TRIGGER no_logged BEFORE UPDATE ON outbox_counters WHEN NEW.counter LIKE 'logged.%' BEGIN SELECT RAISE(ABORT, 'counters read-only'); END");
    await b.outbox.enqueue({ channel: 'telemetry', payload: 3 });
    await tick();
    expect(dropLines(cap.records)).toHaveLength(2);
    expect(cap.records()).toContainEqual(expect.objectContaining({ level: 20, err: 'counters read-only', msg: 'outbox: could not record which drops are logged' }));
  });
});

describe('outbox limits: a coalescing message replaces, so it needs no room', () => {
  it('is admitted at a full channel that refuses, and at the full outbox, by replacing its key', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 2, maxBytes: 1 << 30 }, channels: { state: { maxCount: 1, onLimit: { count: 'refuse' } } } });
    await outbox.enqueue({ channel: 'state', payload: 1, coalesceKey: 'k' });
    await outbox.enqueue({ channel: 'events', payload: 'e' });
    await outbox.enqueue({ channel: 'state', payload: 2, coalesceKey: 'k' });
    expect(all(outbox).map(tag)).toEqual(['events:"e"', 'state:2']);
    expect(outbox.stats()).toMatchObject({ depth: 2, dropped: 0, coalesced: 1 });
    // Without the key it is a second message: refused.
    expect((await rejection(outbox.enqueue({ channel: 'state', payload: 3 }))).code).toBe('OUTBOX_FULL');
  });

  it('at a bytes limit the replaced message\'s bytes are room for the new one', async () => {
    const { outbox } = make(dbPath(), { limits: { maxCount: 100, maxBytes: 30 }, channels: { state: { maxBytes: 20, onLimit: { bytes: 'refuse' } } }, compressAboveBytes: 1 << 30 });
    await outbox.enqueue({ channel: 'state', payload: 'a'.repeat(18), coalesceKey: 'k' }); // 20 bytes
    await outbox.enqueue({ channel: 'events', payload: 'e'.repeat(8) }); // 10 bytes: the outbox is full
    await outbox.enqueue({ channel: 'state', payload: 'b'.repeat(18), coalesceKey: 'k' });
    expect(outbox.stats()).toMatchObject({ depth: 2, bytes: 30, dropped: 0, coalesced: 1 });
  });

  it('below the disk watermark a replacement no larger than what it replaces is admitted; a larger one is refused', async () => {
    let free = 1_000_000_000;
    const { outbox, clock } = make(dbPath(), { disk: { minFreeBytes: 100 * 1_048_576, checkIntervalMs: 1_000, freeBytes: () => free }, compressAboveBytes: 1 << 30 });
    await outbox.enqueue({ channel: 'state', payload: 'a'.repeat(10), coalesceKey: 'k' });
    free = 1;
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'state', payload: 'b'.repeat(10), coalesceKey: 'k' });
    expect(all(outbox).map((m) => m.payload)).toEqual(['b'.repeat(10)]);
    const err = await rejection(outbox.enqueue({ channel: 'state', payload: 'c'.repeat(11), coalesceKey: 'k' }));
    expect(err.code).toBe('OUTBOX_DISK_LOW');
    expect(all(outbox).map((m) => m.payload)).toEqual(['b'.repeat(10)]);
    expect(outbox.stats()).toMatchObject({ coalesced: 1, dropped: 0 });
  });
});

describe('outbox limits: the drop log inside another transaction', () => {
  it('a report asked for inside a transaction that rolls back is made after it, and not repeated by the next start', async () => {
    const path = dbPath();
    const cap = captureLogger('info');
    const a = make(path, { limits: { maxCount: 1, maxBytes: 1 << 30 }, dropLogIntervalMs: 60_000 }, { logger: cap.logger });
    await a.outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await a.outbox.enqueue({ channel: 'telemetry', payload: 2 }); // 1 dropped: logged at once
    await a.outbox.enqueue({ channel: 'telemetry', payload: 3 }); // 1 more, held back by the interval
    await tick();
    const lines = () => cap.records().filter((r) => String(r.msg).startsWith('outbox dropped'));
    expect(lines()).toHaveLength(1);
    expect(() =>
      a.store.db.transaction(() => {
        void a.outbox.close();
        throw new Error('rolled back');
      })(),
    ).toThrow('rolled back');
    open.find((e) => e.outbox === a.outbox)!.closed = true;
    await tick();
    expect(lines()).toHaveLength(2);
    a.store.close();
    open.splice(open.findIndex((e) => e.outbox === a.outbox), 1);
    const b = make(path, { limits: { maxCount: 1, maxBytes: 1 << 30 } }, { logger: cap.logger });
    await tick();
    expect(lines()).toHaveLength(2);
    expect(b.outbox.stats().dropped).toBe(2);
  });
});

describe('outbox limits: the drop log after close', () => {
  it('a drop after close is not logged by this process (the next start logs it)', async () => {
    const cap = captureLogger('info');
    const { outbox, clock } = make(dbPath(), { dropLogIntervalMs: 0, maxParked: 1 }, { logger: cap.logger });
    const [a, b] = (await outbox.enqueueMany([1, 2].map((n) => ({ channel: 'telemetry', payload: n })))).map((r) => r.id);
    outbox.park([a!], 'bad');
    await outbox.close();
    open[open.length - 1]!.closed = true;
    outbox.park([b!], 'bad'); // the parked table holds one: a parkedLimit drop
    await clock.advance(120_000);
    await tick();
    expect(cap.records().filter((r) => String(r.msg).startsWith('outbox dropped'))).toEqual([]);
    expect(outbox.stats().drops.parkedLimit).toBe(1);
  });
});
