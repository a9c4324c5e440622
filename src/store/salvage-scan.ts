import type { Database } from 'better-sqlite3';
import { errorMessage } from '../util/errors.js';
import type { StoredValue } from './btree-cells.js';
import { PageFile } from './page-file.js';
import { type ColumnDef, leafRows, planScan, rowFits } from './page-scan.js';
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
}

export interface ScanOutcome {
  recovered: number;
  errors: number;
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
      batch.push([r.rowid, ...cols.map((c) => bindable(r.values[byName.get(c)!]!))]);
      if (batch.length >= BATCH) copier.flush(batch);
    }
  }
  copier.flush(batch);
  return { recovered: copier.recovered, errors: errors + copier.errors };
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
      outcomes.set(name, copyTable(fresh, file, name, targets.get(name)!, t.pages, t.orphans, t.columns));
    }
  } finally {
    file.close();
  }
  return { summary, outcomes };
}
