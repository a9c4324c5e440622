import type { Database } from 'better-sqlite3';
import { errorMessage } from '../util/errors.js';
import type { StoredValue } from './btree-cells.js';
import { PageFile } from './page-file.js';
import { type ColumnDef, leafRows, planScan, rowFits, type ScannedTable, type SchemaEntry } from './page-scan.js';
import type { IndexedValues } from './index-count.js';
import { pageIndexes, pageIndexKnowledge, pageIndexValues } from './index-pages.js';
import { RowidSet } from './rowid-set.js';
import { quote, TableCopier } from './table-copier.js';

/**
 * The second pass of a salvage: the rows SQLite could not reach, read from the damaged file's pages
 * and inserted with their rowids into the fresh tables, skipping rowids the first pass copied.
 */

export interface PageScanSummary {
  /** Tables the scan looked for. */
  tables: string[];
  /** Table-leaf pages no tree reaches that were given to a damaged table. */
  orphanPages: number;
  /** Orphan pages that fit more than one table: skipped. */
  ambiguousPages: number;
  /** Orphan pages that fit no damaged table: skipped. */
  unassignedPages: number;
  /** Why the pages could not be scanned (e.g. a UTF-16 database). */
  error?: string;
}

export interface ScanTarget {
  /** Fresh columns (without the rowid alias) that the scan may fill. */
  columns: string[];
  /** When set, only orphan rows with a rowid in it are live (an intact index lists every live row). */
  liveRowids?: RowidSet;
  /** Count and name the rows through the indexes read page by page (SQLite cannot); the table's CREATE to fall back on. */
  countFromPages?: string;
}

export interface LostRow {
  rowid: number;
  /** The column values the table's intact indexes still hold for the row (e.g. the outbox's id, channel). */
  values: IndexedValues;
}

export interface LostRows {
  rows: LostRow[];
  /** Set when there were more than LOST_ROWS_CAP. */
  truncated?: true;
}

/** Lost rows named per table, at most. */
export const LOST_ROWS_CAP = 100_000;
/** Rowids read from a damaged table's indexes, at most (bounds memory on a huge table). */
export const LISTED_CAP = 2_000_000;

export interface NamedLoss {
  /** Rowids the indexes list that the fresh table lacks. */
  count: number;
  /** Rowids the indexes list in all. */
  listed: number;
  rows: LostRows;
}

/** The rowids `listed` names that the fresh table lacks: the lost rows, with what `valuesFor` knows of them. */
export function nameLost(fresh: Database, table: string, listed: RowidSet, valuesFor: (wanted: RowidSet) => Map<bigint, IndexedValues>): NamedLoss {
  const copied = freshRowids(fresh, table);
  const lost: bigint[] = [];
  for (const rowid of listed) if (!copied.has(rowid)) lost.push(rowid);
  const named = RowidSet.from(lost.slice(0, LOST_ROWS_CAP));
  const values = named.size > 0 ? valuesFor(named) : new Map<bigint, IndexedValues>();
  const rows = [...named].map((rowid) => ({ rowid: Number(rowid), values: values.get(rowid) ?? {} }));
  return { count: lost.length, listed: listed.size, rows: lost.length > rows.length ? { rows, truncated: true } : { rows } };
}

export interface ScanOutcome {
  recovered: number;
  errors: number;
  /** What the indexes read page by page said (when asked to count from pages). */
  indexes?: { expected: number | null; lost: NamedLoss };
}

const BATCH = 2_000;

/** The rowids a fresh table holds now. */
export function freshRowids(fresh: Database, table: string): RowidSet {
  return RowidSet.from(fresh.prepare(`SELECT rowid FROM ${quote(table)}`).pluck().safeIntegers(true).iterate() as IterableIterator<bigint>);
}

/** A stored value as better-sqlite3 binds it. */
const bindable = (v: StoredValue): unknown => v;

function copyTable(fresh: Database, file: PageFile, name: string, target: ScanTarget, pages: number[], orphans: Set<number>, columns: ColumnDef[]): ScanOutcome {
  const byName = new Map(columns.map((c, i) => [c.name, i]));
  const cols = target.columns.filter((c) => byName.has(c));
  const copier = new TableCopier(fresh, name, cols, true);
  const copied = freshRowids(fresh, name);
  const batch: unknown[][] = [];
  let errors = 0;
  const seen = new Set<bigint>();
  for (const p of pages) {
    const { rows, unreadable } = leafRows(file, p, (rowid) => copied.has(rowid) || seen.has(rowid));
    errors += unreadable;
    for (const r of rows) {
      if (!rowFits(columns, r.values)) {
        errors++;
        continue;
      }
      // An orphan row no complete index lists is a deleted row left on a page: not live.
      if (orphans.has(p) && target.liveRowids && !target.liveRowids.has(r.rowid)) continue;
      if (seen.has(r.rowid) || copied.has(r.rowid)) continue;
      seen.add(r.rowid);
      // A field a short record lacks (written before an ADD COLUMN) is NULL.
      batch.push([r.rowid, ...cols.map((c) => bindable(r.values[byName.get(c)!] ?? null))]);
      if (batch.length >= BATCH) copier.flush(batch);
    }
  }
  copier.flush(batch);
  return { recovered: copier.recovered, errors: errors + copier.errors };
}

/** Copies one table's rows from its pages; counts and names its rows through its indexes' pages when asked. */
function scanTable(fresh: Database, file: PageFile, schema: SchemaEntry[], name: string, target: ScanTarget, t: ScannedTable): ScanOutcome {
  if (target.countFromPages === undefined) return copyTable(fresh, file, name, target, t.pages, t.orphans, t.columns);
  const sql = schema.find((e) => e.type === 'table' && e.name === name)?.sql ?? target.countFromPages;
  const indexes = pageIndexes(schema, name, sql);
  const k = pageIndexKnowledge(file, indexes, LISTED_CAP);
  const outcome: ScanOutcome = copyTable(fresh, file, name, k.complete ? { ...target, liveRowids: k.listed } : target, t.pages, t.orphans, t.columns);
  outcome.indexes = { expected: k.expected, lost: nameLost(fresh, name, k.listed, (w) => pageIndexValues(file, indexes, w)) };
  return outcome;
}

/**
 * Scans the damaged file's pages for the rows of `targets` (by table name). `freshColumns` are the
 * column definitions of every fresh rowid table: the fallback when the damaged schema cannot say, and
 * the other candidates an orphan page must not also fit.
 */
export function scanInto(
  fresh: Database,
  damagedPath: string,
  targets: Map<string, ScanTarget>,
  freshColumns: Map<string, ColumnDef[]>,
): { summary: PageScanSummary; outcomes: Map<string, ScanOutcome> } {
  const summary: PageScanSummary = { tables: [...targets.keys()], orphanPages: 0, ambiguousPages: 0, unassignedPages: 0 };
  const outcomes = new Map<string, ScanOutcome>();
  let file: PageFile;
  try {
    file = PageFile.open(damagedPath);
  } catch (err) {
    summary.error = `the damaged file cannot be read: ${errorMessage(err)}`;
    return { summary, outcomes };
  }
  try {
    if (file.header.unscannable) {
      summary.error = file.header.unscannable;
      return { summary, outcomes };
    }
    const plan = planScan(file, new Set(targets.keys()), freshColumns);
    summary.ambiguousPages = plan.ambiguousPages;
    summary.unassignedPages = plan.unassignedPages;
    for (const [name, t] of plan.tables) {
      summary.orphanPages += t.orphans.size;
      outcomes.set(name, scanTable(fresh, file, plan.schema, name, targets.get(name)!, t));
    }
  } finally {
    file.close();
  }
  return { summary, outcomes };
}
