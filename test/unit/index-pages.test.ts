import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { pageIndexes, pageIndexKnowledge, pageIndexValues, walkIndex } from '../../src/store/index-pages.js';
import { PageFile } from '../../src/store/page-file.js';
import { RowidSet } from '../../src/store/rowid-set.js';
import { CHANNELS, idOf, makeIndexedDb, ROWS, schemaOf, TABLE, treePages, zeroPages } from '../helpers/indexed-db.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * A table's indexes read page by page (SQLite cannot open the file): which indexes count, what
 * columns they name, how many rows they count, and what they say of a lost row.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function setup(damage: (path: string) => void = () => undefined): { path: string; file: PageFile; indexes: ReturnType<typeof pageIndexes> } {
  const path = join(dirs.make(), 'i.db');
  makeIndexedDb(path);
  const schema = schemaOf(path);
  const tableSql = schema.find((e) => e.name === TABLE)!.sql!;
  damage(path);
  const file = PageFile.open(path);
  return { path, file, indexes: pageIndexes(schema, TABLE, tableSql) };
}

describe('pageIndexes', () => {
  it('lists the table\'s non-partial indexes with their key columns (null for an expression), from their CREATE statements', () => {
    const { path, file, indexes } = setup();
    file.close();
    const root = (name: string): number => schemaOf(path).find((e) => e.name === name)!.root;
    const auto = `sqlite_autoindex_${TABLE}_1`;
    expect(indexes).toEqual([
      { name: auto, root: root(auto), columns: ['code'] },
      { name: 'm_id', root: root('m_id'), columns: ['id'] },
      { name: 'm_expr', root: root('m_expr'), columns: ['channel', null] },
      { name: 'm_r', root: root('m_r'), columns: ['r'] },
    ]);
  });

  it('a table CREATE this SQLite cannot run gives no indexes; an index CREATE it cannot run is skipped', () => {
    const path = join(dirs.make(), 'i.db');
    makeIndexedDb(path);
    const schema = schemaOf(path);
    expect(pageIndexes(schema, TABLE, 'CREATE TABLE broken (')).toEqual([]);
    const bad = schema.map((e) => (e.name === 'm_id' ? { ...e, sql: 'CREATE INDEX m_id ON nowhere (x)' } : e));
    expect(pageIndexes(bad, TABLE, schema.find((e) => e.name === TABLE)!.sql!).map((i) => i.name)).not.toContain('m_id');
  });
});

describe('walkIndex', () => {
  it('visits every entry of a multi-level index once (key then rowid) and says the tree was whole', () => {
    const { path, file, indexes } = setup();
    const idx = indexes.find((i) => i.name === 'm_id')!;
    expect(treePages(path, 'm_id').some((p) => p.pagetype === 'internal')).toBe(true);
    const seen: string[] = [];
    const complete = walkIndex(file, idx.root, (entry) => {
      expect(entry[1]).toBe(BigInt(Number((entry[0] as string).slice(3))));
      seen.push(entry[0] as string);
    });
    file.close();
    expect(complete).toBe(true);
    expect(seen.sort()).toEqual(Array.from({ length: ROWS }, (_, i) => idOf(i + 1)));
  });

  it('a root that is no index page, or a damaged leaf, makes the walk incomplete', () => {
    const { path, file } = setup();
    const tableRoot = schemaOf(path).find((e) => e.name === TABLE)!.root;
    expect(walkIndex(file, tableRoot, () => undefined)).toBe(false);
    file.close();
    const leaf = treePages(path, 'm_id').find((p) => p.pagetype === 'leaf')!.pageno;
    const damaged = setup((p) => zeroPages(p, [leaf]));
    let n = 0;
    const idx = damaged.indexes.find((i) => i.name === 'm_id')!;
    expect(walkIndex(damaged.file, idx.root, () => n++)).toBe(false);
    damaged.file.close();
    expect(n).toBeGreaterThan(0);
    expect(n).toBeLessThan(ROWS);
  });
});

describe('pageIndexKnowledge', () => {
  it('counts the rows through a whole index and lists every rowid', () => {
    const { file, indexes } = setup();
    const k = pageIndexKnowledge(file, indexes, 10_000);
    file.close();
    expect(k.expected).toBe(ROWS);
    expect(k.complete).toBe(true);
    expect(k.listed.size).toBe(ROWS);
    expect(k.listed.has(1n) && k.listed.has(BigInt(ROWS))).toBe(true);
  });

  it('lists at most `cap` rowids, and still counts every row', () => {
    const { file, indexes } = setup();
    const k = pageIndexKnowledge(file, indexes, 10);
    file.close();
    expect(k.listed.size).toBe(10);
    expect(k.expected).toBe(ROWS);
  });

  it('the count comes from the indexes read whole; with none whole there is no count', () => {
    const leafOf = (path: string, name: string): number => treePages(path, name).find((p) => p.pagetype === 'leaf')!.pageno;
    const one = setup((p) => zeroPages(p, [leafOf(p, 'm_id')]));
    const k1 = pageIndexKnowledge(one.file, one.indexes, 10_000);
    one.file.close();
    expect(k1).toMatchObject({ expected: ROWS, complete: true });
    const all = setup((p) => zeroPages(p, ['m_id', 'm_expr', 'm_r', `sqlite_autoindex_${TABLE}_1`].map((n) => leafOf(p, n))));
    const k2 = pageIndexKnowledge(all.file, all.indexes, 10_000);
    all.file.close();
    expect(k2.expected).toBeNull();
    expect(k2.complete).toBe(false);
    // What the damaged indexes still list is kept.
    expect(k2.listed.size).toBeGreaterThan(0);
    expect(k2.listed.size).toBeLessThan(ROWS);
  });
  it('an index that reads whole but lost entries (a leaf cut to one cell) does not lower the count', () => {
    const cut = setup((p) => {
      const leaf = treePages(p, 'm_id').find((x) => x.pagetype === 'leaf')!.pageno;
      const fd = openSync(p, 'r+');
      writeSync(fd, Buffer.from([0, 1]), 0, 2, (leaf - 1) * 4096 + 3);
      closeSync(fd);
    });
    const idx = cut.indexes.find((i) => i.name === 'm_id')!;
    let n = 0;
    expect(walkIndex(cut.file, idx.root, () => n++)).toBe(true);
    expect(n).toBeLessThan(ROWS);
    expect(pageIndexKnowledge(cut.file, cut.indexes, 10_000)).toMatchObject({ expected: ROWS, complete: true });
    cut.file.close();
  });
});

describe('pageIndexValues', () => {
  it('gives each wanted row the values its indexes hold (text and REAL), nothing for other rows', () => {
    const { file, indexes } = setup();
    const values = pageIndexValues(file, indexes, RowidSet.from([5n, 1234n]));
    file.close();
    expect([...values.keys()].sort((a, b) => Number(a - b))).toEqual([5n, 1234n]);
    expect(values.get(5n)).toEqual({ code: 'c5', id: idOf(5), channel: CHANNELS[5 % 3], r: 5.5 });
    expect(values.get(1234n)).toEqual({ code: 'c1234', id: idOf(1234), channel: CHANNELS[1234 % 3], r: 1234.5 });
  });
});
