import { digestOf } from '../../src/outbox/ledger.js';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CounterMirror, readCounterMirror, restoreCounters } from '../../src/outbox/counter-mirror.js';
import { Outbox } from '../../src/outbox/outbox.js';
import { countCorruptLosses } from '../../src/outbox/salvage-losses.js';
import { IdGenerator } from '../../src/util/ids.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/** The outbox's counters kept outside the database, so a corrupt database does not erase the drops it had counted. */

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

function open(dir: string, maxCount = 100) {
  const clock = new FakeClock();
  const store = Store.open({ path: join(dir, 'agent.db'), logger: silentLogger(), clock });
  const outbox = new Outbox({
    store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(),
    limits: { maxCount, maxBytes: 64 * 1_048_576 }, onLimit: { count: 'drop-oldest' },
    disk: { minFreeBytes: 0 }, groupCommit: { windowMs: 0 },
  });
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await outbox.close();
    store.close();
  };
  cleanup(close);
  return { clock, store, outbox, close, path: join(dir, 'outbox-counters.json') };
}

/** The copy's count-limit drops of telemetry. */
function countOf(path: string): number | undefined {
  const copy = readCounterMirror(path);
  return copy.ok ? copy.rows.find((r) => r.channel === 'telemetry' && r.counter === 'count')?.value : undefined;
}

const fill = (outbox: Outbox, n: number, channel = 'telemetry') => outbox.enqueueMany(Array.from({ length: n }, (_, i) => ({ channel, payload: { i } })));

describe('the copy of the outbox counters', () => {
  it('holds every counter of the database, written 0600, and only again when one changed', async () => {
    const t = open(dirs.make(), 10);
    await fill(t.outbox, 15); // 5 dropped, oldest first
    const mirror = new CounterMirror({ db: t.store.db, path: t.path, clock: t.clock, logger: silentLogger() });
    expect(mirror.sync()).toBe(true);
    expect(statSync(t.path).mode & 0o777).toBe(0o600);
    const copy = readCounterMirror(t.path);
    expect(copy.ok && copy.rows).toContainEqual({ channel: 'telemetry', counter: 'count', value: 5 });
    expect(mirror.sync()).toBe(false); // nothing changed: no write, no flash wear
    await fill(t.outbox, 2);
    expect(mirror.sync()).toBe(true);
    const again = readCounterMirror(t.path);
    expect(again.ok && again.rows).toContainEqual({ channel: 'telemetry', counter: 'count', value: 7 });
  });

  it('follows the database every interval and once more when stopped', async () => {
    const t = open(dirs.make(), 10);
    const mirror = new CounterMirror({ db: t.store.db, path: t.path, clock: t.clock, logger: silentLogger(), intervalMs: 10_000 });
    const stop = new AbortController();
    const done = mirror.run(stop.signal);
    await t.clock.advance(1);
    expect(readCounterMirror(t.path)).toEqual({ ok: true, rows: [] }); // written at start, from a fresh database
    await fill(t.outbox, 12);
    await t.clock.advance(5_000);
    expect(readCounterMirror(t.path)).toEqual({ ok: true, rows: [] });
    await t.clock.advance(5_000);
    expect(countOf(t.path)).toBe(2);
    await fill(t.outbox, 1);
    stop.abort();
    await done;
    expect(countOf(t.path)).toBe(3);
  });

  it('a write that fails (a full disk, a missing dir) is said once, keeps the old copy, and is retried', async () => {
    const t = open(dirs.make(), 10);
    // A file where the copy's directory should be: every write fails (ENOTDIR), as on a full disk.
    const dir = join(dirs.make(), 'data');
    writeFileSync(dir, '');
    const path = join(dir, 'outbox-counters.json');
    const log = captureLogger();
    const mirror = new CounterMirror({ db: t.store.db, path, clock: t.clock, logger: log.logger });
    await fill(t.outbox, 11);
    expect(mirror.sync()).toBe(false);
    await fill(t.outbox, 1);
    expect(mirror.sync()).toBe(false);
    const warnings = log.records().filter((r) => r.level === 40);
    expect(warnings).toHaveLength(1);
    expect(String(warnings[0]!.msg)).toMatch(/^could not write the copy of the outbox counters to .*outbox-counters\.json: ENOTDIR/);
    rmSync(dir);
    mkdirSync(dir);
    expect(mirror.sync()).toBe(true);
    const copy = readCounterMirror(path);
    expect(copy.ok && copy.rows).toContainEqual({ channel: 'telemetry', counter: 'count', value: 2 });
  });

  it('says again after a write succeeded in between; a database it cannot read is said too, and at a stop after close nothing', async () => {
    const t = open(dirs.make(), 10);
    const dir = join(dirs.make(), 'data');
    writeFileSync(dir, '');
    const log = captureLogger();
    const mirror = new CounterMirror({ db: t.store.db, path: join(dir, 'outbox-counters.json'), clock: t.clock, logger: log.logger });
    await fill(t.outbox, 11);
    expect(mirror.sync()).toBe(false);
    rmSync(dir);
    mkdirSync(dir);
    expect(mirror.sync()).toBe(true);
    rmSync(dir, { recursive: true });
    writeFileSync(dir, '');
    await fill(t.outbox, 1);
    expect(mirror.sync()).toBe(false);
    const other = new CounterMirror({ db: t.store.db, path: join(dirs.make(), 'c.json'), clock: t.clock, logger: log.logger });
    expect(other.sync()).toBe(true);
    // Stopped after the database closed: no last write, nothing to say.
    const ctl = new AbortController();
    const running = other.run(ctl.signal);
    await t.close();
    ctl.abort();
    await running;
    const warnings = (): unknown[][] => log.records().filter((r) => r.level === 40).map((r) => [r.file, String(r.msg).replace(/: .*$/, '')]);
    await new Promise((r) => setImmediate(r));
    expect(warnings()).toHaveLength(2);
    // Asked anyway: the counters cannot be read.
    expect(other.sync()).toBe(false);
    await new Promise((r) => setImmediate(r));
    expect(warnings()).toEqual([
      [join(dir, 'outbox-counters.json'), `could not write the copy of the outbox counters to ${join(dir, 'outbox-counters.json')}`],
      [join(dir, 'outbox-counters.json'), `could not write the copy of the outbox counters to ${join(dir, 'outbox-counters.json')}`],
      [expect.stringContaining('c.json'), 'could not read the outbox counters'],
    ]);
  });

  it('a copy that is missing, not JSON or not its shape is refused with the reason; stray rows are skipped', () => {
    const dir = dirs.make();
    const path = join(dir, 'c.json');
    expect(readCounterMirror(path)).toEqual({ ok: false, why: 'there is no copy' });
    writeFileSync(path, '{"format":1,');
    expect(readCounterMirror(path)).toEqual({ ok: false, why: 'the copy is not JSON' });
    for (const bad of ['null', '[]', '{"format":2,"counters":[]}', '{"format":1,"counters":{}}']) {
      writeFileSync(path, bad);
      expect(readCounterMirror(path)).toMatchObject({ ok: false, why: expect.stringContaining('expected fields') });
    }
    writeFileSync(path, JSON.stringify({ format: 1, counters: [['t', 'count', 3], ['t', 'bytes', -1], ['t', 'disk', 1.5], [1, 'count', 2], ['t', 'x'], 'row', ['e', 'corrupt', 4], ['e', 'ttl', 0], ['e', 'x', 1, 'extra'], { length: 3 }] }));
    expect(readCounterMirror(path)).toEqual({
      ok: true,
      rows: [{ channel: 't', counter: 'count', value: 3 }, { channel: 'e', counter: 'corrupt', value: 4 }, { channel: 'e', counter: 'ttl', value: 0 }],
    });
  });
});

describe('after a salvage that lost the counters', () => {
  it('each counter is raised to the copy where the copy holds more, then the salvage adds its own losses', async () => {
    const dir = dirs.make();
    const before = open(dir, 10);
    await fill(before.outbox, 14); // telemetry: 4 dropped for the count
    countCorruptLosses(before.store.db, { tables: { outbox: { lost: 2 } }, lostRows: { outbox: { rows: [{ values: { channel: 'events' } }, { values: { channel: 'events' } }] } } }, silentLogger());
    new CounterMirror({ db: before.store.db, path: before.path, clock: before.clock, logger: silentLogger() }).sync();
    // The damage took the counters' page: the salvaged database has none of them, one counter only partly.
    before.store.db.exec("DELETE FROM outbox_counters WHERE NOT (channel = 'telemetry' AND counter = 'count')");
    before.store.db.prepare("UPDATE outbox_counters SET value = 1 WHERE channel = 'telemetry' AND counter = 'count'").run();
    const log = captureLogger();
    // telemetry's accepted and count (1 → 4), its drop log's mark, events' corrupt losses.
    expect(restoreCounters(before.store.db, before.path, log.logger)).toBe(4);
    expect(restoreCounters(before.store.db, before.path, log.logger)).toBe(0); // a salvage redone: nothing twice
    expect(log.records().map((r) => r.msg)).toEqual([`outbox: 4 counters lost with the damaged database were taken back from ${before.path}`]);
    countCorruptLosses(before.store.db, { tables: { outbox: { lost: 1 } }, lostRows: { outbox: { rows: [{ values: { channel: 'telemetry' } }] } } }, silentLogger());
    await before.close();

    const after = open(dir, 10);
    const stats = after.outbox.stats();
    expect(stats.channels['telemetry']).toMatchObject({ accepted: 14, drops: { count: 4, corrupt: 1 } });
    expect(stats.channels['events']).toMatchObject({ drops: { corrupt: 2 } });
  });

  it('takes the ledger digest back with the delivered count it sums, and only where that count is the database\'s', async () => {
    const dir = dirs.make();
    const t = open(dir);
    await t.outbox.enqueueMany([1, 2, 3].map((i) => ({ channel: 'events', payload: i })));
    const sent = t.outbox.peekBatch({ maxCount: 2 }).map((m) => m.id);
    t.outbox.ack(sent);
    new CounterMirror({ db: t.store.db, path: t.path, clock: t.clock, logger: silentLogger() }).sync();
    const digestRow = () => (t.store.db.prepare("SELECT value FROM outbox_counters WHERE channel = 'events' AND counter = 'digest'").get() as { value: number } | undefined)?.value;
    const want = digestOf(sent);
    // Both rows lost: delivered comes back from the copy, and its digest with it.
    t.store.db.exec("DELETE FROM outbox_counters WHERE counter IN ('delivered', 'digest')");
    restoreCounters(t.store.db, t.path, silentLogger());
    expect(digestRow()).toBe(want);
    // The digest row alone lost: the copy's delivered is the database's, so its digest is right.
    t.store.db.exec("DELETE FROM outbox_counters WHERE counter = 'digest'");
    restoreCounters(t.store.db, t.path, silentLogger());
    expect(digestRow()).toBe(want);
    // The database counts more delivered than the copy did: the copy's digest would be wrong, it is left.
    t.store.db.exec("UPDATE outbox_counters SET value = 5 WHERE counter = 'delivered'; DELETE FROM outbox_counters WHERE counter = 'digest'");
    restoreCounters(t.store.db, t.path, silentLogger());
    expect(digestRow()).toBeUndefined();
    await t.close();
  });

  it('tells counters apart by channel and counter, however their names run together, and says how many it raised', () => {
    const t = open(dirs.make());
    t.store.db.prepare("INSERT INTO outbox_counters (channel, counter, value) VALUES ('a', 'bc', 9)").run();
    writeFileSync(t.path, JSON.stringify({ format: 1, counters: [['a', 'bc', 5], ['ab', 'c', 7]] }));
    const log = captureLogger();
    expect(restoreCounters(t.store.db, t.path, log.logger)).toBe(1);
    expect(t.store.db.prepare('SELECT channel, counter, value FROM outbox_counters ORDER BY channel').all()).toEqual([
      { channel: 'a', counter: 'bc', value: 9 },
      { channel: 'ab', counter: 'c', value: 7 },
    ]);
    expect(log.records().map((r) => [r.file, r.raised])).toEqual([[t.path, 1]]);
  });

  it('a counter the database holds higher than the copy (counted after the last copy) is kept', async () => {
    const t = open(dirs.make(), 10);
    await fill(t.outbox, 12);
    new CounterMirror({ db: t.store.db, path: t.path, clock: t.clock, logger: silentLogger() }).sync();
    await fill(t.outbox, 3);
    expect(restoreCounters(t.store.db, t.path, silentLogger())).toBe(0);
    expect(t.outbox.stats().channels['telemetry']).toMatchObject({ drops: { count: 5 } });
  });

  it('without a usable copy nothing is raised, and the operator is told drops may be missing', () => {
    const t = open(dirs.make());
    const log = captureLogger();
    expect(existsSync(t.path)).toBe(false);
    expect(restoreCounters(t.store.db, t.path, log.logger)).toBe(0);
    writeFileSync(t.path, 'garbage');
    expect(restoreCounters(t.store.db, t.path, log.logger)).toBe(0);
    expect(log.records().map((r) => [r.level, r.msg])).toEqual([
      [40, `outbox: the counters could not be taken back from ${t.path} (there is no copy); drops counted before the damage may be missing`],
      [40, `outbox: the counters could not be taken back from ${t.path} (the copy is not JSON); drops counted before the damage may be missing`],
    ]);
    expect(readFileSync(t.path, 'utf8')).toBe('garbage');
  });
});
