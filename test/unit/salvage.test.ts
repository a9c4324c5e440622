import BetterSqlite3 from 'better-sqlite3';
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../../src/database-schema.js';
import { KEEP_QUARANTINED, pendingMarkerPath, QUARANTINE_KV_KEY, type QuarantineReport } from '../../src/store/quarantine.js';
import { Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { overwrite } from '../helpers/sqlite-pages.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Salvage of real SQLite files damaged the ways files are damaged in the field: not a database at
 * all, pages overwritten in the middle of a table, cut short, a damaged WAL.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
let now = Date.UTC(2026, 11, 5, 4, 0, 0);
const clock = { now: () => now };

const MESSAGES = 3_000;
const id = (i: number): string => `msg-${String(i).padStart(6, '0')}`;

/** A database as the agent leaves it: queued messages, settings, a target, outages. */
function populate(path: string, messages = MESSAGES): void {
  const store = Store.open({ path, logger: silentLogger(), clock });
  const insert = store.db.prepare(
    'INSERT INTO outbox (id, channel, priority, created_at, expires_at, coalesce_key, encoding, bytes, payload) VALUES (?, ?, 20, ?, NULL, NULL, 0, ?, ?)',
  );
  store.db.transaction(() => {
    for (let i = 0; i < messages; i++) {
      const payload = JSON.stringify({ stream: 's', payload: { i, pad: 'x'.repeat(200) } });
      insert.run(id(i), 'telemetry', now, Buffer.byteLength(payload), payload);
    }
  })();
  store.setKv('device.uuid', 'uuid-kept-0001');
  store.setTarget({ etag: '"t1"', version: 7, document: { version: 7, apps: {} }, source: 'cloud' });
  const outage = store.db.prepare('INSERT INTO outages (channel, started_at, ended_at, duration_ms, cause) VALUES (?, ?, ?, ?, ?)');
  for (let i = 0; i < 5; i++) outage.run('api', i * 1000, i * 1000 + 500, 500, 'timeout');
  store.close();
}

/** Leaf pages of a table, in key order (dbstat walks the b-tree). */
function leafPages(path: string, table: string): number[] {
  const db = new BetterSqlite3(path, { readonly: true });
  const pages = (db.prepare("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path").all(table) as { pageno: number }[]).map((r) => r.pageno);
  db.close();
  return pages;
}


/** Starts as after a crash: no clean-close marker, so the file is checked. */
function reopen(path: string, logger = silentLogger()): Store {
  rmSync(`${path}.clean`, { force: true });
  return Store.open({ path, logger, clock });
}

const queuedIds = (store: Store): string[] => (store.db.prepare('SELECT id FROM outbox ORDER BY seq').all() as { id: string }[]).map((r) => r.id);

describe('salvage of a corrupt database', () => {
  it('a garbage file: quarantined, nothing to salvage, says so, starts on an empty database', () => {
    const path = join(dirs.make(), 'agent.db');
    writeFileSync(path, Buffer.alloc(16384, 'this is not a database '));
    const log = captureLogger();
    const store = reopen(path, log.logger);
    const q = store.quarantine!;
    expect(q.quarantinedTo).toMatch(/agent\.db\.corrupt-2026-12-05T04-00-00-000Z$/);
    expect(readFileSync(q.quarantinedTo, 'utf8')).toContain('this is not a database');
    expect(q.salvageError).toMatch(/cannot be read as a database/);
    expect(q.recovered).toBe(0);
    expect(q.unknownLoss).toContain('outbox');
    expect(store.databaseHealth().quarantine?.quarantinedTo).toBe(q.quarantinedTo);
    store.setKv('k', 1);
    expect(store.getKv('k')).toBe(1);
    const rec = log.records().find((r) => r.level === 50);
    expect(String(rec?.msg)).toContain(q.quarantinedTo);
    expect(existsSync(pendingMarkerPath(path))).toBe(false);
    store.close();
  });

  it('pages overwritten in the middle of the outbox: the rest of the queue, in order, with its ids; the loss counted', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path);
    const leaves = leafPages(path, 'outbox');
    expect(leaves.length).toBeGreaterThan(50);
    const mid = Math.floor(leaves.length / 2);
    overwrite(path, leaves.slice(mid, mid + 3));
    const store = reopen(path);
    const q = store.quarantine!;
    expect(q).toBeDefined();
    expect(q.salvageError).toBeNull();
    const ids = queuedIds(store);
    // Three leaf pages of ~15 rows each are lost; everything else is there, first to last.
    expect(ids.length).toBeGreaterThan(MESSAGES - 100);
    expect(ids.length).toBeLessThan(MESSAGES);
    expect(ids[0]).toBe(id(0));
    expect(ids.at(-1)).toBe(id(MESSAGES - 1));
    expect([...ids].sort()).toEqual(ids);
    expect(q.tables.outbox).toMatchObject({ recovered: ids.length, lost: MESSAGES - ids.length });
    expect(q.tables.outbox!.errors).toBeGreaterThan(0);
    // The other tables came through whole.
    expect(store.getKv('device.uuid')).toBe('uuid-kept-0001');
    expect(store.getTarget()).toMatchObject({ version: 7, etag: '"t1"' });
    expect(q.tables.outages).toMatchObject({ recovered: 5, lost: 0 });
    // Payloads read back intact.
    const row = store.db.prepare('SELECT payload FROM outbox WHERE id = ?').get(id(0)) as { payload: string };
    expect(JSON.parse(row.payload)).toMatchObject({ payload: { i: 0 } });
    // The report is kept in the database for later starts.
    store.close();
    const later = Store.open({ path, logger: silentLogger(), clock });
    expect(later.quarantine).toBeUndefined();
    expect(later.databaseHealth().quarantine).toMatchObject({ quarantinedTo: q.quarantinedTo, recovered: q.recovered });
    expect(later.getKv<QuarantineReport>(QUARANTINE_KV_KEY)?.tables.outbox?.recovered).toBe(ids.length);
    later.close();
  });

  it('a truncated file: what lies before the cut is salvaged', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path);
    truncateSync(path, Math.floor(statSync(path).size * 0.6));
    const store = reopen(path);
    const q = store.quarantine!;
    expect(q).toBeDefined();
    const ids = queuedIds(store);
    expect(ids.length).toBeGreaterThan(0);
    expect(ids[0]).toBe(id(0));
    expect(q.tables.outbox!.recovered).toBe(ids.length);
    expect(q.recovered + q.lost).toBeGreaterThan(0);
    store.close();
  });

  it('a damaged WAL: the start keeps every transaction before the damage', () => {
    const dir = dirs.make();
    const live = join(dir, 'live.db');
    const path = join(dir, 'agent.db');
    populate(live, 100);
    // A crash image: rows committed in the WAL (not yet checkpointed), files copied while open.
    const db = new BetterSqlite3(live);
    db.pragma('wal_autocheckpoint = 0');
    const insert = db.prepare("INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, 'telemetry', 20, 0, 0, 2, '{}')");
    for (let t = 0; t < 20; t++) db.transaction(() => { for (let i = 0; i < 50; i++) insert.run(id(100 + t * 50 + i)); })();
    for (const s of ['', '-wal']) copyFileSync(live + s, path + s);
    db.close();
    // Damage the second half of the WAL's frames (the header and the first transactions stay).
    const wal = `${path}-wal`;
    const size = statSync(wal).size;
    const fd = openSync(wal, 'r+');
    writeSync(fd, Buffer.alloc(8192, 0x5a), 0, 8192, Math.floor(size / 2));
    closeSync(fd);
    const store = reopen(path);
    const ids = queuedIds(store);
    expect(ids.slice(0, 100)).toEqual(Array.from({ length: 100 }, (_, i) => id(i)));
    // A prefix of the WAL's transactions survives, whole transactions only.
    expect(ids.length).toBeGreaterThan(100);
    expect(ids.length).toBeLessThan(1100);
    expect((ids.length - 100) % 50).toBe(0);
    store.close();
  });

  it('damaged pages with recent rows still in the WAL: the salvage reads both', () => {
    const dir = dirs.make();
    const live = join(dir, 'live.db');
    const path = join(dir, 'agent.db');
    populate(live);
    const leaves = leafPages(live, 'outbox');
    const db = new BetterSqlite3(live);
    db.pragma('wal_autocheckpoint = 0');
    const insert = db.prepare("INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, 'telemetry', 20, 0, 0, 2, '{}')");
    db.transaction(() => { for (let i = 0; i < 10; i++) insert.run(`wal-${i}`); })();
    for (const s of ['', '-wal', '-shm']) copyFileSync(live + s, path + s);
    db.close();
    overwrite(path, leaves.slice(5, 7));
    const store = reopen(path);
    expect(store.quarantine).toBeDefined();
    const ids = queuedIds(store);
    expect(ids.slice(-10)).toEqual(Array.from({ length: 10 }, (_, i) => `wal-${i}`));
    expect(store.quarantine!.tables.outbox!.lost).toBeGreaterThan(0);
    // The quarantined copy keeps its WAL beside it, untouched, for a person to look at.
    expect(existsSync(`${store.quarantine!.quarantinedTo}-wal`)).toBe(true);
    store.close();
  });

  it('a salvage cut short by a crash is redone from the quarantined copy at the next start', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path);
    overwrite(path, leafPages(path, 'outbox').slice(10, 11));
    const first = reopen(path);
    const { quarantinedTo } = first.quarantine!;
    const recovered = first.quarantine!.recovered;
    first.db.close();
    // As if killed half-way: the marker is back and the fresh database lost its rows.
    writeFileSync(pendingMarkerPath(path), JSON.stringify({ reason: 'r', at: new Date(now).toISOString(), quarantinedTo }));
    rmSync(path);
    const second = Store.open({ path, logger: silentLogger(), clock });
    expect(second.quarantine).toMatchObject({ quarantinedTo, recovered });
    expect(readdirSync(join(path, '..')).filter((f) => f.includes('.corrupt-') && !f.endsWith('-wal') && !f.endsWith('-shm'))).toHaveLength(1);
    second.close();
  });

  it(`keeps the newest ${KEEP_QUARANTINED} quarantined copies and deletes older ones, logging it`, () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    const log = captureLogger();
    for (let i = 0; i < KEEP_QUARANTINED + 2; i++) {
      now += 60_000;
      writeFileSync(path, `garbage ${i} `.repeat(1000));
      rmSync(`${path}.clean`, { force: true });
      Store.open({ path, logger: log.logger, clock }).close();
    }
    const kept = readdirSync(dir).filter((f) => f.startsWith('agent.db.corrupt-')).sort();
    expect(kept).toHaveLength(KEEP_QUARANTINED);
    expect(readFileSync(join(dir, kept.at(-1)!), 'utf8')).toContain(`garbage ${KEEP_QUARANTINED + 1} `);
    expect(log.records().filter((r) => String(r.msg).startsWith('deleted the quarantined database'))).toHaveLength(2);
  });

  it('the background check finds damage the fast check at open does not; the next start salvages', async () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path);
    const leaves = leafPages(path, 'outbox');
    overwrite(path, leaves.slice(20, 22));
    rmSync(`${path}.clean`, { force: true });
    const store = Store.open({ path, logger: silentLogger(), clock, integrityCheck: 'background' });
    expect(store.quarantine).toBeUndefined();
    expect(store.integrityStatus().state).toBe('pending');
    store.startIntegrityCheck();
    const r = await store.integrityResult();
    expect(r.state).toBe('failed');
    expect(store.databaseHealth().salvagePending).toMatch(/integrity check/);
    store.close();
    const next = Store.open({ path, logger: silentLogger(), clock, integrityCheck: 'background' });
    expect(next.quarantine?.reason).toMatch(/integrity check/);
    expect(next.quarantine!.tables.outbox!.recovered).toBeGreaterThan(MESSAGES - 100);
    expect(next.databaseHealth().salvagePending).toBeNull();
    next.close();
  });

  it('a sound database passes the background check and may vouch for itself after a clean close', async () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path, 100);
    rmSync(`${path}.clean`, { force: true });
    const store = Store.open({ path, logger: silentLogger(), clock, integrityCheck: 'background' });
    store.startIntegrityCheck();
    expect((await store.integrityResult()).state).toBe('ok');
    store.close();
    expect(existsSync(`${path}.clean`)).toBe(true);
  });

  it('damage a clean close vouched for (size and mtime unchanged): an error in use starts the check', async () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path);
    overwrite(path, leafPages(path, 'outbox').slice(30, 32));
    // Decay the marker cannot see: it still matches the file (its size and mtime). (The read-only
    // look at the pages left an empty WAL behind.)
    for (const suffix of ['-wal', '-shm']) rmSync(path + suffix, { force: true });
    const st = statSync(path);
    writeFileSync(`${path}.clean`, `${st.size}:${st.mtimeMs}`);
    const store = Store.open({ path, logger: silentLogger(), clock, integrityCheck: 'background' });
    expect(store.integrityStatus().state).toBe('skipped');
    store.startIntegrityCheck(); // nothing owed: the clean close vouched for the file
    expect(store.integrityStatus().state).toBe('skipped');
    const failures: string[] = [];
    store.onIntegrityFailure((r) => failures.push(r.state));
    store.suspectCorruption('database disk image is malformed');
    expect((await store.integrityResult()).state).toBe('failed');
    expect(failures).toEqual(['failed']);
    expect(existsSync(pendingMarkerPath(path))).toBe(true);
    store.close();
    expect(existsSync(`${path}.clean`)).toBe(false);
  });

  it('a salvage that fails part-way (a write error) still starts, on an empty database, and says why', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path);
    overwrite(path, leafPages(path, 'outbox').slice(10, 12));
    // Every write to kv fails with an error that is not a refused row (as a full disk would).
    const failing = [...MIGRATIONS, { version: 999, name: 'kv writes fail', up: (db: BetterSqlite3.Database) => db.exec('CREATE TRIGGER kv_fails BEFORE INSERT ON kv BEGIN SELECT abs(-9223372036854775808); END') }];
    const log = captureLogger();
    rmSync(`${path}.clean`, { force: true });
    const store = Store.open({ path, logger: log.logger, clock, migrations: failing });
    expect(store.quarantine?.salvageError).toMatch(/salvage failed, started on an empty database: integer overflow/);
    expect(queuedIds(store)).toEqual([]);
    expect(existsSync(pendingMarkerPath(path))).toBe(false);
    expect(log.records().some((r) => r.level === 50 && String(r.msg).includes('salvage failed'))).toBe(true);
    store.close();
  });
});
