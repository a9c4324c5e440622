import type { Database } from 'better-sqlite3';
import { RowidSet } from './rowid-set.js';

/**
 * What a damaged table's indexes still know about it. An index is a separate b-tree: when the table's
 * own pages are damaged its indexes often are not, so they can still count the rows and name them
 * (their rowids and the indexed columns), which is how a loss is accounted for row by row.
 */

export type IndexedValues = Record<string, string | number | null>;

export interface IndexKnowledge {
  /** The largest row count that any way of counting (the table, NOT INDEXED, each index) still gives; null when none can. */
  expected: number | null;
  /** Every rowid some readable index lists. */
  listed: RowidSet;
  /** Whether some index was read to its end without an error (so `listed` names every row). */
  complete: boolean;
  /** The indexes read, for `indexValues`. */
  indexes: IndexDef[];
}

const quote = (name: string): string => `"${name.replaceAll('"', '""')}"`;

export interface IndexDef {
  name: string;
  columns: string[];
}

/** The table's indexes that cover every row (not partial), with their plain key columns. */
function fullIndexes(src: Database, table: string): IndexDef[] {
  try {
    const list = src.pragma(`index_list(${quote(table)})`) as { name: string; partial: number }[];
    return list
      .filter((i) => i.partial === 0)
      .map((i) => {
        const cols = src.pragma(`index_xinfo(${quote(i.name)})`) as { cid: number; name: string | null; key: number }[];
        // Expression columns (cid -2) cannot be selected by name; the rowid (cid -1) is selected anyway.
        return { name: i.name, columns: cols.filter((c) => c.key === 1 && c.cid >= 0 && c.name !== null).map((c) => c.name!) };
      });
  } catch {
    return [];
  }
}

function tryCount(src: Database, sql: string): number | null {
  try {
    return (src.prepare(sql).get() as { n: number }).n;
  } catch {
    return null;
  }
}

const plain = (v: unknown): string | number | null => (typeof v === 'bigint' ? Number(v) : typeof v === 'string' || typeof v === 'number' ? v : null);

/**
 * Yields the rowids an index lists, as far as it can be read; `ends[i]` says whether index i was
 * read to its end. Only the rowid is selected: SQLite answers from the index alone, never the table.
 */
function* listIndexes(src: Database, table: string, indexes: IndexDef[], cap: number, ends: boolean[]): Generator<bigint> {
  for (const idx of indexes) {
    let n = 0;
    // Stryker disable next-line BooleanLiteral: never read as set here: the try assigns it after the loop, the catch on any throw.
    let ended = false;
    try {
      const stmt = src.prepare(`SELECT rowid FROM ${quote(table)} INDEXED BY ${quote(idx.name)}`).pluck().safeIntegers(true);
      for (const rowid of stmt.iterate() as IterableIterator<bigint>) {
        if (++n > cap) break;
        yield rowid;
      }
      ended = n <= cap;
      // Stryker disable next-line BlockStatement: ended is still false here (set only after the loop ends).
    } catch {
      ended = false;
    }
    ends.push(ended);
  }
}

/**
 * Counts `table`'s rows every way SQLite can and lists the rowids its indexes hold. `cap` bounds the
 * rowids read per index (a huge damaged table must not exhaust memory).
 */
export function askIndexes(src: Database, table: string, cap: number): IndexKnowledge {
  const indexes = fullIndexes(src, table);
  const counts = [
    tryCount(src, `SELECT count(*) AS n FROM ${quote(table)}`),
    tryCount(src, `SELECT count(*) AS n FROM ${quote(table)} NOT INDEXED`),
    ...indexes.map((i) => tryCount(src, `SELECT count(*) AS n FROM ${quote(table)} INDEXED BY ${quote(i.name)}`)),
  ].filter((n): n is number => n !== null);
  const ends: boolean[] = [];
  const listed = RowidSet.from(listIndexes(src, table, indexes, cap, ends));
  return { expected: counts.length > 0 ? Math.max(...counts) : null, listed, complete: ends.includes(true), indexes };
}

/** The values the indexes hold for each of `wanted` (one pass over each index). */
export function indexValues(src: Database, table: string, indexes: IndexDef[], wanted: RowidSet): Map<bigint, IndexedValues> {
  const out = new Map<bigint, IndexedValues>();
  for (const idx of indexes) {
    const cols = ['rowid', ...idx.columns];
    try {
      const stmt = src.prepare(`SELECT ${cols.map(quote).join(', ')} FROM ${quote(table)} INDEXED BY ${quote(idx.name)}`).raw(true).safeIntegers(true);
      for (const row of stmt.iterate() as IterableIterator<unknown[]>) {
        const rowid = row[0] as bigint;
        if (!wanted.has(rowid)) continue;
        const values = out.get(rowid) ?? {};
        out.set(rowid, values);
        for (let i = 1; i < cols.length; i++) values[cols[i]!] = plain(row[i]);
      }
    } catch {
      // What was read before the damage stays.
    }
  }
  return out;
}
