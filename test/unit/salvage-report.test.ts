import BetterSqlite3 from 'better-sqlite3';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { salvageInto } from '../../src/store/salvage.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * What the salvage copies through SQLite from a readable file, table by table, whatever the table's
 * shape: rowids kept, keyed tables copied, columns an older schema lacked filled by their default;
 * and what it reports then: every row recovered, none lost, no page scan.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const openFds = (): number => readdirSync('/proc/self/fd').length;
const MIN_ROWID = -(2n ** 63n - 1n); // one above the smallest int64
const BIG = 4_500;

const SHARED = [
  'CREATE TABLE r (a TEXT)',
  'CREATE TABLE al (id INTEGER PRIMARY KEY, v TEXT)',
  'CREATE TABLE cp (a INTEGER, b TEXT, PRIMARY KEY (a, b))',
  'CREATE TABLE k (k INTEGER PRIMARY KEY, v TEXT) without  rowid',
  'CREATE TABLE c (a TEXT /* WITHOUT ROWID */)',
  'CREATE TABLE big (v INTEGER)',
];

/** The damaged side: an older schema (no `old.b`, no `gone`), rows of every shape. */
function damagedFile(path: string): void {
  const db = new BetterSqlite3(path);
  db.exec([...SHARED, 'CREATE TABLE old (a TEXT)'].join(';'));
  const r = db.prepare('INSERT INTO r (rowid, a) VALUES (?, ?)');
  for (const [id, a] of [[MIN_ROWID, 'first'], [5n, 'five'], [1000n, 'thousand']] as const) r.run(id, a);
  db.exec("INSERT INTO al VALUES (3, 'three'), (70, 'seventy')");
  db.exec("INSERT INTO cp VALUES (1, 'x'), (1, 'y'), (2, 'x')");
  db.exec("INSERT INTO k VALUES (7, 'seven'), (9, 'nine')");
  db.exec("INSERT INTO c (rowid, a) VALUES (10, 'ten'), (20, 'twenty')");
  db.exec("INSERT INTO old VALUES ('o1'), ('o2')");
  const big = db.prepare('INSERT INTO big (v) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < BIG; i++) big.run(i);
  })();
  db.close();
}

function freshDb(path: string, foreignKeys: boolean): BetterSqlite3.Database {
  const db = new BetterSqlite3(path);
  db.exec([...SHARED, "CREATE TABLE old (a TEXT, b TEXT DEFAULT 'new')", 'CREATE TABLE gone (x)'].join(';'));
  db.pragma(`foreign_keys = ${foreignKeys ? 'ON' : 'OFF'}`);
  return db;
}

const rows = (db: BetterSqlite3.Database, sql: string): unknown[] => db.prepare(sql).safeIntegers(true).raw(true).all();

describe('salvage of a readable file', () => {
  for (const foreignKeys of [true, false]) {
    it(`copies every table whatever its shape, reports nothing lost, no page scan (foreign keys ${foreignKeys ? 'on' : 'off'} stay so)`, () => {
      const dir = dirs.make();
      damagedFile(join(dir, 'damaged.db'));
      const fresh = freshDb(join(dir, 'fresh.db'), foreignKeys);
      const fds = openFds();
      const times = [100, 350];
      const report = salvageInto(fresh, join(dir, 'damaged.db'), { now: () => times.shift()! });
      expect(openFds()).toBe(fds); // the damaged file is closed again
      expect(fresh.pragma('foreign_keys', { simple: true })).toBe(foreignKeys ? 1 : 0);
      expect(report.ms).toBe(250);
      expect(report.error).toBeUndefined();
      expect(report.pageScan).toBeUndefined();
      expect(report.lostRows).toEqual({});
      const sound = (recovered: number): unknown => ({ recovered, lost: 0, errors: 0 });
      expect(report.tables).toEqual({ r: sound(3), al: sound(2), cp: sound(3), k: sound(2), c: sound(2), big: sound(BIG), old: sound(2), gone: sound(0) });
      expect(rows(fresh, 'SELECT rowid, a FROM r ORDER BY rowid')).toEqual([[MIN_ROWID, 'first'], [5n, 'five'], [1000n, 'thousand']]);
      expect(rows(fresh, 'SELECT id, v FROM al ORDER BY id')).toEqual([[3n, 'three'], [70n, 'seventy']]);
      expect(rows(fresh, 'SELECT a, b FROM cp ORDER BY a, b')).toEqual([[1n, 'x'], [1n, 'y'], [2n, 'x']]);
      expect(rows(fresh, 'SELECT k, v FROM k ORDER BY k')).toEqual([[7n, 'seven'], [9n, 'nine']]);
      expect(rows(fresh, 'SELECT rowid, a FROM c ORDER BY rowid')).toEqual([[10n, 'ten'], [20n, 'twenty']]);
      expect(rows(fresh, 'SELECT a, b FROM old ORDER BY a')).toEqual([['o1', 'new'], ['o2', 'new']]);
      expect(rows(fresh, 'SELECT count(*), min(v), max(v) FROM big')).toEqual([[BigInt(BIG), 0n, BigInt(BIG - 1)]]);
      fresh.close();
    });
  }
});
