import BetterSqlite3 from 'better-sqlite3';
import { closeSync, openSync, readdirSync, readFileSync, statSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { salvageInto } from '../../src/store/salvage.js';
import { overwrite, pages } from '../helpers/sqlite-pages.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The salvage's first pass, through SQLite: the seek past damaged pages (seen alone in a UTF-16 file,
 * which the page scan cannot read), a rowid gone backwards, WITHOUT ROWID tables, and how the report
 * counts what the fresh schema refuses.
 */

const dirs = tempDirs();
const dbs: BetterSqlite3.Database[] = [];
afterEach(() => {
  for (const db of dbs.splice(0)) db.close();
  dirs.cleanup();
});




/** A damaged database made by `fill`, and a fresh one made by `schema` in the same directory. */
function pair(fill: (db: BetterSqlite3.Database) => void, schema: string): { path: string; fresh: BetterSqlite3.Database } {
  const dir = dirs.make();
  const path = join(dir, 'damaged.db');
  const db = new BetterSqlite3(path);
  fill(db);
  db.close();
  const fresh = new BetterSqlite3(join(dir, 'fresh.db'));
  dbs.push(fresh);
  fresh.exec(schema);
  return { path, fresh };
}

const values = (db: BetterSqlite3.Database, sql: string): unknown[] => db.prepare(sql).pluck().all();
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('salvage, first pass: the seek past damaged pages', () => {
  it('a UTF-16 file (no page scan) with leaves overwritten in two places: every row on the intact leaves, in order, the lost ones counted and named', () => {
    const N = 3_000;
    const { path, fresh } = pair((db) => {
      db.pragma("encoding = 'UTF-16le'");
      db.exec('CREATE TABLE t (v TEXT NOT NULL); CREATE INDEX t_v ON t (v)');
      const insert = db.prepare('INSERT INTO t (rowid, v) VALUES (?, ?)');
      db.transaction(() => {
        for (let i = 1; i <= N; i++) insert.run(i, `v${String(i).padStart(5, '0')}`.padEnd(40, '.'));
      })();
    }, 'CREATE TABLE t (v TEXT NOT NULL); CREATE INDEX t_v ON t (v)');
    const leaves = pages(path, 't').filter((p) => p.pagetype === 'leaf');
    expect(leaves.length).toBeGreaterThan(20);
    const rowsOf = (k: number): number[] => {
      const before = leaves.slice(0, k).reduce((n, p) => n + p.ncell, 0);
      return range(before + 1, before + leaves[k]!.ncell);
    };
    // The first row after each damaged stretch is lost too: reading past the last rowid of a damaged leaf
    // descends into that leaf (it is the divider). The page scan, where it can run, finds that row.
    const lost = [...rowsOf(5), rowsOf(6)[0]!, ...rowsOf(12), ...rowsOf(13), rowsOf(14)[0]!];
    overwrite(path, [5, 12, 13].map((k) => leaves[k]!.pageno));

    const report = salvageInto(fresh, path);
    expect(report.pageScan?.error).toMatch(/UTF-16le/);
    expect(values(fresh, 'SELECT rowid FROM t ORDER BY rowid')).toEqual(range(1, N).filter((i) => !lost.includes(i)));
    expect(values(fresh, 'SELECT v FROM t WHERE rowid = 3000')).toEqual([`v03000`.padEnd(40, '.')]);
    const db = new BetterSqlite3(path, { readonly: true });
    expect(() => db.prepare('SELECT count(*) FROM t').get()).toThrow(/malformed/);
    db.close();
    // Two damaged stretches, one read error each, and the count that failed (the index counted instead).
    expect(report.tables.t).toEqual({ recovered: N - lost.length, lost: lost.length, errors: 3 });
    expect(report.lostRows.t!.rows.map((r) => r.rowid)).toEqual(lost);
    expect(report.error).toBeUndefined();
  });

  it('a row whose stored rowid went backwards: the reader does not go round forever, nor does the row overwrite the one it collides with', () => {
    const N = 4_500;
    const { path, fresh } = pair((db) => {
      db.exec('CREATE TABLE t (v TEXT NOT NULL)');
      const insert = db.prepare('INSERT INTO t (rowid, v) VALUES (?, ?)');
      db.transaction(() => {
        for (let i = 1; i <= N; i++) insert.run(i, `v${i}`);
      })();
    }, 'CREATE TABLE t (v TEXT NOT NULL)');
    // Row 4000 (the last of the second read of 2,000) says it is row 2000: the last rowid the first read ended on.
    const bytes = readFileSync(path);
    // The cell: payload size, rowid 4000 (0x9f 0x20), the record (header of 2 bytes, a text of 5).
    const cell = Buffer.from([0x07, 0x9f, 0x20, 0x02, 0x17, ...Buffer.from('v4000')]);
    const at = bytes.indexOf(cell) + 1;
    expect(at).toBeGreaterThan(0);
    expect(bytes.indexOf(cell, at)).toBe(-1);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([0x8f, 0x50]), 0, 2, at);
    closeSync(fd);

    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT rowid FROM t ORDER BY rowid')).toEqual(range(1, N).filter((i) => i !== 4000));
    expect(values(fresh, 'SELECT v FROM t WHERE rowid = 2000')).toEqual(['v2000']);
    expect(report.tables.t).toMatchObject({ recovered: N - 1, lost: 1 });
  });
});

describe('salvage, first pass: WITHOUT ROWID tables', () => {
  const KEYED = 'CREATE TABLE k (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID';
  const keyOf = (i: number): string => `key-${String(i).padStart(5, '0')}`;
  const fillKeyed = (count: number, pad = 0) => (db: BetterSqlite3.Database): void => {
    db.exec(KEYED);
    const insert = db.prepare('INSERT INTO k VALUES (?, ?)');
    db.transaction(() => {
      for (let i = 1; i <= count; i++) insert.run(keyOf(i).padEnd(pad, '.'), i);
    })();
  };

  it('a damaged leaf: the rows before it in key order are kept; the read error and the count that failed are reported, the loss unknown', () => {
    const { path, fresh } = pair(fillKeyed(2_000, 60), KEYED);
    const leaves = pages(path, 'k').filter((p) => p.pagetype === 'leaf');
    expect(leaves.length).toBeGreaterThan(10);
    const before = leaves.slice(0, 4).reduce((n, p) => n + p.ncell, 0);
    overwrite(path, [leaves[4]!.pageno]);
    const report = salvageInto(fresh, path);
    // An index b-tree keeps keys on its interior pages too: the rows before the damage are a prefix at least as long.
    const kept = values(fresh, 'SELECT n FROM k ORDER BY key');
    expect(kept).toEqual(range(1, kept.length));
    expect(kept.length).toBeGreaterThanOrEqual(before);
    expect(kept.length).toBeLessThan(before + leaves[4]!.ncell);
    expect(report.tables.k).toEqual({ recovered: kept.length, lost: null, errors: 2 });
  });

  it('a row the fresh schema refuses is counted lost and as an error', () => {
    const { path, fresh } = pair(fillKeyed(10), KEYED.replace('NOT NULL', 'NOT NULL CHECK (n <> 7)'));
    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT n FROM k ORDER BY key')).toEqual(range(1, 10).filter((i) => i !== 7));
    expect(report.tables.k).toEqual({ recovered: 9, lost: 1, errors: 1 });
  });

  it('a write error (not a refused row) ends the salvage; the rows written in whole transactions of 2,000 before it stay', () => {
    const { path, fresh } = pair(fillKeyed(2_500), KEYED);
    // Fails like a full disk on the 2,500th row.
    fresh.exec(`CREATE TRIGGER k_fails BEFORE INSERT ON k WHEN NEW.n = 2500 BEGIN SELECT abs(-9223372036854775808); END`);
    expect(() => salvageInto(fresh, path)).toThrow(/integer overflow/);
    expect(values(fresh, 'SELECT n FROM k ORDER BY key')).toEqual(range(1, 2_000));
  });

  it('a file cut short is still read through SQLite: the keyed table before the cut is recovered', () => {
    const { path, fresh } = pair((db) => {
      fillKeyed(20)(db);
      db.exec('CREATE TABLE big (v TEXT)');
      const insert = db.prepare('INSERT INTO big VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < 2_000; i++) insert.run('z'.repeat(300));
      })();
    }, `${KEYED}; CREATE TABLE big (v TEXT)`);
    truncateSync(path, Math.floor(statSync(path).size / 2));
    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT n FROM k ORDER BY key')).toEqual(range(1, 20));
    expect(report.tables.k).toEqual({ recovered: 20, lost: 0, errors: 0 });
    expect(report.tables.big!.recovered).toBeGreaterThan(0);
  });
});

describe('salvage: how the report counts', () => {
  it('rows of a table without an index that the fresh schema refuses: counted lost (the counts agree), and as errors', () => {
    const { path, fresh } = pair((db) => {
      db.exec('CREATE TABLE t (n INTEGER NOT NULL)');
      const insert = db.prepare('INSERT INTO t (rowid, n) VALUES (?, ?)');
      for (let i = 1; i <= 100; i++) insert.run(i, i);
    }, 'CREATE TABLE t (n INTEGER NOT NULL CHECK (n % 10 <> 0))');
    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT n FROM t ORDER BY rowid')).toEqual(range(1, 100).filter((i) => i % 10 !== 0));
    expect(report.tables.t).toMatchObject({ recovered: 90, lost: 10 });
    // Refused by the first pass, and again by the page scan that looked for the missing rows.
    expect(report.tables.t!.errors).toBeGreaterThanOrEqual(10);
    expect(report.lostRows).toEqual({});
  });

  it('a damaged table whose every row the page scan recovers: no lost rows listed', () => {
    const { path, fresh } = pair((db) => {
      db.exec('CREATE TABLE t (v TEXT NOT NULL); CREATE INDEX t_v ON t (v)');
      const insert = db.prepare('INSERT INTO t (rowid, v) VALUES (?, ?)');
      db.transaction(() => {
        for (let i = 1; i <= 3_000; i++) insert.run(i, `v${i}`.padEnd(40, '.'));
      })();
    }, 'CREATE TABLE t (v TEXT NOT NULL); CREATE INDEX t_v ON t (v)');
    overwrite(path, [pages(path, 't').find((p) => p.path === '/')!.pageno]);
    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT count(*) FROM t')).toEqual([3_000]);
    expect(report.tables.t).toMatchObject({ recovered: 3_000, lost: 0 });
    expect(report.pageScan?.tables).toEqual(['t']);
    expect(report.lostRows).toEqual({});
  });
});

describe('salvage of a file that is not there', () => {
  it('nothing copied; the report says the file cannot be read, by SQLite nor page by page', () => {
    const dir = dirs.make();
    const fresh = new BetterSqlite3(join(dir, 'fresh.db'));
    dbs.push(fresh);
    fresh.exec('CREATE TABLE t (v TEXT); CREATE TABLE k (key TEXT PRIMARY KEY) WITHOUT ROWID');
    const report = salvageInto(fresh, join(dir, 'gone.db'));
    expect(report.error).toBe('the damaged file cannot be read as a database: unable to open database file');
    expect(report.pageScan).toMatchObject({ tables: ['t'], error: expect.stringMatching(/^the damaged file cannot be read: .*ENOENT/) });
    expect(report.tables).toEqual({ t: { recovered: 0, lost: null, errors: 1 }, k: { recovered: 0, lost: null, errors: 1 } });
  });
});

/** Table t of rows 1..3,000 (n = rowid, 40 bytes of padding), and a fresh database of the same schema. */
function rowsOneToThreeThousand(): { path: string; fresh: BetterSqlite3.Database } {
  return pair((db) => {
    db.exec('CREATE TABLE t (n INTEGER, pad TEXT)');
    const insert = db.prepare('INSERT INTO t (rowid, n, pad) VALUES (?, ?, ?)');
    db.transaction(() => {
      for (let i = 1; i <= 3_000; i++) insert.run(i, i, 'p'.repeat(40));
    })();
  }, 'CREATE TABLE t (n INTEGER, pad TEXT)');
}

/** Sets byte `offset` of the one cell that starts with `cell` (its bytes occur once in the file) to `value`. */
function patchCell(path: string, cell: Buffer, offset: number, value: number): void {
  const bytes = readFileSync(path);
  const at = bytes.indexOf(cell);
  expect(at).toBeGreaterThan(0);
  expect(bytes.indexOf(cell, at + 1)).toBe(-1);
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.from([value]), 0, 1, at + offset);
  closeSync(fd);
}

describe('salvage, page scan: rows that do not fit their table', () => {
  it("a row on a tree page that breaks its own table's definition (a NULL in a NOT NULL column) is not copied and is counted as an error", () => {
    const { path, fresh } = rowsOneToThreeThousand();
    const leaves = pages(path, 't').filter((p) => p.pagetype === 'leaf');
    const before = leaves.slice(0, 4).reduce((n, p) => n + p.ncell, 0);
    const lost = range(before + 1, before + leaves[4]!.ncell);
    // The first row after the damaged leaf, which the first pass skips (seeking past the leaf) and the
    // scan finds on its tree page, holds a NULL where the file says n is NOT NULL: garbage that parsed.
    const bad = before + leaves[4]!.ncell + 1;
    const db = new BetterSqlite3(path);
    db.prepare('UPDATE t SET n = NULL WHERE rowid = ?').run(bad);
    db.unsafeMode(true);
    db.pragma('writable_schema = ON');
    db.prepare("UPDATE sqlite_schema SET sql = 'CREATE TABLE t (n INTEGER NOT NULL, pad TEXT)' WHERE name = 't'").run();
    db.close();
    overwrite(path, [leaves[4]!.pageno]);
    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT rowid FROM t ORDER BY rowid')).toEqual(range(1, 3_000).filter((i) => !lost.includes(i) && i !== bad));
    // The read that failed, the count that failed, and the row.
    expect(report.tables.t).toEqual({ recovered: 3_000 - lost.length - 1, lost: null, errors: 3 });
  });
});

describe('salvage, page scan: a cell that cannot be read', () => {
  it('one damaged record on an intact leaf: only that row is lost, counted as lost and as errors by both passes', () => {
    const { path, fresh } = rowsOneToThreeThousand();
    // Row 1000's cell: payload of 45 bytes, rowid 1000, a record header of 3 bytes (a 2-byte integer,
    // a text of 40) that now claims 127 bytes.
    const cell = Buffer.from([0x2d, 0x87, 0x68, 0x03, 0x02, 0x5d, 0x03, 0xe8]);
    patchCell(path, cell, 3, 0x7f);
    const openFiles = (): number => readdirSync('/proc/self/fd').length;
    const before = openFiles();
    const report = salvageInto(fresh, path);
    // Both readers of the damaged file are closed.
    expect(openFiles()).toBe(before);
    expect(values(fresh, 'SELECT rowid FROM t ORDER BY rowid')).toEqual(range(1, 3_000).filter((i) => i !== 1000));
    expect(report.tables.t).toEqual({ recovered: 2_999, lost: 1, errors: 2 });
  });
});

describe('salvage, page scan: a rowid twice on one page', () => {
  it('the first cell is kept, the second skipped without counting an error', () => {
    const { path, fresh } = rowsOneToThreeThousand();
    // Row 1001's cell (payload of 45 bytes, rowid 1001, n = 1001) now says rowid 1000, the cell before it.
    const cell = Buffer.from([0x2d, 0x87, 0x69, 0x03, 0x02, 0x5d, 0x03, 0xe9]);
    patchCell(path, cell, 2, 0x68);
    // SQLite reads nothing (the root is gone): every row comes from the scan.
    overwrite(path, [pages(path, 't').find((p) => p.path === '/')!.pageno]);
    const report = salvageInto(fresh, path);
    expect(values(fresh, 'SELECT rowid FROM t ORDER BY rowid')).toEqual(range(1, 3_000).filter((i) => i !== 1001));
    expect(values(fresh, 'SELECT n FROM t WHERE rowid = 1000')).toEqual([1000]);
    // The read that failed and the count that failed; nothing from the scan.
    expect(report.tables.t).toEqual({ recovered: 2_999, lost: null, errors: 2 });
  });
});

describe('salvage, page scan: a write error', () => {
  it('ends the salvage; the rows the scan wrote in whole transactions of 2,000 before it stay', () => {
    const { path, fresh } = pair((db) => {
      db.exec('CREATE TABLE t (n INTEGER NOT NULL)');
      const insert = db.prepare('INSERT INTO t (rowid, n) VALUES (?, ?)');
      db.transaction(() => {
        for (let i = 1; i <= 2_500; i++) insert.run(i, i);
      })();
    }, 'CREATE TABLE t (n INTEGER NOT NULL)');
    // SQLite reads nothing (the root is gone): every row comes from the scan, which fails like a full disk on row 2,500.
    overwrite(path, [pages(path, 't').find((p) => p.path === '/')!.pageno]);
    fresh.exec('CREATE TRIGGER t_fails BEFORE INSERT ON t WHEN NEW.n = 2500 BEGIN SELECT abs(-9223372036854775808); END');
    expect(() => salvageInto(fresh, path)).toThrow(/integer overflow/);
    expect(values(fresh, 'SELECT n FROM t ORDER BY rowid')).toEqual(range(1, 2_000));
  });
});
