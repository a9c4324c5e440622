import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Logger } from '../../src/util/logger.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { flushOutbox } from '../helpers/outbox-flush.js';
import { outboxesPerTest, type OpenOutbox, type OutboxOpening } from '../helpers/outbox-per-test.js';

/**
 * How the outbox copes with what it does not expect: a payload that no longer decodes, a leased row
 * gone at its ack, an enqueue inside another transaction that rolls back, a restart with expired
 * messages, large lanes read in chunks, and which drops reach the drop log.
 */

const { make: openOutbox, close, track, dirs } = outboxesPerTest();

type Overrides = OutboxOpening['overrides'];

const make = (overrides: Overrides = {}, o: { path?: string; clock?: FakeClock; logger?: Logger } = {}) => openOutbox({ ...o, overrides });
const closeOne = (env: OpenOutbox): Promise<void> => close(env);

const all = (outbox: Outbox): OutboxMessage[] => outbox.peekBatch({ maxCount: 1_000_000, lease: false });

describe('outbox: damaged rows', () => {
  it('a payload that no longer decodes is parked as undecodable and logged; the rest of the batch is handed out', async () => {
    const cap = captureLogger();
    const { outbox, store } = make({}, { logger: cap.logger });
    const ids = (await outbox.enqueueMany([1, 2, 3].map((n) => ({ channel: 'telemetry', payload: n })))).map((r) => r.id);
    store.db.prepare("UPDATE outbox SET payload = '{not json' WHERE id = ?").run(ids[1]);
    expect(outbox.peekBatch({ maxCount: 10 }).map((m) => m.payload)).toEqual([1, 3]);
    expect(store.db.prepare('SELECT id, reason FROM outbox_parked').all()).toEqual([{ id: ids[1], reason: 'undecodable payload' }]);
    expect(outbox.stats().channels.telemetry).toMatchObject({ depth: 2, parked: 1, leased: 2 });
    expect(cap.records()).toContainEqual(expect.objectContaining({ level: 50, id: ids[1], channel: 'telemetry', msg: `outbox message ${ids[1]} cannot be decoded; parking it` }));
    expect(cap.records()).toContainEqual(expect.objectContaining({ msg: 'parked 1 outbox message(s): undecodable payload' }));
    // The parked list still lists it (and every other parked message), saying why its payload is missing.
    await outbox.enqueue({ channel: 'telemetry', payload: 4 });
    const fourth = outbox.peekBatch({ maxCount: 10 }).find((m) => m.payload === 4)!;
    outbox.park([fourth.id], 'refused: 400');
    const listed = outbox.parked();
    expect(listed.map((m) => [m.id, m.reason, m.payload])).toEqual(expect.arrayContaining([[ids[1], 'undecodable payload', null], [fourth.id, 'refused: 400', 4]]));
    expect(listed.find((m) => m.id === ids[1])?.payloadError).toMatch(/^the stored payload cannot be decoded: /);
    expect(listed.find((m) => m.id === fourth.id)).not.toHaveProperty('payloadError');
  });

  it('a leased message missing at its ack: the others are still acknowledged, one by one, and it is logged', async () => {
    const cap = captureLogger();
    const { outbox, store } = make({}, { logger: cap.logger });
    await outbox.enqueueMany([1, 2, 3].map((n) => ({ channel: 'events', payload: n })));
    const batch = outbox.peekBatch({ maxCount: 3 });
    store.db.prepare('DELETE FROM outbox WHERE id = ?').run(batch[1]!.id); // gone behind the outbox's back
    expect(outbox.ack(batch.map((m) => m.id))).toBe(2);
    expect(all(outbox)).toEqual([]);
    expect(outbox.stats().channels.events).toMatchObject({ delivered: 2, leased: 0 });
    expect(cap.records()).toContainEqual(expect.objectContaining({ level: 50, err: '2 of 3 leased rows deleted', msg: 'outbox: a leased message was missing at its ack; acknowledging one by one' }));
  });
});

describe('outbox: enqueue inside someone else\'s transaction', () => {
  it('a full batch is committed after that transaction, so its rollback does not take the message', async () => {
    const { outbox, store } = make({ groupCommit: { windowMs: 60_000, maxBatch: 1 } });
    let p!: Promise<unknown>;
    expect(() =>
      store.db.transaction(() => {
        p = outbox.enqueue({ channel: 'events', payload: 'inside' });
        throw new Error('their rollback');
      })(),
    ).toThrow('their rollback');
    await p;
    expect(all(outbox).map((m) => m.payload)).toEqual(['inside']);
    expect(store.db.prepare('SELECT count(*) AS n FROM outbox').get()).toEqual({ n: 1 });
  });
});

describe('outbox: after a restart', () => {
  it('says how much it holds from before, and expires on time what had a TTL', async () => {
    const cap = captureLogger();
    const clock = new FakeClock();
    const a = make({}, { clock });
    await a.outbox.enqueue({ channel: 'telemetry', payload: 'short', ttlMs: 1_000 });
    await a.outbox.enqueue({ channel: 'telemetry', payload: 'long' });
    await closeOne(a);
    const b = make({}, { clock, path: a.path, logger: cap.logger });
    expect(cap.records()).toContainEqual(expect.objectContaining({ level: 30, depth: 2, msg: 'outbox holds 2 undelivered message(s) from before' }));
    await clock.advance(1_000);
    expect(b.outbox.peekBatch({ maxCount: 10 }).map((m) => m.payload)).toEqual(['long']);
    expect(b.outbox.stats()).toMatchObject({ depth: 1, expired: 1 });
  });

  it('an empty outbox says nothing of what it holds', () => {
    const cap = captureLogger();
    make({}, { logger: cap.logger });
    expect(cap.records().filter((r) => String(r.msg).startsWith('outbox holds'))).toEqual([]);
  });
});

describe('outbox: large lanes', () => {
  it('hands out a batch larger than one read, in order, across lanes of one priority and past many excluded ids', async () => {
    const { outbox } = make();
    const msgs = Array.from({ length: 1_500 }, (_, i) => ({ channel: i % 3 === 0 ? 'b' : 'a', payload: i }));
    const ids = (await outbox.enqueueMany(msgs)).map((r) => r.id);
    const got = outbox.peekBatch({ maxCount: 1_200, excludeIds: ids.slice(0, 500) });
    expect(got.map((m) => m.payload)).toEqual(Array.from({ length: 1_000 }, (_, i) => 500 + i));
    const single = make();
    await single.outbox.enqueueMany(Array.from({ length: 1_300 }, (_, i) => ({ channel: 'a', payload: i })));
    expect(single.outbox.peekBatch({ maxCount: 1_250 }).map((m) => m.payload)).toEqual(Array.from({ length: 1_250 }, (_, i) => i));
    expect(single.outbox.peekBatch({ maxCount: 100 }).map((m) => m.payload)).toEqual(Array.from({ length: 50 }, (_, i) => 1_250 + i));
  });

  it('drops the oldest across many rows of a lane when a large message needs the room', async () => {
    const { outbox } = make({ limits: { maxCount: 100_000, maxBytes: 3_000 }, compressAboveBytes: 1 << 30, onLimit: { bytes: 'drop-oldest' } });
    await outbox.enqueueMany(Array.from({ length: 1_000 }, (_, i) => ({ channel: 'telemetry', payload: i % 10 }))); // 1 byte each... 1,000 bytes
    await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(2_498) }); // 2,500 bytes: 500 of the oldest go
    const left = all(outbox);
    expect(left).toHaveLength(501);
    expect(outbox.stats()).toMatchObject({ bytes: 3_000, drops: { bytes: 500 } });
  });
});

describe('outbox: drops that reach the drop log', () => {
  it('bytes, disk and parked-limit drops are logged like count drops', async () => {
    const cap = captureLogger('info');
    let free = 1_000_000_000;
    const { outbox, clock } = make(
      {
        limits: { maxCount: 1_000, maxBytes: 30 },
        compressAboveBytes: 1 << 30,
        dropLogIntervalMs: 0,
        maxParked: 1,
        onLimit: { count: 'drop-oldest', bytes: 'drop-oldest', disk: 'drop-oldest' },
        disk: { minFreeBytes: 100 * 1_048_576, checkIntervalMs: 1_000, freeBytes: () => free },
      },
      { logger: cap.logger },
    );
    const lines = (): string[] => cap.records().filter((r) => String(r.msg).startsWith('outbox dropped')).map((r) => String(r.msg));
    await outbox.enqueue({ channel: 'telemetry', payload: 'aaaaaaaa' }); // 10 bytes
    free = 1;
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'telemetry', payload: 'bbbbbbbb' }); // below the watermark: replaces the first
    await tick();
    expect(lines()).toEqual(['outbox dropped 1 message(s) since the last report: telemetry 1 (disk)']);
    free = 1_000_000_000;
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'telemetry', payload: 'cccccccc' });
    await outbox.enqueue({ channel: 'telemetry', payload: 'dddddddd' });
    await outbox.enqueue({ channel: 'telemetry', payload: 'eeeeeeee' }); // over 30 bytes: the oldest goes
    await tick();
    expect(lines()[1]).toBe('outbox dropped 1 message(s) since the last report: telemetry 1 (bytes)');
    const [x] = outbox.peekBatch({ maxCount: 1 });
    outbox.park([x!.id], 'bad');
    const { id } = await outbox.enqueue({ channel: 'events', payload: 1 });
    outbox.park([id], 'bad'); // the parked table holds one: the first parked goes
    await tick();
    expect(lines()[2]).toBe('outbox dropped 1 message(s) since the last report: telemetry 1 (parkedLimit)');
  });
});

describe('outbox: a tight disk', () => {
  it('keeps the WAL truncated after every write when the filesystem could not hold it growing', async () => {
    const { outbox, path } = make({ disk: { minFreeBytes: 1, checkIntervalMs: 60_000, freeBytes: () => 1_000_000 } });
    const wal = (): number => (existsSync(`${path}-wal`) ? statSync(`${path}-wal`).size : 0);
    for (let i = 0; i < 3; i++) await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(5_000) });
    expect(wal()).toBe(0);
    const roomy = make({ disk: { minFreeBytes: 1, checkIntervalMs: 60_000, freeBytes: () => 10_000_000_000 } });
    for (let i = 0; i < 3; i++) await roomy.outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(5_000) });
    expect(statSync(`${roomy.path}-wal`).size).toBeGreaterThan(0);
  });
});

describe('outbox: flush(sendFn) options', () => {
  it('sends 100 at a time by default, at most 1 MiB, only the chosen channels, and not at all once aborted', async () => {
    const { outbox } = make({ compressAboveBytes: 1 << 30 });
    await outbox.enqueueMany(Array.from({ length: 150 }, (_, i) => ({ channel: 'telemetry', payload: i })));
    await outbox.enqueue({ channel: 'events', payload: 'not this one' });
    const sizes: number[] = [];
    expect(await flushOutbox(outbox, async (b) => void sizes.push(b.length), { channels: ['telemetry'] })).toBe(150);
    expect(sizes).toEqual([100, 50]);
    await outbox.enqueueMany([0, 1, 2].map(() => ({ channel: 'telemetry', payload: 'x'.repeat(400_000) })));
    sizes.length = 0;
    expect(await flushOutbox(outbox, async (b) => void sizes.push(b.length), { channels: ['telemetry'] })).toBe(3);
    expect(sizes).toEqual([2, 1]);
    const aborted = AbortSignal.abort();
    await expect(flushOutbox(outbox, async () => undefined, { signal: aborted })).rejects.toThrow();
    expect(outbox.stats()).toMatchObject({ depth: 1, leased: 0 });
  });
});

describe('outbox: stats, age over lanes', () => {
  it('a channel\'s oldest message is the oldest of all its priorities', async () => {
    const { outbox, clock } = make();
    await outbox.enqueue({ channel: 'telemetry', payload: 'old, low', priority: 1 });
    await clock.advance(5_000);
    await outbox.enqueue({ channel: 'telemetry', payload: 'new, high', priority: 90 });
    await clock.advance(1_000);
    expect(outbox.stats().channels.telemetry!.oldestAgeMs).toBe(6_000);
  });
});

describe('outbox: expiry that cannot be written', () => {
  it('warns and still answers the peek; the expiry is done once the write works', async () => {
    const cap = captureLogger();
    const { outbox, store, clock } = make({}, { logger: cap.logger });
    await outbox.enqueue({ channel: 'telemetry', payload: 'short', ttlMs: 10 });
    await outbox.enqueue({ channel: 'telemetry', payload: 'long' });
    await clock.advance(10);
    store.db.exec("CREATE TRIGGER no_delete BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'delete blocked'); END");
    expect(() => outbox.peekBatch({ maxCount: 10, lease: false })).not.toThrow();
    expect(cap.records()).toContainEqual(expect.objectContaining({ level: 40, err: 'expiring messages failed: delete blocked', msg: 'outbox: expiring messages failed; will retry' }));
    store.db.exec('DROP TRIGGER no_delete');
    expect(outbox.peekBatch({ maxCount: 10 }).map((m) => m.payload)).toEqual(['long']);
    expect(outbox.stats()).toMatchObject({ depth: 1, expired: 1 });
    expect(cap.records()).toContainEqual(expect.objectContaining({ level: 20, count: 1, msg: 'outbox: 1 message(s) expired' }));
  });
});

describe('outbox: a full disk', () => {
  it('says how much is free in the refusal', async () => {
    const { outbox, store } = make({ compressAboveBytes: 1 << 30 });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    store.db.pragma(`max_page_count = ${store.db.pragma('page_count', { simple: true }) as number}`);
    const err = await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(50_000) }).then(
      () => undefined,
      (e: unknown) => e as Error & { code: string },
    );
    expect(err?.code).toBe('OUTBOX_DISK_FULL');
    expect(err?.message).toMatch(/^writing 1 message\(s\) failed: the disk holding .+ is full \(SQLITE_FULL, [\d.]+ (MiB|KiB|B) free\); the write was rolled back/);
  });
});

describe('outbox: an I/O error that says the disk is full', () => {
  it('is a full disk too, whatever its code', async () => {
    const { outbox, store } = make();
    for (const said of ['ENOSPC: no space left on device', 'Database or disk is full']) {
      store.db.exec(`CREATE TRIGGER full BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, '${said}'); END`);
      const err = await outbox.enqueue({ channel: 'telemetry', payload: 1 }).then(
        () => undefined,
        (e: unknown) => e as Error & { code: string },
      );
      expect(err?.code, said).toBe('OUTBOX_DISK_FULL');
      expect(err?.message).toMatch(/is full \(SQLITE_CONSTRAINT_TRIGGER, /);
      store.db.exec('DROP TRIGGER full');
    }
    await outbox.enqueue({ channel: 'telemetry', payload: 2 });
    expect(outbox.stats().depth).toBe(1);
  });
});

describe('outbox: leases and their ends', () => {
  it('a batch that fills maxBytes exactly takes the message that fills it', async () => {
    const { outbox } = make({ compressAboveBytes: 1 << 30 });
    for (let i = 0; i < 4; i++) await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(98) }); // 100 bytes each
    expect(outbox.peekBatch({ maxCount: 10, maxBytes: 300 })).toHaveLength(3);
  });

  it('nack counts only what was leased; park and expiry end a lease too', async () => {
    const { outbox, clock } = make();
    await outbox.enqueueMany([1, 2, 3].map((n) => ({ channel: 'telemetry', payload: n, ...(n === 3 ? { ttlMs: 100 } : {}) })));
    const [a, b, c] = outbox.peekBatch({ maxCount: 3 });
    expect(outbox.nack(['nope', a!.id])).toBe(1);
    expect(outbox.nack([a!.id])).toBe(0);
    outbox.park([b!.id], 'bad');
    expect(outbox.stats().leased).toBe(1);
    await clock.advance(100);
    expect(outbox.expire()).toBe(1);
    expect(outbox.stats()).toMatchObject({ leased: 0, depth: 1 });
    expect(outbox.ack([c!.id])).toBe(0);
  });

  it('readChannel tells a compressed message from a plain one, with every field', async () => {
    const { outbox, clock } = make({ compressAboveBytes: 50 });
    await outbox.enqueue({ channel: 'metrics', payload: 'y'.repeat(200), coalesceKey: 'k', ttlMs: 1_000 });
    await outbox.enqueue({ channel: 'metrics', payload: 'small' });
    const [big, small] = outbox.readChannel('metrics', 10);
    expect(big).toMatchObject({ channel: 'metrics', priority: 10, createdAt: clock.now(), expiresAt: clock.now() + 1_000, coalesceKey: 'k', payload: 'y'.repeat(200), compressed: true, leased: false });
    expect(big!.storedBytes).toBeLessThan(200);
    expect(small).toMatchObject({ payload: 'small', compressed: false, storedBytes: 7, coalesceKey: null, expiresAt: null });
  });

  it('synchronous = EXTRA is as durable as FULL', () => {
    const { outbox, store } = make();
    store.db.pragma('synchronous = EXTRA');
    expect(outbox.stats().durability).toBe('power-loss');
  });

  it('close() with nothing pending commits nothing', async () => {
    const env = make();
    await env.outbox.enqueue({ channel: 'telemetry', payload: 1 });
    const commits = env.outbox.stats().commits;
    await env.outbox.close();
    expect(env.outbox.stats().commits).toBe(commits);
  });
});

describe('outbox: the defaults', () => {
  function bare(o: { logger?: Logger; freeBytes?: (dir: string) => number } = {}) {
    const clock = new FakeClock();
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    const outbox = new Outbox({
      store,
      clock,
      ids: new IdGenerator(() => clock.now()),
      logger: o.logger ?? silentLogger(),
      limits: { maxCount: 1, maxBytes: 1 << 30 },
      ...(o.freeBytes ? { disk: { freeBytes: o.freeBytes } } : {}),
    });
    track({ store, outbox });
    return { clock, outbox };
  }

  it('a 64 MiB watermark, re-read every 5 s; leases of 5 min; drop lines at most once a minute; gzip above 1 KiB', async () => {
    let reads = 0;
    const cap = captureLogger('info');
    const { clock, outbox } = bare({ logger: cap.logger, freeBytes: () => (reads++, 10_000_000_000) });
    expect(outbox.stats().disk.minFreeBytes).toBe(64 * 1_048_576);
    await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(1_022) }); // 1,024 bytes: kept as text
    expect(reads).toBe(1);
    await clock.advance(4_999);
    await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(1_023) }); // 1,025 bytes: gzipped; drops the first
    expect(reads).toBe(1);
    await clock.advance(1);
    const [m] = outbox.peekBatch({ maxCount: 1 });
    expect(m!.compressed).toBe(true);
    // The one queued is in flight, so this is refused; the commit re-reads free space all the same.
    expect(await outbox.enqueue({ channel: 'telemetry', payload: 3 }).then(() => 'queued', () => 'refused')).toBe('refused');
    expect(reads).toBe(2);
    await clock.advance(299_999);
    expect(outbox.stats().leased).toBe(1);
    await clock.advance(1);
    expect(outbox.stats().leased).toBe(0);
    const lines = () => cap.records().filter((r) => String(r.msg).startsWith('outbox dropped'));
    expect(lines()).toHaveLength(1);
    await outbox.enqueue({ channel: 'telemetry', payload: 4 }); // a minute since the last line: logged at once
    await tick();
    expect(lines()).toHaveLength(2);
    await outbox.enqueue({ channel: 'telemetry', payload: 5 });
    await clock.advance(59_999);
    expect(lines()).toHaveLength(2);
    await clock.advance(1);
    expect(lines()).toHaveLength(3);
  });

  it('a group commit holds at most 512 messages', async () => {
    const clock = new FakeClock();
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    const sizes: number[] = [];
    const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 10_000, maxBytes: 1 << 30 }, disk: { minFreeBytes: 0 }, onCommit: (c) => sizes.push(c.messages) });
    track({ store, outbox });
    await Promise.all(Array.from({ length: 600 }, (_, i) => outbox.enqueue({ channel: 'telemetry', payload: i })));
    expect(sizes).toEqual([512, 88]);
  });
});
