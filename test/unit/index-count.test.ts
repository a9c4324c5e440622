import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { askIndexes, indexValues } from '../../src/store/index-count.js';
import { RowidSet } from '../../src/store/rowid-set.js';
import { CHANNELS, idOf, makeIndexedDb, ROWS, TABLE, treePages, zeroPages } from '../helpers/indexed-db.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * A damaged table's indexes asked through SQLite: how many rows any way of counting still gives,
 * which rowids they list (at most `cap` per index), and what they hold of a lost row.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function open(damage: (path: string) => void = () => undefined): BetterSqlite3.Database {
  const path = join(dirs.make(), 'c.db');
  makeIndexedDb(path);
  damage(path);
  return new BetterSqlite3(path, { readonly: true });
}

/** A table with one index on k: 20 wide rows (so SQLite counts through the smaller index), k in the reverse order of the rowids. */
function oneIndex(damage: (path: string) => void = () => undefined): BetterSqlite3.Database {
  const path = join(dirs.make(), 'one.db');
  const db = new BetterSqlite3(path);
  db.exec('CREATE TABLE one (k TEXT, pad TEXT); CREATE INDEX one_k ON one (k)');
  for (let i = 1; i <= 20; i++) db.prepare('INSERT INTO one (rowid, k, pad) VALUES (?, ?, ?)').run(i, `k${String(100 - i)}`, 'p'.repeat(500));
  db.close();
  damage(path);
  return new BetterSqlite3(path, { readonly: true });
}

describe('askIndexes', () => {
  it('names the non-partial indexes with their plain key columns, counts every row and lists every rowid', () => {
    const db = open();
    const k = askIndexes(db, TABLE, 10_000);
    db.close();
    expect(k.expected).toBe(ROWS);
    expect(k.complete).toBe(true);
    expect(k.listed.size).toBe(ROWS);
    expect([...k.indexes].sort((a, b) => a.name.localeCompare(b.name))).toEqual([
      { name: 'm_expr', columns: ['channel'] },
      { name: 'm_id', columns: ['id'] },
      { name: 'm_r', columns: ['r'] },
      { name: `sqlite_autoindex_${TABLE}_1`, columns: ['code'] },
    ]);
  });

  it('reads at most `cap` rowids of an index, in index order; only an index read to its end is complete', () => {
    const at = (cap: number): ReturnType<typeof askIndexes> => {
      const db = oneIndex();
      try {
        return askIndexes(db, 'one', cap);
      } finally {
        db.close();
      }
    };
    const capped = at(5);
    expect([...capped.listed].sort((a, b) => Number(a - b))).toEqual([16n, 17n, 18n, 19n, 20n]);
    expect(capped.complete).toBe(false);
    expect(capped.expected).toBe(20);
    expect(at(19).complete).toBe(false);
    expect(at(20)).toMatchObject({ complete: true, expected: 20 });
    expect(at(20).listed.size).toBe(20);
  });

  it('a damaged index leaves the table\'s own count (NOT INDEXED), and the index is not complete', () => {
    const db = oneIndex((p) => zeroPages(p, treePages(p, 'one_k').map((x) => x.pageno)));
    const k = askIndexes(db, 'one', 100);
    db.close();
    expect(k.expected).toBe(20);
    expect(k.complete).toBe(false);
  });

  it('a table that cannot be read at all gives no count, no rowids, no indexes', () => {
    const db = open();
    const k = askIndexes(db, 'missing', 100);
    db.close();
    expect(k).toMatchObject({ expected: null, complete: false, indexes: [] });
    expect(k.listed.size).toBe(0);
  });
});

describe('indexValues', () => {
  it('gives each wanted row the values its indexes hold (text and REAL), nothing for other rows', () => {
    const db = open();
    const k = askIndexes(db, TABLE, 10_000);
    const values = indexValues(db, TABLE, k.indexes, RowidSet.from([7n, 2999n]));
    db.close();
    expect([...values.keys()].sort((a, b) => Number(a - b))).toEqual([7n, 2999n]);
    expect(values.get(7n)).toEqual({ code: 'c7', id: idOf(7), channel: CHANNELS[7 % 3], r: 7.5 });
    expect(values.get(2999n)).toEqual({ code: 'c2999', id: idOf(2999), channel: CHANNELS[2999 % 3], r: 2999.5 });
  });
});
