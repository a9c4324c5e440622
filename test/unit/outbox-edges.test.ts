import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Outbox, type OutboxOptions } from '../../src/outbox/outbox.js';
import { isOutboxError, type CommitInfo, type OutboxError, type OutboxMessage } from '../../src/outbox/types.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Json } from '../../src/util/json-diff.js';
import type { Logger } from '../../src/util/logger.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The outbox's edges as a producer, a sink or an operator sees them: what each refusal says, the
 * parked table's operations, downsampling's rewrite, the stats, the disk watermark's hysteresis and
 * a write that fails. Real SQLite files, fake time.
 */

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

function make(overrides: Overrides = {}, o: { path?: string; clock?: FakeClock; logger?: Logger } = {}) {
  const clock = o.clock ?? new FakeClock();
  const path = o.path ?? join(dirs.make(), 'agent.db');
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
  return { ...entry, clock, path };
}

const all = (outbox: Outbox, channels?: string[]): OutboxMessage[] => outbox.peekBatch({ maxCount: 1_000_000, lease: false, channels });
const payloads = (outbox: Outbox, channels?: string[]): Json[] => all(outbox, channels).map((m) => m.payload);

async function refusal(p: Promise<unknown>): Promise<OutboxError> {
  try {
    await p;
  } catch (err) {
    return err as OutboxError;
  }
  throw new Error('expected a rejection');
}

describe('outbox: what a refused enqueue says', () => {
  it('channel names: 1-64 of letters, digits, ".", "_", "-", starting with a letter or digit', async () => {
    const { outbox } = make();
    for (const ok of ['a', 'A9', 'x'.repeat(64), 'app.v2_raw-data', '9lives']) await expect(outbox.enqueue({ channel: ok, payload: 1 })).resolves.toMatchObject({ id: expect.any(String) });
    for (const bad of ['', 'x'.repeat(65), '.hidden', '_x', '-x', 'a b', 'a/b', 'a\n', 'ä', 'a:b']) {
      const err = await refusal(outbox.enqueue({ channel: bad, payload: 1 }));
      expect(err.code, bad).toBe('OUTBOX_INVALID');
      expect(err.message).toBe(`channel: expected 1-64 letters, digits, ".", "_" or "-", got ${JSON.stringify(bad)}`);
    }
    expect((await refusal(outbox.enqueue({ channel: 5 as unknown as string, payload: 1 }))).message).toMatch(/got 5$/);
  });

  it('priority, ttlMs, id, coalesceKey and payload: each named with what it got; the bounds are inclusive', async () => {
    const { outbox, clock } = make();
    const said = async (m: Record<string, unknown>): Promise<string> => {
      const err = await refusal(outbox.enqueue({ channel: 'telemetry', payload: 1, ...m }));
      expect(err.code).toBe('OUTBOX_INVALID');
      return err.message;
    };
    expect(await said({ priority: 1.5 })).toBe('priority: expected an integer, got 1.5');
    expect(await said({ priority: Number.NaN })).toBe('priority: expected an integer, got NaN');
    for (const ttlMs of [0, -5, Number.NaN, Number.POSITIVE_INFINITY]) expect(await said({ ttlMs })).toBe(`ttlMs: expected a positive number of milliseconds, got ${String(ttlMs)}`);
    expect(await said({ ttlMs: '5' })).toBe('ttlMs: expected a positive number of milliseconds, got 5');
    expect(await said({ id: '' })).toBe('id: expected a string of 1-128 characters, got ""');
    expect(await said({ id: 'i'.repeat(129) })).toMatch(/^id: expected a string of 1-128 characters, got "i{129}"$/);
    expect(await said({ id: 7 })).toBe('id: expected a string of 1-128 characters, got 7');
    expect(await said({ coalesceKey: '' })).toBe('coalesceKey: expected a string of 1-256 characters, got ""');
    expect(await said({ coalesceKey: 'k'.repeat(257) })).toMatch(/^coalesceKey: expected a string of 1-256 characters, got "k{257}"$/);
    expect(await said({ coalesceKey: 3 })).toBe('coalesceKey: expected a string of 1-256 characters, got 3');
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    expect(await said({ payload: circular })).toMatch(/^payload: expected a JSON value \(.*circular/i);
    // The bounds themselves are accepted; a fractional TTL rounds up to the next millisecond.
    const id = 'i'.repeat(128);
    await outbox.enqueue({ channel: 'telemetry', payload: 'edge', id, coalesceKey: 'k'.repeat(256), ttlMs: 1.2, priority: 0 });
    expect(all(outbox)[0]).toMatchObject({ id, coalesceKey: 'k'.repeat(256), expiresAt: clock.now() + 2, priority: 0, createdAt: clock.now() });
  });

  it('a message larger than the outbox or its channel may hold: OUTBOX_TOO_LARGE with both numbers; exactly the limit fits', async () => {
    const { outbox } = make({ limits: { maxCount: 10, maxBytes: 100 }, channels: { small: { maxBytes: 20 } }, compressAboveBytes: 1 << 30 });
    const of = (n: number): string => 'x'.repeat(n - 2); // a JSON string of n bytes
    let err = await refusal(outbox.enqueue({ channel: 'telemetry', payload: of(101) }));
    expect(err.code).toBe('OUTBOX_TOO_LARGE');
    expect(err.message).toBe('a telemetry message of 101 bytes (stored) is larger than the outbox may hold (100 bytes)');
    err = await refusal(outbox.enqueue({ channel: 'small', payload: of(21) }));
    expect(err.message).toBe('a small message of 21 bytes (stored) is larger than the outbox may hold (20 bytes)');
    await outbox.enqueue({ channel: 'small', payload: of(20) });
    await outbox.enqueue({ channel: 'telemetry', payload: of(80) });
    expect(outbox.stats()).toMatchObject({ depth: 2, bytes: 100 });
  });

  it('the priority: given, else the channel\'s setting, else the built-in default, else 20', async () => {
    const { outbox } = make({ channels: { telemetry: { priority: 70 } } });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await outbox.enqueue({ channel: 'telemetry', payload: 2, priority: 5 });
    await outbox.enqueue({ channel: 'jobs', payload: 3 });
    await outbox.enqueue({ channel: 'health', payload: 4 });
    await outbox.enqueue({ channel: 'my-app', payload: 5 });
    await outbox.enqueue({ channel: 'toString', payload: 6 });
    expect(all(outbox).map((m) => [m.channel, m.priority])).toEqual([
      ['telemetry', 70],
      ['jobs', 50],
      ['health', 30],
      ['my-app', 20],
      ['toString', 20],
      ['telemetry', 5],
    ]);
    // A channel named like an Object method is just another channel: refuses at every limit.
    expect(outbox.stats().channels['toString']!.onLimit).toEqual({ count: 'refuse', bytes: 'refuse', disk: 'refuse' });
  });

  it('a channel\'s own TTL applies when the message gives none', async () => {
    const { outbox, clock } = make({ channels: { health: { ttlMs: 1_000 } } });
    await outbox.enqueue({ channel: 'health', payload: 1 });
    await outbox.enqueue({ channel: 'health', payload: 2, ttlMs: 5_000 });
    expect(all(outbox).map((m) => m.expiresAt)).toEqual([clock.now() + 1_000, clock.now() + 5_000]);
  });

  it('enqueueMany of nothing resolves with nothing and writes nothing', async () => {
    const commits: CommitInfo[] = [];
    const { outbox } = make({ onCommit: (c) => commits.push(c) });
    await expect(outbox.enqueueMany([])).resolves.toEqual([]);
    expect(commits).toEqual([]);
    const err = await refusal(outbox.enqueueMany([{ channel: 'telemetry', payload: 1 }, { channel: 'bad name', payload: 2 }]));
    expect(err.code).toBe('OUTBOX_INVALID');
    expect(outbox.stats().depth).toBe(0);
  });
});

describe('outbox: peekBatch options', () => {
  it('maxCount is floored; zero or less hands out nothing; excludeChannels leaves channels out; lease: false leases nothing', async () => {
    const { outbox } = make();
    for (const channel of ['telemetry', 'logs', 'telemetry', 'logs']) await outbox.enqueue({ channel, payload: channel });
    expect(outbox.peekBatch({ maxCount: 0 })).toEqual([]);
    expect(outbox.peekBatch({ maxCount: -3 })).toEqual([]);
    expect(outbox.peekBatch({ maxCount: 0.9 })).toEqual([]);
    expect(outbox.peekBatch({ maxCount: 1, lease: false })).toHaveLength(1);
    expect(outbox.stats().leased).toBe(0);
    expect(outbox.peekBatch({ maxCount: 2.9, excludeChannels: ['logs'] }).map((m) => m.payload)).toEqual(['telemetry', 'telemetry']);
    expect(outbox.stats().channels.telemetry!.leased).toBe(2);
    expect(outbox.peekBatch({ maxCount: 10, channels: ['logs', 'telemetry'], excludeChannels: ['telemetry'] }).map((m) => m.channel)).toEqual(['logs', 'logs']);
  });

  it('a lease runs out after leaseMs: the stats stop counting it and the message is handed out again', async () => {
    const { outbox, clock } = make({ leaseMs: 1_000 });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    const [m] = outbox.peekBatch({ maxCount: 1 });
    await clock.advance(999);
    expect(outbox.stats().leased).toBe(1);
    expect(outbox.peekBatch({ maxCount: 1 })).toEqual([]);
    await clock.advance(1);
    expect(outbox.stats().leased).toBe(0);
    expect(outbox.peekBatch({ maxCount: 1 }).map((x) => x.id)).toEqual([m!.id]);
  });

  it('acks a message that was never peeked (no lease): deleted and counted as delivered', async () => {
    const { outbox } = make();
    const { id } = await outbox.enqueue({ channel: 'events', payload: 1 });
    await outbox.enqueue({ channel: 'events', payload: 2 });
    expect(outbox.ack([id])).toBe(1);
    expect(payloads(outbox)).toEqual([2]);
    expect(outbox.stats().channels.events).toMatchObject({ depth: 1, delivered: 1 });
  });

  it('expires more messages than one read takes (hundreds at once), each counted', async () => {
    const { outbox, clock } = make();
    await outbox.enqueueMany(Array.from({ length: 600 }, (_, i) => ({ channel: 'telemetry', payload: i, ttlMs: 1_000 })));
    await outbox.enqueue({ channel: 'telemetry', payload: 'keep' });
    await clock.advance(1_000);
    expect(outbox.expire()).toBe(600);
    expect(payloads(outbox)).toEqual(['keep']);
    expect(outbox.stats()).toMatchObject({ depth: 1, expired: 600 });
  });
});

describe('outbox: the parked table', () => {
  it('lists parked messages oldest first, per channel and up to a limit, with every field', async () => {
    const { outbox, clock } = make({ compressAboveBytes: 10 });
    const a = await outbox.enqueue({ channel: 'telemetry', payload: 'a', ttlMs: 60_000, priority: 7 });
    const b = await outbox.enqueue({ channel: 'events', payload: { big: 'b'.repeat(100) } });
    const c = await outbox.enqueue({ channel: 'telemetry', payload: 'c' });
    const createdAt = clock.now();
    await clock.advance(500);
    expect(outbox.park([a.id], 'r1')).toBe(1);
    expect(outbox.park([b.id, c.id, 'no-such-id'], 'x'.repeat(2_000))).toBe(2);
    expect(outbox.park([], 'nothing')).toBe(0);
    expect(outbox.park(['no-such-id'], 'nothing')).toBe(0);
    const list = outbox.parked();
    expect(list.map((p) => p.id)).toEqual([a.id, b.id, c.id]);
    expect(list[0]).toEqual({ id: a.id, channel: 'telemetry', priority: 7, createdAt, expiresAt: createdAt + 60_000, payload: 'a', storedBytes: 3, compressed: false, parkedAt: clock.now(), reason: 'r1' });
    expect(list[1]).toMatchObject({ compressed: true, payload: { big: 'b'.repeat(100) } });
    expect(list[1]!.reason).toBe('x'.repeat(1_000));
    expect(outbox.parked({ channel: 'telemetry' }).map((p) => p.id)).toEqual([a.id, c.id]);
    expect(outbox.parked({ limit: 2 }).map((p) => p.id)).toEqual([a.id, b.id]);
    expect(outbox.parked({ channel: 'telemetry', limit: 1 }).map((p) => p.id)).toEqual([a.id]);
    expect(outbox.stats()).toMatchObject({ depth: 0, parked: 3, parkedTotal: 3 });
  });

  it('logs each park with its count and reason, and nothing when nothing was parked', async () => {
    const cap = captureLogger();
    const { outbox } = make({}, { logger: cap.logger });
    const { id } = await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    outbox.park(['no-such-id'], 'ghost');
    outbox.park([id], 'HTTP 400: bad');
    const lines = cap.records().filter((r) => String(r.msg).startsWith('parked'));
    expect(lines).toEqual([expect.objectContaining({ count: 1, reason: 'HTTP 400: bad', msg: 'parked 1 outbox message(s): HTTP 400: bad', level: 40 })]);
  });

  it('keeps at most maxParked: the oldest parked give way, counted as parkedLimit drops of their channel', async () => {
    const { outbox } = make({ maxParked: 2 });
    const ids = (await outbox.enqueueMany(['telemetry', 'events', 'telemetry', 'events'].map((channel, i) => ({ channel, payload: i })))).map((r) => r.id);
    outbox.park([ids[0]!, ids[1]!], 'first');
    expect(outbox.stats()).toMatchObject({ parked: 2, dropped: 0 });
    outbox.park([ids[2]!, ids[3]!], 'second');
    expect(outbox.parked().map((p) => p.id)).toEqual([ids[2], ids[3]]);
    const s = outbox.stats();
    expect(s.channels.telemetry).toMatchObject({ parked: 1, parkedTotal: 2, dropped: 1, drops: { parkedLimit: 1 } });
    expect(s.channels.events).toMatchObject({ parked: 1, parkedTotal: 2, dropped: 1, drops: { parkedLimit: 1 } });
    expect(s).toMatchObject({ parked: 2, dropped: 2 });
  });

  it('retryParked(ids) puts back only those, skips an id queued again meanwhile, and purgeParked(ids) deletes only those', async () => {
    const { outbox } = make();
    const ids = (await outbox.enqueueMany([1, 2, 3, 4].map((n) => ({ channel: 'telemetry', payload: n, id: `m${n}` })))).map((r) => r.id);
    outbox.park(ids, 'bad');
    // m2 is sent again by its producer while parked: retrying it must not queue it twice.
    await outbox.enqueue({ channel: 'telemetry', payload: 'again', id: 'm2' });
    expect(outbox.retryParked(['m1', 'm2', 'nope'])).toBe(1);
    expect(payloads(outbox)).toEqual(['again', 1]);
    expect(outbox.parked().map((p) => p.id)).toEqual(['m3', 'm4']);
    expect(outbox.stats().channels.telemetry).toMatchObject({ depth: 2, parked: 2 });
    expect(outbox.purgeParked(['m4', 'nope'])).toBe(1);
    expect(outbox.parked().map((p) => p.id)).toEqual(['m3']);
    expect(outbox.stats().channels.telemetry).toMatchObject({ depth: 2, parked: 1 });
    expect(outbox.purgeParked()).toBe(1);
    expect(outbox.stats().parked).toBe(0);
    // What an operator purged left undelivered: dropped, with its reason.
    expect(outbox.stats().channels.telemetry).toMatchObject({ dropped: 2, drops: { purged: 2 } });
  });

  it('a retried message keeps its TTL, and alone in its lane is the oldest again', async () => {
    const { outbox, clock } = make();
    const a = await outbox.enqueue({ channel: 'telemetry', payload: 'a', ttlMs: 10_000 });
    outbox.park([a.id], 'bad');
    await clock.advance(3_000);
    expect(outbox.stats().channels.telemetry!.oldestAgeMs).toBe(0);
    // A peek meanwhile finds nothing with a TTL left in the queue.
    expect(outbox.peekBatch({ maxCount: 1 })).toEqual([]);
    expect(outbox.retryParked()).toBe(1);
    expect(outbox.stats().channels.telemetry!.oldestAgeMs).toBe(3_000);
    const b = await outbox.enqueue({ channel: 'telemetry', payload: 'b' });
    await clock.advance(7_000);
    expect(outbox.peekBatch({ maxCount: 10 }).map((m) => m.id)).toEqual([b.id]);
    expect(outbox.stats()).toMatchObject({ depth: 1, expired: 1 });
  });
});

describe('outbox: downsampling support', () => {
  it('rewrite leaves alone what is in flight or on another channel, and keeps the byte totals right', async () => {
    const { outbox } = make({ compressAboveBytes: 1 << 30 });
    const [m1, m2, m3, m4] = (await outbox.enqueueMany([1, 2, 3, 4].map((n) => ({ channel: 'metrics', payload: n })))).map((r) => r.id);
    const other = (await outbox.enqueue({ channel: 'telemetry', payload: 5 })).id;
    const [leased] = outbox.peekBatch({ maxCount: 1, channels: ['metrics'] });
    expect(leased!.id).toBe(m1);
    const ids = outbox.rewrite('metrics', {
      replace: [
        { id: m1!, payload: 'in flight' },
        { id: m2!, payload: 'x'.repeat(98) },
        { id: other, payload: 'not mine' },
        { id: 'gone', payload: 0 },
      ],
      remove: [m1!, m3!, other, 'gone'],
    });
    expect(ids[0]).toBeUndefined();
    expect(ids[1]).toEqual(expect.any(String));
    expect(ids[1]).not.toBe(m2);
    expect(ids.slice(2)).toEqual([undefined, undefined]);
    expect(outbox.readChannel('metrics', 10).map((m) => [m.payload, m.leased])).toEqual([
      [1, true],
      ['x'.repeat(98), false],
      [4, false],
    ]);
    expect(payloads(outbox, ['telemetry'])).toEqual([5]);
    const s = outbox.stats();
    expect(s.channels.metrics).toMatchObject({ depth: 3, bytes: 1 + 100 + 1, downsampled: 1 });
    expect(s.bytes).toBe(103);
    expect(s.downsampled).toBe(1);
    expect(outbox.readChannel('metrics', 0)).toEqual([]);
    expect(outbox.readChannel('metrics', 2)).toHaveLength(2);
    expect(m4).toBeDefined();
  });

  it('channelDepth counts the messages waiting for the next commit too', async () => {
    const { outbox } = make({ groupCommit: { windowMs: 50 } });
    await outbox.enqueue({ channel: 'metrics', payload: 0 });
    const p = [outbox.enqueue({ channel: 'metrics', payload: 1 }), outbox.enqueue({ channel: 'telemetry', payload: 2 })];
    expect(outbox.channelDepth('metrics')).toBe(2);
    expect(outbox.channelDepth('telemetry')).toBe(1);
    expect(outbox.channelDepth('events')).toBe(0);
    expect(outbox.stats().pending).toBe(2);
    await Promise.all(p);
    expect(outbox.stats().pending).toBe(0);
    expect(outbox.channelDepth('metrics')).toBe(2);
  });
});

describe('outbox: stats', () => {
  it('name every configured channel, count accepted messages, and sum the channels into the totals', async () => {
    const { outbox } = make({ channels: { quiet: { maxCount: 5 } }, limits: { maxCount: 2, maxBytes: 1 << 30 } });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await outbox.enqueue({ channel: 'telemetry', payload: 2 });
    // Metrics (10) is lower than everything queued (telemetry, 20): refused, nothing dropped.
    expect((await refusal(outbox.enqueue({ channel: 'metrics', payload: 3 }))).code).toBe('OUTBOX_FULL');
    await outbox.enqueue({ channel: 'telemetry', payload: 4 }); // drops telemetry 1
    const s = outbox.stats();
    expect(Object.keys(s.channels)).toEqual(['quiet', 'telemetry']);
    expect(s.channels.quiet).toEqual({
      depth: 0,
      bytes: 0,
      oldestAgeMs: 0,
      leased: 0,
      delivered: 0,
      dropped: 0,
      drops: { count: 0, bytes: 0, disk: 0, ttl: 0, parkedLimit: 0, purged: 0, corrupt: 0, offline: 0 },
      onLimit: { count: 'refuse', bytes: 'refuse', disk: 'refuse' },
      expired: 0,
      parked: 0,
      parkedTotal: 0,
      coalesced: 0,
      downsampled: 0,
      accepted: 0,
    });
    expect(s.channels.telemetry).toMatchObject({ accepted: 3, depth: 2, dropped: 1, drops: { count: 1 } });
    expect(s).toMatchObject({ accepted: 3, depth: 2, dropped: 1, drops: { count: 1, bytes: 0 }, commits: 4, pending: 0, disk: { freeBytes: null, minFreeBytes: 0, low: false } });
  });

  it('a hook that throws after a commit is logged; the enqueue still resolves', async () => {
    const cap = captureLogger();
    const { outbox } = make(
      {
        onCommit: () => {
          throw new Error('metrics exporter broke');
        },
      },
      { logger: cap.logger },
    );
    await expect(outbox.enqueue({ channel: 'telemetry', payload: 1 })).resolves.toMatchObject({ id: expect.any(String) });
    expect(cap.records()).toContainEqual(expect.objectContaining({ err: 'metrics exporter broke', msg: 'outbox: onCommit hook failed', level: 40 }));
  });
});

describe('outbox: group commit', () => {
  it('a full batch commits at once, without waiting out the window', async () => {
    const commits: CommitInfo[] = [];
    const { outbox } = make({ groupCommit: { windowMs: 600_000, maxBatch: 3 }, onCommit: (c) => commits.push(c) });
    const t0 = performance.now();
    await Promise.all([1, 2, 3].map((n) => outbox.enqueue({ channel: 'telemetry', payload: n })));
    await outbox.enqueueMany([4, 5, 6].map((n) => ({ channel: 'telemetry', payload: n })));
    expect(performance.now() - t0).toBeLessThan(5_000);
    expect(commits.map((c) => [c.calls, c.messages])).toEqual([
      [3, 3],
      [1, 3],
    ]);
  });
});

describe('outbox: a write that fails', () => {
  it('rejects with OUTBOX_WRITE_FAILED naming what it was doing, and changes nothing', async () => {
    const cap = captureLogger();
    const { outbox, store } = make({}, { logger: cap.logger });
    const { id } = await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    store.db.exec("CREATE TRIGGER no_insert BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'insert blocked'); END");
    store.db.exec("CREATE TRIGGER no_delete BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'delete blocked'); END");
    const err = await refusal(outbox.enqueueMany([2, 3].map((n) => ({ channel: 'telemetry', payload: n }))));
    expect(err.code).toBe('OUTBOX_WRITE_FAILED');
    expect(err.message).toBe('writing 2 message(s) failed: insert blocked');
    expect(cap.records()).toContainEqual(expect.objectContaining({ code: 'OUTBOX_WRITE_FAILED', messages: 2, msg: 'writing 2 message(s) failed: insert blocked', level: 50 }));
    const [m] = outbox.peekBatch({ maxCount: 1 });
    let ackErr: unknown;
    try {
      outbox.ack([m!.id]);
    } catch (e) {
      ackErr = e;
    }
    expect(isOutboxError(ackErr, 'OUTBOX_WRITE_FAILED')).toBe(true);
    expect((ackErr as Error).message).toBe('acknowledging 1 message(s) failed: delete blocked');
    expect(outbox.stats()).toMatchObject({ depth: 1, delivered: 0, accepted: 1 });
    store.db.exec('DROP TRIGGER no_insert; DROP TRIGGER no_delete');
    expect(outbox.ack([id])).toBe(1);
    expect(outbox.stats()).toMatchObject({ depth: 0, delivered: 1 });
  });
});

describe('outbox: the free-disk watermark', () => {
  function disk(minFreeBytes: number, o: { checkEveryBytes?: number; logger?: Logger } = {}) {
    const state = { free: 1_000_000_000, reads: 0, fail: false };
    const env = make(
      {
        compressAboveBytes: 1 << 30,
        disk: {
          minFreeBytes,
          checkIntervalMs: 1_000,
          ...(o.checkEveryBytes !== undefined ? { checkEveryBytes: o.checkEveryBytes } : {}),
          freeBytes: () => {
            state.reads++;
            if (state.fail) throw new Error('statfs: EIO');
            return state.free;
          },
        },
      },
      { logger: o.logger },
    );
    return { ...env, state };
  }

  it('leaves the low state only with a quarter of the watermark to spare, and logs both changes once', async () => {
    const cap = captureLogger();
    const { outbox, clock, state } = disk(40_000_000, { logger: cap.logger });
    await outbox.enqueue({ channel: 'telemetry', payload: 0 });
    state.free = 39_000_000;
    await clock.advance(1_000);
    expect((await refusal(outbox.enqueue({ channel: 'telemetry', payload: 1 }))).code).toBe('OUTBOX_DISK_LOW');
    expect(outbox.stats().disk).toMatchObject({ low: true, minFreeBytes: 40_000_000 });
    // Above the watermark, but by less than a quarter of it (10 MB): still low.
    state.free = 49_000_000;
    await clock.advance(1_000);
    expect((await refusal(outbox.enqueue({ channel: 'telemetry', payload: 2 }))).code).toBe('OUTBOX_DISK_LOW');
    state.free = 50_100_000;
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'telemetry', payload: 3 });
    expect(outbox.stats().disk.low).toBe(false);
    const warn = cap.records().filter((r) => String(r.msg).startsWith('disk space low'));
    const info = cap.records().filter((r) => String(r.msg).startsWith('disk space back'));
    expect(warn).toHaveLength(1);
    expect(warn[0]).toMatchObject({ level: 40, minFreeBytes: 40_000_000 });
    expect(String(warn[0]!.msg)).toMatch(/^disk space low \(37\.\d MiB free, watermark 38\.1 MiB\): the outbox stops growing/);
    expect(info).toHaveLength(1);
    expect(String(info[0]!.msg)).toMatch(/^disk space back above the watermark \(47\.\d MiB free\): the outbox grows again$/);
  });

  it('the spare is at most 16 MiB for a large watermark', async () => {
    const { outbox, clock, state } = disk(200 * 1_048_576);
    state.free = 150 * 1_048_576;
    await clock.advance(1_000);
    expect((await refusal(outbox.enqueue({ channel: 'telemetry', payload: 1 }))).code).toBe('OUTBOX_DISK_LOW');
    state.free = 217 * 1_048_576; // 200 MiB + 17 MiB: more than 16 MiB to spare, less than a quarter
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'telemetry', payload: 2 });
    expect(outbox.stats().disk.low).toBe(false);
  });

  it('re-reads free space after checkEveryBytes written, before the interval is up', async () => {
    const { outbox, state } = disk(10_000_000, { checkEveryBytes: 1_000 });
    await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(600) });
    const reads = state.reads;
    await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(600) });
    expect(state.reads).toBe(reads); // 602 bytes since: not yet
    await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(600) });
    expect(state.reads).toBe(reads + 1);
  });

  it('counts what was written since the last reading against the free space', async () => {
    // A filesystem of `budget` bytes that the database and its WAL take from, as a real one would.
    const budget = { bytes: 0 };
    const size = (f: string): number => (existsSync(f) ? statSync(f).size : 0);
    const env = make({
      compressAboveBytes: 1 << 30,
      disk: { minFreeBytes: 50_000_000, checkIntervalMs: 60_000, checkEveryBytes: 1 << 30, freeBytes: () => budget.bytes - size(env.path) - size(`${env.path}-wal`) },
    });
    const { outbox, clock } = env;
    budget.bytes = 100_000_000;
    await outbox.enqueue({ channel: 'telemetry', payload: 0 });
    // Set the filesystem about 200 KB over the watermark for the next reading.
    budget.bytes -= outbox.stats().disk.freeBytes! - 50_200_000;
    await clock.advance(60_000);
    const big = (): string => 'x'.repeat(150_000);
    await outbox.enqueue({ channel: 'telemetry', payload: big() });
    await outbox.enqueue({ channel: 'telemetry', payload: big() }); // ~50 KB over the watermark before it: fits
    // 300 KB written since the reading: below the watermark now, without a new reading.
    expect(outbox.stats().disk.low).toBe(true);
    expect((await refusal(outbox.enqueue({ channel: 'telemetry', payload: 1 }))).code).toBe('OUTBOX_DISK_LOW');
    expect(outbox.stats().depth).toBe(3);
  });

  it('when free space cannot be read: warns once and does not enforce the watermark', async () => {
    const cap = captureLogger();
    const { outbox, clock, state } = disk(10_000_000, { logger: cap.logger });
    state.fail = true;
    for (let i = 0; i < 3; i++) {
      await clock.advance(1_000);
      await outbox.enqueue({ channel: 'telemetry', payload: i });
    }
    const warns = cap.records().filter((r) => String(r.msg).startsWith('outbox: cannot read free disk space'));
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({ err: 'statfs: EIO', level: 40 });
    expect(outbox.stats().depth).toBe(3);
  });

  it('a watermark of 0 never reads free space', async () => {
    const { outbox, clock, state } = disk(0);
    for (let i = 0; i < 3; i++) {
      await clock.advance(1_000);
      await outbox.enqueue({ channel: 'telemetry', payload: i });
    }
    expect(state.reads).toBe(0);
    expect(outbox.stats().disk).toEqual({ freeBytes: null, minFreeBytes: 0, low: false });
  });
});
