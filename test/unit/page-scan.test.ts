import BetterSqlite3 from 'better-sqlite3';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseBtreePage, type StoredValue } from '../../src/store/btree-cells.js';
import { PageFile } from '../../src/store/page-file.js';
import { type ColumnDef, columnsFromSql, leafRows, planScan, rowFits } from '../../src/store/page-scan.js';
import { memoryPages } from '../helpers/sqlite-pages.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Planning the salvage of damaged tables from their pages: the columns a row must fit, the rows of
 * a leaf and its unreadable cells, and which orphan leaf pages go to which damaged table.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const PAGE = 1024;

const col = (name: string, type: string, notNull = false, rowidAlias = false): ColumnDef => ({ name, type, notNull, rowidAlias });

describe('columns from a CREATE statement', () => {
  it('reads names, upper-cased types, NOT NULL and the INTEGER PRIMARY KEY alias', () => {
    expect(columnsFromSql('CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL, v)', 't')).toEqual([
      col('id', 'INTEGER', false, true),
      col('name', 'TEXT', true),
      col('v', ''),
    ]);
  });

  it('has no rowid alias for a composite or a non-integer primary key', () => {
    expect(columnsFromSql('CREATE TABLE t (a INTEGER, b INTEGER, PRIMARY KEY (a, b))', 't')).toEqual([col('a', 'INTEGER'), col('b', 'INTEGER')]);
    expect(columnsFromSql('CREATE TABLE t (k TEXT PRIMARY KEY, n INT)', 't')).toEqual([col('k', 'TEXT'), col('n', 'INT')]);
  });

  it('is null for a statement SQLite refuses or that creates another table', () => {
    expect(columnsFromSql('CREATE TABLE t (', 't')).toBeNull();
    expect(columnsFromSql('CREATE TABLE a (x)', 'b')).toBeNull();
    // SQLite keeps sqlite_* names for itself: an internal table of the damaged file gives no columns.
    expect(columnsFromSql('CREATE TABLE sqlite_sequence (name, seq)', 'sqlite_sequence')).toBeNull();
  });
});

describe('which rows fit a table', () => {
  const strict = [col('id', 'INTEGER', false, true), col('i', 'INT'), col('r', 'REAL'), col('s', 'TEXT', true), col('b', 'BLOB'), col('any', 'ANY')];
  const ok: StoredValue[] = [null, 5n, 1.5, 'x', Buffer.from([1]), 'anything'];
  const with_ = (i: number, v: StoredValue): StoredValue[] => ok.map((o, j) => (j === i ? v : o));

  it('takes each value in the column of its type', () => {
    expect(rowFits(strict, ok)).toBe(true);
    expect(rowFits(strict, with_(1, null))).toBe(true);
    // A whole REAL may be stored as an integer.
    expect(rowFits(strict, with_(2, 2n))).toBe(true);
    expect(rowFits([col('n', 'INTEGER')], [7n])).toBe(true);
    expect(rowFits([col('n', 'VARCHAR(9)')], [1.5])).toBe(true);
  });

  it('refuses a value of another type, a NULL in a NOT NULL column, a rowid alias holding a value, or another column count', () => {
    expect(rowFits(strict, with_(0, 5n))).toBe(false);
    expect(rowFits(strict, with_(3, null))).toBe(false);
    expect(rowFits(strict, with_(1, 1.5))).toBe(false);
    expect(rowFits(strict, with_(1, 'x'))).toBe(false);
    expect(rowFits(strict, with_(3, 5n))).toBe(false);
    expect(rowFits(strict, with_(3, Buffer.from([1])))).toBe(false);
    expect(rowFits(strict, with_(4, 'x'))).toBe(false);
    expect(rowFits(strict, with_(4, 1.5))).toBe(false);
    expect(rowFits(strict, [...ok, null])).toBe(false);
    expect(rowFits(strict, [])).toBe(false);
    // Short of a NOT NULL column.
    expect(rowFits(strict, ok.slice(0, 3))).toBe(false);
  });

  it('takes a row written before an ALTER TABLE ADD COLUMN: fewer fields, the missing ones NULL', () => {
    expect(rowFits(strict, ok.slice(0, 5))).toBe(true);
    expect(rowFits([...strict, col('added', 'INTEGER')], ok)).toBe(true);
  });
});

interface Pages {
  leaves: number[];
  interior: number[];
}

function pagesOf(path: string, name: string): Pages {
  const db = new BetterSqlite3(path, { readonly: true });
  const rows = db.prepare('SELECT pageno, pagetype FROM dbstat WHERE name = ? ORDER BY pageno').all(name) as { pageno: number; pagetype: string }[];
  db.close();
  return { leaves: rows.filter((r) => r.pagetype === 'leaf').map((r) => r.pageno), interior: rows.filter((r) => r.pagetype === 'internal').map((r) => r.pageno) };
}

function zeroPages(path: string, pageNos: number[]): void {
  const fd = openSync(path, 'r+');
  for (const p of pageNos) writeSync(fd, Buffer.alloc(PAGE), 0, PAGE, (p - 1) * PAGE);
  closeSync(fd);
}

const A_SQL = 'CREATE TABLE a (id INTEGER PRIMARY KEY, v REAL NOT NULL) STRICT';
const B_SQL = 'CREATE TABLE b (id INTEGER PRIMARY KEY, s TEXT NOT NULL) STRICT';
const E_SQL = 'CREATE TABLE e (x BLOB NOT NULL) STRICT';

/**
 * Tables a (REAL rows), b and c (TEXT rows, c only in this file) and e (BLOB rows), 300 rows each
 * on 1024-byte pages, a view, and z created last (its root is the last page).
 */
function build(): string {
  const path = join(dirs.make(), 'scan.db');
  const db = new BetterSqlite3(path);
  db.pragma(`page_size = ${PAGE}`);
  db.exec(`${A_SQL}; ${B_SQL}; CREATE TABLE c (id INTEGER PRIMARY KEY, s TEXT NOT NULL) STRICT; ${E_SQL}; CREATE VIEW vw AS SELECT 1`);
  db.transaction(() => {
    for (let i = 0; i < 300; i++) {
      db.prepare('INSERT INTO a (v) VALUES (?)').run(i + 0.5);
      db.prepare('INSERT INTO b (s) VALUES (?)').run(`b-${i}`);
      db.prepare('INSERT INTO c (s) VALUES (?)').run(`c-${i}`);
      db.prepare('INSERT INTO e (x) VALUES (?)').run(Buffer.from([i & 0xff, 1, 2]));
    }
  })();
  db.exec('CREATE TABLE z (id INTEGER PRIMARY KEY, t TEXT); INSERT INTO z (t) VALUES (\'last\')');
  db.close();
  return path;
}

describe('the rows of a leaf page', () => {
  it('counts a cell whose record is damaged as unreadable and keeps the others', () => {
    const path = build();
    const leaf = pagesOf(path, 'a').leaves[0]!;
    const file0 = PageFile.open(path);
    const before = leafRows(file0, leaf).rows;
    const buf = file0.page(leaf)!;
    const at = parseBtreePage(buf, leaf, PAGE)!.cells[0]!;
    file0.close();
    // The cell is [size][rowid][record]: a record header longer than the record.
    const bytes = readFileSync(path);
    bytes[(leaf - 1) * PAGE + at + 2] = 0x7f;
    const fd = openSync(path, 'r+');
    writeSync(fd, bytes, (leaf - 1) * PAGE, PAGE, (leaf - 1) * PAGE);
    closeSync(fd);
    const file = PageFile.open(path);
    const { rows, unreadable } = leafRows(file, leaf);
    expect(unreadable).toBe(1);
    expect(rows).toEqual(before.slice(1));
    expect(before[1]!.values).toEqual([null, 1.5]);
    expect(leafRows(file, pagesOf(path, 'a').interior[0]!)).toEqual({ rows: [], unreadable: 1 });
    file.close();
  });
});

describe('planning the page scan', () => {
  it('gives a damaged table its orphan leaves, counts pages that fit two tables or only an intact one, never resurrects a view', () => {
    const path = build();
    const [a, c, e] = [pagesOf(path, 'a'), pagesOf(path, 'c'), pagesOf(path, 'e')];
    expect(a.interior.length).toBeGreaterThan(0);
    // The roots of a, c and e are lost: their leaves are reached by no tree.
    zeroPages(path, [...a.interior, ...c.interior, ...e.interior]);
    // One orphan of e has lost its cells: no row says whose it is, so it is counted nowhere.
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(2), 0, 2, (e.leaves[0]! - 1) * PAGE + 3);
    closeSync(fd);
    const file = PageFile.open(path);
    const fresh = new Map([['a', [col('wrong', 'TEXT')]], ['b', columnsFromSql(B_SQL, 'b')!], ['e', columnsFromSql(E_SQL, 'e')!]]);
    const plan = planScan(file, new Set(['a']), fresh);
    expect(plan.schema.map((s) => s.name)).toEqual(['a', 'b', 'c', 'e', 'z']);
    expect(plan.schema.at(-1)?.root).toBe(file.header.pageCount);
    const t = plan.tables.get('a')!;
    // The damaged file's CREATE statement wins over the fresh database's columns.
    expect(t.columns).toEqual(columnsFromSql(A_SQL, 'a'));
    expect([...plan.tables.keys()]).toEqual(['a']);
    expect(t.pages).toEqual(a.leaves);
    expect([...t.orphans]).toEqual(a.leaves);
    // c's pages fit b and c; e's other pages fit only e, which is not damaged.
    expect(plan.ambiguousPages).toBe(c.leaves.length);
    expect(plan.unassignedPages).toBe(e.leaves.length - 1);
    const rows = t.pages.flatMap((p) => leafRows(file, p).rows);
    expect(rows.map((r) => r.values[1])).toEqual(Array.from({ length: 300 }, (_, i) => i + 0.5));
    file.close();
  });

  it('gives an orphan leaf to the table its rows fit column for column, before a wider one they fit only as rows older than an ADD COLUMN', () => {
    const path = join(dirs.make(), 'short.db');
    const db = new BetterSqlite3(path);
    db.pragma(`page_size = ${PAGE}`);
    // k's rows (text, text, integer) also fit wide, whose extra columns may be NULL.
    db.exec(
      'CREATE TABLE k (key TEXT NOT NULL, value TEXT NOT NULL, at INTEGER NOT NULL) STRICT; CREATE TABLE wide (a TEXT NOT NULL, b TEXT NOT NULL, c INTEGER NOT NULL, d TEXT) STRICT',
    );
    db.transaction(() => {
      for (let i = 0; i < 300; i++) {
        db.prepare('INSERT INTO k VALUES (?, ?, ?)').run(`key-${i}`, `value-${i}`, i);
        db.prepare('INSERT INTO wide VALUES (?, ?, ?, ?)').run(`a-${i}`, `b-${i}`, i, `d-${i}`);
      }
    })();
    db.close();
    const [k, wide] = [pagesOf(path, 'k'), pagesOf(path, 'wide')];
    zeroPages(path, [...k.interior, ...wide.interior]);
    const file = PageFile.open(path);
    const fresh = new Map([
      ['k', columnsFromSql('CREATE TABLE k (key TEXT NOT NULL, value TEXT NOT NULL, at INTEGER NOT NULL) STRICT', 'k')!],
      ['wide', columnsFromSql('CREATE TABLE wide (a TEXT NOT NULL, b TEXT NOT NULL, c INTEGER NOT NULL, d TEXT) STRICT', 'wide')!],
    ]);
    const plan = planScan(file, new Set(['k', 'wide']), fresh);
    expect(plan.ambiguousPages).toBe(0);
    expect([...plan.tables.get('k')!.orphans].sort((x, y) => x - y)).toEqual([...k.leaves].sort((x, y) => x - y));
    expect([...plan.tables.get('wide')!.orphans].sort((x, y) => x - y)).toEqual([...wide.leaves].sort((x, y) => x - y));
    file.close();
  });

  it('never counts a WITHOUT ROWID table as a candidate for an orphan leaf (its rows live in an index b-tree)', () => {
    const path = join(dirs.make(), 'wr.db');
    const db = new BetterSqlite3(path);
    db.pragma(`page_size = ${PAGE}`);
    // w's rows would fit d's leaves, column for column; but they are never on a table leaf.
    db.exec('CREATE TABLE d (s TEXT NOT NULL) STRICT; CREATE TABLE w (s TEXT NOT NULL PRIMARY KEY) STRICT, WITHOUT ROWID');
    db.transaction(() => {
      for (let i = 0; i < 300; i++) {
        db.prepare('INSERT INTO d (s) VALUES (?)').run(`d-${i}`);
        db.prepare('INSERT INTO w (s) VALUES (?)').run(`w-${i}`);
      }
    })();
    db.close();
    const [d, w] = [pagesOf(path, 'd'), pagesOf(path, 'w')];
    zeroPages(path, d.interior);
    const file = PageFile.open(path);
    const plan = planScan(file, new Set(['d']), new Map([['d', columnsFromSql('CREATE TABLE d (s TEXT NOT NULL) STRICT', 'd')!]]));
    expect(plan.ambiguousPages).toBe(0);
    expect([...plan.tables.get('d')!.orphans]).toEqual(d.leaves);
    // w's tree is intact and walked as an index: none of its pages is an orphan of d.
    expect(d.leaves.some((p) => w.leaves.includes(p))).toBe(false);
    file.close();
  });

  it('skips a schema entry whose root page is not stored as an integer (a REAL 2.5 here)', () => {
    const path = build();
    const db = new BetterSqlite3(path);
    db.unsafeMode(true);
    db.pragma('writable_schema = ON');
    db.prepare("INSERT INTO sqlite_schema VALUES ('table', 'ghost', 'ghost', ?, 'CREATE TABLE ghost (x)')").run(2.5);
    db.close();
    const file = PageFile.open(path);
    const plan = planScan(file, new Set(), new Map());
    expect(plan.schema.map((s) => s.name)).toEqual(['a', 'b', 'c', 'e', 'z']);
    file.close();
  });

  it('keeps the leaves an intact tree reaches, without counting them as orphans', () => {
    const path = build();
    const b = pagesOf(path, 'b');
    const file = PageFile.open(path);
    const plan = planScan(file, new Set(['b']), new Map([['b', columnsFromSql(B_SQL, 'b')!]]));
    expect(plan.tables.get('b')?.pages).toEqual(b.leaves);
    expect(plan.tables.get('b')?.orphans.size).toBe(0);
    expect(plan.ambiguousPages).toBe(0);
    expect(plan.unassignedPages).toBe(0);
    file.close();
  });

  it('gives a leaf that a damaged interior page points to from two trees to one table only', () => {
    const path = build();
    const [a, b] = [pagesOf(path, 'a'), pagesOf(path, 'b')];
    const stolen = b.leaves[0]!;
    // a's root now also points to b's first leaf.
    const file0 = memoryPages(readFileSync(path), PAGE);
    const root = a.interior[0]!;
    const buf = file0.page(root)!;
    const at = parseBtreePage(buf, root, PAGE)!.cells[0]!;
    const child = Buffer.alloc(4);
    child.writeUInt32BE(stolen);
    const fd = openSync(path, 'r+');
    writeSync(fd, child, 0, 4, (root - 1) * PAGE + at);
    closeSync(fd);
    const file = PageFile.open(path);
    const fresh = new Map([['a', columnsFromSql(A_SQL, 'a')!], ['b', columnsFromSql(B_SQL, 'b')!]]);
    const plan = planScan(file, new Set(['a', 'b']), fresh);
    const [pa, pb] = [plan.tables.get('a')!.pages, plan.tables.get('b')!.pages];
    expect(pa.filter((p) => pb.includes(p))).toEqual([]);
    expect([...pa, ...pb].filter((p) => p === stolen)).toHaveLength(1);
    // The cells of that page are b's rows, readable wherever the page went.
    expect(leafRows(file, stolen).rows[0]?.values).toEqual([null, 'b-0']);
    file.close();
  });
});
