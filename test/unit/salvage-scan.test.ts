import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { IndexedValues } from '../../src/store/index-count.js';
import { LOST_ROWS_CAP, nameLost, scanInto } from '../../src/store/salvage-scan.js';
import { RowidSet } from '../../src/store/rowid-set.js';
import { tempDirs } from '../helpers/tmp.js';

/** Naming the lost rows: the rowids the indexes list that the fresh table lacks, with what the indexes know of them. */

const dbs: BetterSqlite3.Database[] = [];
const dirs = tempDirs();
afterEach(() => {
  for (const db of dbs.splice(0)) db.close();
  dirs.cleanup();
});

function fresh(rowids: number[]): BetterSqlite3.Database {
  const db = new BetterSqlite3(':memory:');
  dbs.push(db);
  db.exec('CREATE TABLE "t""x" (v TEXT)');
  for (const r of rowids) db.prepare('INSERT INTO "t""x" (rowid, v) VALUES (?, ?)').run(r, 'kept');
  return db;
}

const range = (from: number, to: number): bigint[] => Array.from({ length: to - from + 1 }, (_, i) => BigInt(from + i));

describe('nameLost', () => {
  it('names each listed rowid the fresh table lacks, with the values the indexes hold for it', () => {
    const asked: bigint[][] = [];
    const loss = nameLost(fresh([1, 3]), 't"x', RowidSet.from(range(1, 5)), (wanted) => {
      asked.push([...wanted]);
      return new Map<bigint, IndexedValues>([[2n, { id: 'two' }], [9n, { id: 'not lost' }]]);
    });
    expect(loss).toEqual({
      count: 3,
      listed: 5,
      rows: { rows: [{ rowid: 2, values: { id: 'two' } }, { rowid: 4, values: {} }, { rowid: 5, values: {} }] },
    });
    expect(asked).toEqual([[2n, 4n, 5n]]);
  });

  it('with nothing lost the indexes are not read again', () => {
    const loss = nameLost(fresh([1, 2]), 't"x', RowidSet.from(range(1, 2)), () => {
      throw new Error('read the indexes for no lost row');
    });
    expect(loss).toEqual({ count: 0, listed: 2, rows: { rows: [] } });
  });

  it(`names at most ${LOST_ROWS_CAP} rows and says the list was cut, while counting them all`, () => {
    let asked = 0;
    const loss = nameLost(fresh([]), 't"x', RowidSet.from(range(1, LOST_ROWS_CAP + 2)), (wanted) => {
      asked = wanted.size;
      return new Map();
    });
    expect(loss.count).toBe(LOST_ROWS_CAP + 2);
    expect(loss.rows.rows).toHaveLength(LOST_ROWS_CAP);
    expect(loss.rows.truncated).toBe(true);
    expect(asked).toBe(LOST_ROWS_CAP);
    const exact = nameLost(fresh([]), 't"x', RowidSet.from(range(1, LOST_ROWS_CAP)), () => new Map());
    expect(exact.rows.truncated).toBeUndefined();
  });
});

describe('scanInto', () => {
  it('rows the fresh schema refuses are counted as errors, the rest recovered with their rowids', () => {
    const path = join(dirs.make(), 'd.db');
    const src = new BetterSqlite3(path);
    src.exec('CREATE TABLE t (v TEXT)');
    for (let i = 1; i <= 10; i++) src.prepare('INSERT INTO t (rowid, v) VALUES (?, ?)').run(i, i % 4 === 0 ? 'bad' : `v${i}`);
    src.close();
    const db = new BetterSqlite3(':memory:');
    dbs.push(db);
    db.exec("CREATE TABLE t (v TEXT CHECK (v <> 'bad'))");
    const { summary, outcomes } = scanInto(db, path, new Map([['t', { columns: ['v'] }]]), new Map([['t', [{ name: 'v', type: 'TEXT', notNull: false, rowidAlias: false }]]]));
    expect(summary.error).toBeUndefined();
    expect(outcomes.get('t')).toEqual({ recovered: 8, errors: 2 });
    expect(db.prepare('SELECT rowid FROM t ORDER BY rowid').pluck().all()).toEqual([1, 2, 3, 5, 6, 7, 9, 10]);
  });
});
