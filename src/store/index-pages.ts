import BetterSqlite3 from 'better-sqlite3';
import { childPages, decodeRecord, INDEX_INTERIOR, INDEX_LEAF, parseBtreePage, readIndexCell, type StoredValue } from './btree-cells.js';
import type { IndexedValues } from './index-count.js';
import type { PageFile } from './page-file.js';
import type { SchemaEntry } from './page-scan.js';
import { RowidSet } from './rowid-set.js';

/**
 * A damaged table's indexes read page by page, for when SQLite cannot open the file at all (a
 * damaged schema): each index entry is the indexed columns then the rowid, so a complete index tree
 * counts the table's rows and names the lost ones, as index-count.ts does through SQLite.
 */

export interface PageIndex {
  name: string;
  root: number;
  /** Key columns in index order; null for an expression. */
  columns: (string | null)[];
}

const quote = (name: string): string => `"${name.replaceAll('"', '""')}"`;

/**
 * The non-partial indexes of `table` the damaged schema lists, with their columns as SQLite reads
 * their CREATE statements (in a scratch in-memory database holding `tableSql`).
 */
export function pageIndexes(schema: SchemaEntry[], table: string, tableSql: string): PageIndex[] {
  // Stryker disable next-line StringLiteral: '' opens a private temporary database, as scratch as ':memory:'.
  const db = new BetterSqlite3(':memory:');
  try {
    db.exec(tableSql);
    const out: PageIndex[] = [];
    for (const e of schema) {
      // Stryker disable next-line ConditionalExpression,LogicalOperator: a shortcut: index_list below names only this table's indexes, so any other entry is skipped there.
      if (e.type !== 'index' || e.table !== table) continue;
      try {
        // An index made by a UNIQUE constraint has no CREATE statement: the table's made it here too.
        if (e.sql) db.exec(e.sql);
        const listed = (db.pragma(`index_list(${quote(table)})`) as { name: string; partial: number }[]).find((i) => i.name === e.name);
        if (!listed || listed.partial === 1) continue;
        const cols = db.pragma(`index_xinfo(${quote(e.name)})`) as { cid: number; name: string | null; key: number }[];
        out.push({ name: e.name, root: e.root, columns: cols.filter((c) => c.key === 1).map((c) => (c.cid >= 0 ? c.name : null)) });
      } catch {
        // A CREATE statement this SQLite cannot run: that index is not used.
      }
    }
    return out;
  } catch {
    return [];
  } finally {
    db.close();
  }
}

/**
 * Visits every entry of the index tree at `root` (interior cells hold entries too); true when the
 * whole tree was read (no page of the wrong kind, no unreadable cell).
 */
export function walkIndex(file: PageFile, root: number, visit: (entry: StoredValue[]) => void): boolean {
  let complete = true;
  const seen = new Set<number>();
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    const buf = seen.has(p) ? null : file.page(p);
    seen.add(p);
    const page = buf ? parseBtreePage(buf, p, file.header.usable) : null;
    if (!buf || (page?.type !== INDEX_INTERIOR && page?.type !== INDEX_LEAF)) {
      complete = false;
      continue;
    }
    const interior = page.type === INDEX_INTERIOR;
    for (const at of page.cells) {
      const payload = readIndexCell(file, buf, at, interior);
      const entry = payload ? decodeRecord(payload) : null;
      if (entry && entry.length > 0) visit(entry);
      else complete = false;
    }
    if (interior) stack.push(...childPages(buf, page, file.header.usable));
  }
  return complete;
}

const rowidOf = (entry: StoredValue[]): bigint | null => {
  const last = entry[entry.length - 1];
  return typeof last === 'bigint' ? last : null;
};

/** What the indexes, read page by page, know: the count of a complete one, the rowids all list. */
export function pageIndexKnowledge(file: PageFile, indexes: PageIndex[], cap: number): { expected: number | null; listed: RowidSet; complete: boolean } {
  const counts: number[] = [];
  const all: bigint[] = [];
  for (const idx of indexes) {
    let n = 0;
    const complete = walkIndex(file, idx.root, (entry) => {
      const rowid = rowidOf(entry);
      if (rowid === null) return;
      n++;
      if (all.length < cap) all.push(rowid);
    });
    if (complete) counts.push(n);
  }
  return { expected: counts.length > 0 ? Math.max(...counts) : null, listed: RowidSet.from(all), complete: counts.length > 0 };
}

const plain = (v: StoredValue | undefined): string | number | null => (typeof v === 'bigint' ? Number(v) : typeof v === 'string' || typeof v === 'number' ? v : null);

/** The values the indexes hold for each of `wanted` (one walk of each index). */
export function pageIndexValues(file: PageFile, indexes: PageIndex[], wanted: RowidSet): Map<bigint, IndexedValues> {
  const out = new Map<bigint, IndexedValues>();
  for (const idx of indexes) {
    walkIndex(file, idx.root, (entry) => {
      const rowid = rowidOf(entry);
      if (rowid === null || !wanted.has(rowid)) return;
      const values = out.get(rowid) ?? {};
      out.set(rowid, values);
      idx.columns.forEach((c, i) => {
        if (c !== null && i < entry.length - 1) values[c] = plain(entry[i]);
      });
    });
  }
  return out;
}
