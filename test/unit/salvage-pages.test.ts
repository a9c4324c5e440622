import BetterSqlite3 from 'better-sqlite3';
import { closeSync, copyFileSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { PageFile, readWal } from '../../src/store/page-file.js';
import { salvageInto, type SalvageReport } from '../../src/store/salvage.js';
import { MIGRATIONS, Store } from '../helpers/store.js';
import { silentLogger } from '../helpers/logger.js';
import { overwrite, pages, type PageInfo } from '../helpers/sqlite-pages.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Salvage below SQLite: rows under a damaged interior page, behind a damaged schema, only in the WAL,
 * with overflow pages; the loss named row by row through the indexes; freed pages never resurrected.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 11, 5, 4, 0, 0) };
const CHANNELS = ['telemetry', 'events', 'state'];
const id = (i: number): string => `m-${String(i).padStart(6, '0')}`;

interface Msg {
  id: string;
  channel: string;
  payload: string | Buffer;
}

const smallMsg = (i: number): Msg => ({ id: id(i), channel: CHANNELS[i % 3]!, payload: `{"i":${i}}` });
/** ~10 rows a leaf: a two-level outbox tree with few rows. */
const paddedMsg = (i: number): Msg => ({ ...smallMsg(i), payload: JSON.stringify({ i, pad: 'p'.repeat(i % 50 + 300) }) });

/** A database as the agent leaves it, with `count` queued messages made by `make`. */
function populate(path: string, count: number, make: (i: number) => Msg = smallMsg, migrations = MIGRATIONS): void {
  const store = Store.open({ path, logger: silentLogger(), clock, migrations });
  const insert = store.db.prepare('INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, ?, 20, 0, 0, ?, ?)');
  store.db.transaction(() => {
    for (let i = 0; i < count; i++) {
      const m = make(i);
      insert.run(m.id, m.channel, Buffer.byteLength(m.payload), m.payload);
    }
  })();
  store.setKv('device.uuid', 'uuid-kept-0001');
  store.close();
}




/** A schema larger than one page: its root (page 1) becomes an interior page with leaves. */
function bloatSchema(path: string): void {
  const db = new BetterSqlite3(path);
  for (let t = 0; t < 40; t++) db.exec(`CREATE TABLE extra_${t} (a TEXT, b TEXT, c TEXT /* ${'x'.repeat(200)} */) STRICT`);
  db.close();
}

/** Salvages `damaged` into a fresh, migrated database; returns the report and the fresh store's rows. */
function salvage(damaged: string): { report: SalvageReport; ids: string[]; store: Store } {
  const store = Store.open({ path: join(dirs.make(), 'fresh.db'), logger: silentLogger(), clock });
  const report = salvageInto(store.db, damaged);
  const ids = (store.db.prepare('SELECT id FROM outbox ORDER BY seq').all() as { id: string }[]).map((r) => r.id);
  return { report, ids, store };
}

describe('page-level salvage', () => {
  it('an interior page of the outbox overwritten: every row on intact leaves recovered, the lost ones named with their channels', () => {
    const path = join(dirs.make(), 'agent.db');
    const N = 8_000;
    populate(path, N, paddedMsg);
    const tree = pages(path, 'outbox');
    const interior = tree.filter((p) => p.pagetype === 'internal' && p.path !== '/');
    expect(interior.length).toBeGreaterThan(0);
    // One non-root interior page and one leaf under another interior page (its rows are on the overwritten page).
    const hit = interior[0]!;
    const leaves = tree.filter((p) => p.pagetype === 'leaf');
    const leafIdx = leaves.findIndex((p) => !p.path.startsWith(hit.path));
    const leaf = leaves[leafIdx + 5]!;
    const before = leaves.slice(0, leafIdx + 5).reduce((n, p) => n + p.ncell, 0);
    const onLeaf = Array.from({ length: leaf.ncell }, (_, k) => before + k);
    overwrite(path, [hit.pageno, leaf.pageno]);

    const { report, ids, store } = salvage(path);
    const lostIds = onLeaf.map(id);
    expect(ids).toEqual(Array.from({ length: N }, (_, i) => id(i)).filter((x) => !lostIds.includes(x)));
    expect(report.tables.outbox).toMatchObject({ recovered: N - onLeaf.length, lost: onLeaf.length });
    expect(report.pageScan!.orphanPages).toBeGreaterThan(10);
    expect(report.lostRows.outbox!.rows.map((r) => r.values.id)).toEqual(lostIds);
    expect(report.lostRows.outbox!.rows.map((r) => r.values.channel)).toEqual(onLeaf.map((i) => CHANNELS[i % 3]));
    expect(report.lostRows.outbox!.rows[0]).toMatchObject({ rowid: onLeaf[0]! + 1, values: { priority: 20, seq: onLeaf[0]! + 1, bytes: expect.any(Number) } });
    expect(store.getKv('device.uuid')).toBe('uuid-kept-0001');
    store.close();
  });

  it('rows queued before migration 9 added columns (shorter records) are recovered by the page scan too', () => {
    const path = join(dirs.make(), 'agent.db');
    const N = 8_000;
    populate(path, N, paddedMsg, MIGRATIONS.filter((m) => m.version < 9));
    Store.open({ path, logger: silentLogger(), clock }).close(); // migration 9 runs: the rows keep their 10 fields
    const tree = pages(path, 'outbox');
    const hit = tree.filter((p) => p.pagetype === 'internal' && p.path !== '/')[0]!;
    overwrite(path, [hit.pageno]);
    const { report, ids, store } = salvage(path);
    expect(ids).toHaveLength(N);
    expect(report.tables.outbox).toMatchObject({ recovered: N, lost: 0 });
    expect(store.db.prepare('SELECT count(*) AS n FROM outbox WHERE boot IS NULL AND mono IS NULL').get()).toEqual({ n: N });
    store.close();
  });

  it('count(*) fails (the table root and the outbox_id index damaged): another index counts the rows and names the lost ones', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path, 3_000);
    const tree = pages(path, 'outbox');
    const leaves = tree.filter((p) => p.pagetype === 'leaf');
    const before = leaves.slice(0, 7).reduce((n, p) => n + p.ncell, 0);
    const onLeaf = Array.from({ length: leaves[7]!.ncell }, (_, k) => before + k);
    overwrite(path, [tree.find((p) => p.path === '/')!.pageno, pages(path, 'outbox_id').find((p) => p.path === '/')!.pageno, leaves[7]!.pageno]);
    const db = new BetterSqlite3(path, { readonly: true });
    expect(() => db.prepare('SELECT count(*) FROM outbox').get()).toThrow();
    db.close();
    const { report, ids, store } = salvage(path);
    expect(ids).toHaveLength(3_000 - onLeaf.length);
    expect(report.tables.outbox).toMatchObject({ recovered: 3_000 - onLeaf.length, lost: onLeaf.length });
    // outbox_lane holds channel, priority, seq and bytes; the id was only in the damaged outbox_id.
    expect(report.lostRows.outbox!.rows.map((r) => [r.rowid, r.values.channel, r.values.seq])).toEqual(onLeaf.map((i) => [i + 1, CHANNELS[i % 3], i + 1]));
    store.close();
  });

  it('lostRows is not part of the per-table report the quarantine persists', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path, 3_000);
    overwrite(path, [pages(path, 'outbox').find((p) => p.pagetype === 'leaf' && p.path !== '/')!.pageno]);
    const { report, store } = salvage(path);
    expect(report.lostRows.outbox!.rows.length).toBe(report.tables.outbox!.lost);
    expect(JSON.stringify(report.tables)).not.toContain('m-0');
    store.close();
  });

  for (const target of ['page 1 (the header and the schema root)', 'the schema leaf naming the outbox']) {
    it(`a damaged sqlite_schema, ${target}: SQLite cannot read the file, the rows are still recovered`, () => {
      const path = join(dirs.make(), 'agent.db');
      populate(path, 3_000);
      bloatSchema(path);
      const schema = pages(path, 'sqlite_schema');
      expect(schema.length).toBeGreaterThan(1);
      const page = target.startsWith('page 1') ? 1 : schema.find((p) => p.pagetype === 'leaf')!.pageno;
      overwrite(path, [page]);
      const { report, ids, store } = salvage(path);
      expect(ids).toEqual(Array.from({ length: 3_000 }, (_, i) => id(i)));
      expect(report.error).toBeUndefined();
      expect(report.tables.outbox!.recovered).toBe(3_000);
      expect(store.getKv('device.uuid')).toBe('uuid-kept-0001');
      store.close();
    });
  }

  it('SQLite cannot open the file (a schema leaf damaged) and an outbox leaf lost: the indexes, read page by page, count and name the lost rows', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path, 3_000);
    bloatSchema(path);
    const schemaLeaves = pages(path, 'sqlite_schema').filter((p) => p.pagetype === 'leaf');
    const leaves = pages(path, 'outbox').filter((p) => p.pagetype === 'leaf');
    const before = leaves.slice(0, 10).reduce((n, p) => n + p.ncell, 0);
    const onLeaf = Array.from({ length: leaves[10]!.ncell }, (_, k) => before + k);
    // The last schema leaf holds only the extra tables: the outbox's entries and its indexes' survive.
    overwrite(path, [schemaLeaves.at(-1)!.pageno, leaves[10]!.pageno]);
    const { report, ids, store } = salvage(path);
    expect(report.pageScan?.tables).toContain('outbox');
    expect(ids).toEqual(Array.from({ length: 3_000 }, (_, i) => i).filter((i) => !onLeaf.includes(i)).map(id));
    expect(report.tables.outbox).toMatchObject({ recovered: 3_000 - onLeaf.length, lost: onLeaf.length });
    expect(report.lostRows.outbox!.rows.map((r) => [r.values.id, r.values.channel])).toEqual(onLeaf.map((i) => [id(i), CHANNELS[i % 3]]));
    store.close();
  });

  it('SQLite cannot open the file: the damaged CREATE of a table (not a trigger of its name) is used for its indexes (a UNIQUE the fresh one lacks names the lost rows), and a column the damaged table lacks gets its default', () => {
    const dir = dirs.make();
    const path = join(dir, 'damaged.db');
    const db = new BetterSqlite3(path);
    // A trigger may share a table's name (not an index nor a view): it is not the table's CREATE.
    db.exec('CREATE TABLE u (x); CREATE TRIGGER t AFTER INSERT ON u BEGIN SELECT 1; END');
    db.exec('CREATE TABLE t (v TEXT NOT NULL, code TEXT UNIQUE)');
    db.transaction(() => {
      for (let i = 1; i <= 3_000; i++) db.prepare('INSERT INTO t (rowid, v, code) VALUES (?, ?, ?)').run(i, `v${i}`.padEnd(40, '.'), `c${i}`);
    })();
    db.close();
    bloatSchema(path);
    const leaves = pages(path, 't').filter((p) => p.pagetype === 'leaf');
    const before = leaves.slice(0, 4).reduce((n, p) => n + p.ncell, 0);
    const lost = Array.from({ length: leaves[4]!.ncell }, (_, k) => before + 1 + k);
    // The last schema leaf holds only the extra tables: t's entry and its UNIQUE's survive.
    overwrite(path, [pages(path, 'sqlite_schema').filter((p) => p.pagetype === 'leaf').at(-1)!.pageno, leaves[4]!.pageno]);
    const fresh = new BetterSqlite3(join(dir, 'fresh.db'));
    // A newer schema: no UNIQUE on code, a column added since.
    fresh.exec("CREATE TABLE t (v TEXT NOT NULL, code TEXT, added TEXT NOT NULL DEFAULT 'd')");
    const report = salvageInto(fresh, path);
    const rows = fresh.prepare('SELECT rowid AS r, v, code, added FROM t ORDER BY rowid').all() as { r: number; v: string; code: string; added: string }[];
    expect(rows.map((r) => r.r)).toEqual(Array.from({ length: 3_000 }, (_, i) => i + 1).filter((i) => !lost.includes(i)));
    expect(rows[0]).toEqual({ r: 1, v: 'v1'.padEnd(40, '.'), code: 'c1', added: 'd' });
    expect(report.tables.t).toMatchObject({ recovered: 3_000 - lost.length, lost: lost.length });
    expect(report.lostRows.t!.rows.map((r) => [r.rowid, r.values.code])).toEqual(lost.map((i) => [i, `c${i}`]));
    fresh.close();
  });

  it('rows only in the WAL (not checkpointed), the schema damaged in the main file: the WAL rows recovered by the scan', () => {
    const dir = dirs.make();
    const live = join(dir, 'live.db');
    const path = join(dir, 'agent.db');
    populate(live, 2_000);
    bloatSchema(live);
    const db = new BetterSqlite3(live);
    db.pragma('wal_autocheckpoint = 0');
    const insert = db.prepare("INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, 'events', 20, 0, 0, 2, '{}')");
    db.transaction(() => {
      for (let i = 0; i < 500; i++) insert.run(`wal-${i}`);
    })();
    for (const s of ['', '-wal']) copyFileSync(live + s, path + s);
    db.close();
    // The schema leaf naming the outbox, which the inserts did not change: SQLite cannot read the schema.
    overwrite(path, [pages(live, 'sqlite_schema').find((p) => p.pagetype === 'leaf')!.pageno]);
    const { report, ids, store } = salvage(path);
    expect(report.pageScan?.tables).toContain('kv');
    expect(ids.slice(0, 2_000)).toEqual(Array.from({ length: 2_000 }, (_, i) => id(i)));
    expect(ids.slice(2_000)).toEqual(Array.from({ length: 500 }, (_, i) => `wal-${i}`));
    expect(report.tables.outbox!.recovered).toBe(2_500);
    store.close();
  });

  it('a WAL frame whose checksum fails ends the WAL there: the transaction it belongs to is not read', () => {
    const dir = dirs.make();
    const live = join(dir, 'live.db');
    populate(live, 100);
    const db = new BetterSqlite3(live);
    db.pragma('wal_autocheckpoint = 0');
    db.exec("INSERT INTO kv VALUES ('first', '1', 0)");
    db.transaction(() => {
      for (let i = 0; i < 300; i++) db.prepare("INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, 'e', 20, 0, 0, 2, '{}')").run(`w-${i}`);
    })();
    const wal = join(dir, 'copy.db-wal');
    copyFileSync(`${live}-wal`, wal);
    db.close();
    const whole = readWal(wal)!;
    const frame = 4096 + 24;
    const frames = (statSync(wal).size - 32) / frame;
    // One byte of the last frame's page: the last transaction's commit frame no longer checks.
    const fd = openSync(wal, 'r+');
    writeSync(fd, Buffer.from([readFileSync(wal)[32 + (frames - 1) * frame + 100]! ^ 0xff]), 0, 1, 32 + (frames - 1) * frame + 100);
    closeSync(fd);
    const cut = readWal(wal)!;
    expect(cut.dbPages).toBeLessThan(whole.dbPages);
    expect(cut.frames.size).toBeLessThan(whole.frames.size);
    expect(cut.frames.size).toBeGreaterThan(0);
  });

  it('freed pages holding deleted rows are never resurrected, even with the indexes gone too', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path, 6_000);
    const db = new BetterSqlite3(path);
    db.pragma('secure_delete = OFF');
    // Delivered messages: deleted, their leaves go to the freelist with their bytes still on them.
    db.prepare('DELETE FROM outbox WHERE seq BETWEEN 1001 AND 4000').run();
    expect(db.pragma('freelist_count', { simple: true })).toBeGreaterThan(20);
    db.close();
    const root = pages(path, 'outbox').find((p) => p.path === '/')!;
    const indexRoots = ['outbox_id', 'outbox_lane'].map((n) => pages(path, n).find((p) => p.path === '/')!.pageno);
    overwrite(path, [root.pageno, ...indexRoots]);
    const { report, ids, store } = salvage(path);
    const live = Array.from({ length: 6_000 }, (_, i) => i).filter((i) => i < 1000 || i >= 4000);
    expect(ids).toEqual(live.map(id));
    expect(report.tables.outbox!.recovered).toBe(live.length);
    store.close();
  });

  it('freed pages the damaged freelist no longer names look like orphans: an intact index says their rows were deleted, so they stay deleted', () => {
    const path = join(dirs.make(), 'agent.db');
    populate(path, 6_000);
    const db = new BetterSqlite3(path);
    db.pragma('secure_delete = OFF');
    db.prepare('DELETE FROM outbox WHERE seq BETWEEN 1001 AND 4000').run();
    db.close();
    const trunk = readFileSync(path).readUInt32BE(32);
    expect(trunk).toBeGreaterThan(0);
    overwrite(path, [pages(path, 'outbox').find((p) => p.path === '/')!.pageno, trunk]);
    const { report, ids, store } = salvage(path);
    const live = Array.from({ length: 6_000 }, (_, i) => i).filter((i) => i < 1000 || i >= 4000);
    expect(ids).toEqual(live.map(id));
    expect(report.tables.outbox).toMatchObject({ recovered: live.length, lost: 0 });
    store.close();
  });

  it('payloads larger than a page (overflow chains) read back byte-exact', () => {
    const path = join(dirs.make(), 'agent.db');
    const big = (i: number): Msg => ({
      id: id(i),
      channel: 'files',
      payload: i % 2 === 0 ? Buffer.from(Array.from({ length: 5_000 + i * 97 }, (_, k) => (k * 31 + i) & 0xff)) : `${i}:`.padEnd(9_000 + i * 13, String.fromCharCode(97 + (i % 26))),
    });
    populate(path, 60, big);
    overwrite(path, [pages(path, 'outbox').find((p) => p.path === '/')!.pageno]);
    const { report, store } = salvage(path);
    expect(report.tables.outbox).toMatchObject({ recovered: 60, lost: 0 });
    const rows = store.db.prepare('SELECT id, payload FROM outbox ORDER BY seq').all() as { id: string; payload: string | Buffer }[];
    expect(rows.map((r) => r.id)).toEqual(Array.from({ length: 60 }, (_, i) => id(i)));
    for (const [i, r] of rows.entries()) expect(r.payload).toEqual(big(i).payload);
    store.close();
  });

  it('an orphan page that fits two tables is skipped; one that fits one damaged table is taken', () => {
    const dir = dirs.make();
    const path = join(dir, 'damaged.db');
    const schema = 'CREATE TABLE a (k INTEGER PRIMARY KEY, v TEXT NOT NULL) STRICT; CREATE TABLE b (k INTEGER PRIMARY KEY, v TEXT NOT NULL) STRICT; CREATE TABLE c (k INTEGER PRIMARY KEY, n INTEGER NOT NULL, v TEXT NOT NULL) STRICT;';
    const db = new BetterSqlite3(path);
    db.exec(schema);
    db.transaction(() => {
      for (let i = 1; i <= 2_000; i++) {
        db.prepare('INSERT INTO a VALUES (?, ?)').run(i, `a${i}`.padEnd(40, '.'));
        db.prepare('INSERT INTO b VALUES (?, ?)').run(i, `b${i}`);
        db.prepare('INSERT INTO c VALUES (?, ?, ?)').run(i, i, `c${i}`.padEnd(40, '.'));
      }
    })();
    db.close();
    const rootOf = (t: string): PageInfo => pages(path, t).find((p) => p.path === '/')!;
    const aLeaves = pages(path, 'a').filter((p) => p.pagetype === 'leaf').length;
    overwrite(path, [rootOf('a').pageno, rootOf('c').pageno]);
    const fresh = new BetterSqlite3(join(dir, 'fresh.db'));
    fresh.exec(schema);
    const report = salvageInto(fresh, path);
    expect(report.tables.c).toMatchObject({ recovered: 2_000 });
    expect(report.tables.b).toMatchObject({ recovered: 2_000, lost: 0 });
    expect(report.tables.a!.recovered).toBe(0);
    expect(report.pageScan!.ambiguousPages).toBe(aLeaves);
    expect(fresh.prepare('SELECT count(*) AS n FROM b').get()).toEqual({ n: 2_000 });
    fresh.close();
  });

  it('a UTF-16 database: no page scan, and the report says why', () => {
    const dir = dirs.make();
    const path = join(dir, 'utf16.db');
    const db = new BetterSqlite3(path);
    db.pragma("encoding = 'UTF-16le'");
    db.exec('CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL) STRICT');
    db.transaction(() => {
      for (let i = 1; i <= 3_000; i++) db.prepare('INSERT INTO t VALUES (?, ?)').run(i, `v${i}`.padEnd(30, '.'));
    })();
    db.close();
    overwrite(path, [pages(path, 't').find((p) => p.path === '/')!.pageno]);
    const fresh = new BetterSqlite3(join(dir, 'fresh.db'));
    fresh.exec('CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL) STRICT');
    const report = salvageInto(fresh, path);
    expect(report.pageScan?.error).toMatch(/UTF-16le.*only UTF-8/);
    expect(report.tables.t!.recovered).toBe(0);
    fresh.close();
  });

  it('reads the header as SQLite wrote it: 64 KiB pages, page and freelist counts', () => {
    const dir = dirs.make();
    for (const size of [65536, 1024, 4096]) {
      const path = join(dir, `h${size}.db`);
      const db = new BetterSqlite3(path);
      db.pragma(`page_size = ${size}`);
      db.exec('CREATE TABLE t (x TEXT)');
      db.transaction(() => {
        for (let i = 0; i < 500; i++) db.prepare('INSERT INTO t VALUES (?)').run('y'.repeat(300));
      })();
      db.exec('DELETE FROM t WHERE rowid > 100');
      const pageCount = db.pragma('page_count', { simple: true });
      const freelist = db.pragma('freelist_count', { simple: true }) as number;
      db.close();
      const file = PageFile.open(path);
      expect(file.header).toMatchObject({ pageSize: size, pageCount, valid: true });
      // Trunks and leaves, as SQLite counts them.
      expect(file.freePages().size).toBe(freelist);
      file.close();
    }
  });
});

describe('page-level salvage of garbage', () => {
  it('random files never throw nor hang', () => {
    const dir = dirs.make();
    const head = Buffer.from('SQLite format 3\0', 'latin1');
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 40_000 }), fc.boolean(), (bytes, withMagic) => {
        const path = join(dir, 'g.db');
        const buf = Buffer.from(bytes);
        if (withMagic && buf.length >= 100) head.copy(buf, 0);
        writeFileSync(path, buf);
        const { report, store } = salvage(path);
        store.close();
        expect(report.tables.outbox).toBeDefined();
      }),
      { numRuns: 25, seed: 42 },
    );
  });

  it('a random page overwritten with random bytes: never throws, never invents a row', () => {
    const dir = dirs.make();
    const base = join(dir, 'base.db');
    populate(base, 1_500);
    const count = pages(base, 'outbox').length + 30;
    const path = join(dir, 'agent.db');
    fc.assert(
      fc.property(fc.integer({ min: 1, max: count }), fc.uint8Array({ minLength: 4096, maxLength: 4096 }), (page, bytes) => {
        copyFileSync(base, path);
        const fd = openSync(path, 'r+');
        writeSync(fd, bytes, 0, 4096, (page - 1) * 4096);
        closeSync(fd);
        const { report, ids, store } = salvage(path);
        store.close();
        const known = new Set(Array.from({ length: 1_500 }, (_, i) => id(i)));
        expect(ids.every((x) => known.has(x))).toBe(true);
        expect(report.tables.outbox!.recovered).toBe(ids.length);
      }),
      { numRuns: 30, seed: 7 },
    );
  });
});
