import BetterSqlite3, { type Database } from 'better-sqlite3';
import { errorMessage } from '../util/errors.js';
import { askIndexes, indexValues, type IndexKnowledge } from './index-count.js';
import { type ColumnDef, tableColumns } from './page-scan.js';
import { LISTED_CAP, type LostRows, nameLost, type PageScanSummary, scanInto, type ScanTarget } from './salvage-scan.js';

export { LOST_ROWS_CAP, type LostRow, type LostRows } from './salvage-scan.js';
import { COMPAT_TABLE } from './migrations.js';
import { quote, TableCopier } from './table-copier.js';

/**
 * Copies what can still be read from a damaged database into a fresh one, table by table. The fresh
 * database already has the schema (its migrations ran); the tables to copy are the ones it has, so
 * the store needs to know nothing of the features that own them. Rows keep their rowids (the
 * outbox's order) and every column value (message ids, which receivers dedupe on).
 *
 * A damaged page costs the rows on it, not the table: rowid tables are read in rowid order, and when
 * a read fails the reader seeks past the failure (doubling the step until a seek succeeds, then
 * narrowing it back), so the rows beyond the bad page are read again. A row the fresh schema refuses
 * (a CHECK, a UNIQUE, a STRICT type: garbage that happened to parse) is counted as lost.
 *
 * SQLite cannot reach the intact leaves under a damaged interior page, nor open a file whose schema
 * is damaged; a second pass reads those tables' pages itself (salvage-scan.ts). The tables' indexes,
 * separate b-trees, count the rows and name the ones lost (index-count.ts).
 */

export interface TableSalvage {
  recovered: number;
  /**
   * Rows known to be lost: the larger of `expected - recovered` (expected: the largest count the table
   * or any of its indexes still gives) and the rowids an index lists that were not recovered; null
   * when nothing can count (unknown).
   */
  lost: number | null;
  /** Read errors skipped over (each cost one or more rows). */
  errors: number;
}

export interface SalvageReport {
  tables: Record<string, TableSalvage>;
  /**
   * The lost rows each damaged table's indexes can still name, by table. Kept apart from `tables`
   * (which is persisted with the quarantine report) because it can be large.
   */
  lostRows: Record<string, LostRows>;
  /** What the page scan did, when it ran. */
  pageScan?: PageScanSummary;
  /** Set when salvage could not read the damaged file at all (e.g. not a database): nothing was copied. */
  error?: string;
  ms: number;
}

/** Rows per read and per write transaction. */
const CHUNK = 2_000;
/** Largest rowid SQLite assigns. */
const MAX_ROWID = 2n ** 63n - 1n;

interface TableInfo {
  name: string;
  columns: string[];
  rowid: boolean;
  /** Definitions of every column (the rowid alias included), for the page scan. */
  defs: ColumnDef[];
  sql: string;
}

/** Tables of the fresh database, with their columns, in creation order. */
function freshTables(fresh: Database): TableInfo[] {
  const rows = fresh
    .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != ? ORDER BY rowid")
    .all(COMPAT_TABLE) as { name: string; sql: string }[];
  return rows.map(({ name, sql }) => {
    const info = fresh.pragma(`table_info(${quote(name)})`) as { name: string; type: string; pk: number }[];
    const rowid = !/WITHOUT\s+ROWID/i.test(sql.slice(sql.lastIndexOf(')')));
    // An INTEGER PRIMARY KEY is the rowid itself: copied as `rowid`, not twice.
    const pks = info.filter((c) => c.pk > 0);
    const alias = rowid && pks.length === 1 && pks[0]!.type.toUpperCase() === 'INTEGER' ? pks[0]!.name : undefined;
    return { name, columns: info.map((c) => c.name).filter((c) => c !== alias), rowid, defs: tableColumns(fresh, name) ?? [], sql };
  });
}

/**
 * Columns of the damaged table that the fresh one also has (an older schema may lack some); null when
 * the damaged database has no such table (a newer migration made it).
 */
function sharedColumns(src: Database, t: TableInfo): string[] | null {
  try {
    const have = new Set((src.pragma(`table_info(${quote(t.name)})`) as { name: string }[]).map((c) => c.name));
    if (have.size === 0) return null;
    return t.columns.filter((c) => have.has(c));
  } catch {
    // The damaged schema cannot say: try the fresh table's columns.
    return t.columns;
  }
}

function countRows(src: Database, table: string): number | null {
  try {
    return (src.prepare(`SELECT count(*) AS n FROM ${quote(table)}`).get() as { n: number }).n;
  } catch {
    return null;
  }
}

/** Whether reading from `after` (exclusive) succeeds, a row or the end: the seek past a bad page. */
function readableFrom(src: Database, table: string, after: bigint): boolean {
  try {
    src.prepare(`SELECT 1 FROM ${quote(table)} WHERE rowid > ? ORDER BY rowid LIMIT 1`).get(after);
    return true;
  } catch {
    return false;
  }
}

/**
 * The smallest start (exclusive) above `failedAt` from which a read succeeds, or null when no seek
 * succeeds up to the largest rowid. Doubles the step, then bisects back between the last failing and
 * the first succeeding start, so few readable rows are skipped.
 */
function seekPast(src: Database, table: string, failedAt: bigint): bigint | null {
  let step = 1n;
  let bad = failedAt;
  let good: bigint | undefined;
  while (failedAt + step < MAX_ROWID) {
    const at = failedAt + step;
    if (readableFrom(src, table, at)) {
      good = at;
      break;
    }
    bad = at;
    step *= 2n;
  }
  if (good === undefined) return null;
  let hi: bigint = good;
  while (hi - bad > 1n) {
    const mid: bigint = bad + (hi - bad) / 2n;
    if (readableFrom(src, table, mid)) hi = mid;
    else bad = mid;
  }
  return hi;
}

function copyRowidTable(src: Database, copier: TableCopier, table: string, columns: string[]): void {
  const select = src
    .prepare(`SELECT rowid, ${columns.map(quote).join(', ')} FROM ${quote(table)} WHERE rowid > ? ORDER BY rowid LIMIT ${CHUNK}`)
    .raw(true)
    .safeIntegers(true);
  let after = -MAX_ROWID - 1n;
  const batch: unknown[][] = [];
  for (;;) {
    const from = after;
    try {
      for (const row of select.iterate(after) as IterableIterator<unknown[]>) {
        after = row[0] as bigint;
        batch.push(row);
      }
      copier.flush(batch);
      // The end (a read that yields no row) or a damaged page returning rows out of order: never read
      // the same stretch forever. (A short read is the end too, but its next read yields nothing.)
      if (after <= from) return;
    } catch (err) {
      if (!isReadError(err)) throw err;
      copier.flush(batch);
      copier.errors++;
      const next = seekPast(src, table, after);
      if (next === null) return;
      after = next;
    }
  }
}

/** WITHOUT ROWID tables are small here (counters): read in key order until the first error. */
function copyKeyedTable(src: Database, copier: TableCopier, table: string, columns: string[]): void {
  const batch: unknown[][] = [];
  try {
    for (const row of src.prepare(`SELECT ${columns.map(quote).join(', ')} FROM ${quote(table)}`).raw(true).safeIntegers(true).iterate() as IterableIterator<unknown[]>) {
      batch.push(row);
      if (batch.length >= CHUNK) copier.flush(batch);
    }
  } catch (err) {
    if (!isReadError(err)) throw err;
    copier.errors++;
  }
  copier.flush(batch);
}

/** An error reading the damaged file (as opposed to one writing the fresh one, which ends the salvage). */
function isReadError(err: unknown): boolean {
  // Stryker disable next-line StringLiteral: an error without a code is no read error whatever string stands in for it (none starts with SQLITE_).
  const code = String((err as { code?: unknown }).code ?? '');
  return code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_NOTADB') || code.startsWith('SQLITE_IOERR') || code.startsWith('SQLITE_ERROR') || code === 'SQLITE_RANGE';
}

/** The first pass: copies each table through SQLite; returns the rowid tables that had damage. */
function copyThroughSqlite(fresh: Database, src: Database, tables: TableInfo[], report: SalvageReport): Map<string, number | null> {
  const damaged = new Map<string, number | null>();
  for (const t of tables) {
    const columns = sharedColumns(src, t);
    if (columns === null) {
      report.tables[t.name] = { recovered: 0, lost: 0, errors: 0 };
      continue;
    }
    const expected = countRows(src, t.name);
    const copier = new TableCopier(fresh, t.name, columns, t.rowid);
    if (t.rowid) copyRowidTable(src, copier, t.name, columns);
    else copyKeyedTable(src, copier, t.name, columns);
    report.tables[t.name] = { recovered: copier.recovered, lost: expected === null ? null : Math.max(0, expected - copier.recovered), errors: copier.errors + (expected === null ? 1 : 0) };
    if (t.rowid && (copier.errors > 0 || expected === null || expected > copier.recovered)) damaged.set(t.name, expected);
  }
  return damaged;
}

/**
 * The second pass over the damaged tables (every rowid table when SQLite cannot open the file): the
 * page scan, then the loss as the indexes account for it.
 */
function scanDamaged(fresh: Database, src: Database | null, damagedPath: string, tables: TableInfo[], damaged: Map<string, number | null>, report: SalvageReport): void {
  const knowledge = new Map<string, IndexKnowledge>();
  const targets = new Map<string, ScanTarget>();
  for (const t of tables) {
    if (!damaged.has(t.name)) continue;
    const k = src ? askIndexes(src, t.name, LISTED_CAP) : undefined;
    if (k) knowledge.set(t.name, k);
    // Without SQLite, the scan reads the indexes page by page (with the fresh CREATE when the damaged one is lost).
    targets.set(t.name, k?.complete ? { columns: t.columns, liveRowids: k.listed } : { columns: t.columns, ...(src ? {} : { countFromPages: t.sql }) });
  }
  const freshColumns = new Map(tables.filter((t) => t.rowid).map((t) => [t.name, t.defs]));
  const { summary, outcomes } = scanInto(fresh, damagedPath, targets, freshColumns);
  report.pageScan = summary;
  for (const [name, firstCount] of damaged) {
    const entry = report.tables[name]!;
    const scanned = outcomes.get(name);
    if (scanned) {
      entry.recovered += scanned.recovered;
      entry.errors += scanned.errors;
    }
    const k = knowledge.get(name);
    const counts = [firstCount, k?.expected ?? null, scanned?.indexes?.expected ?? null].filter((n): n is number => n !== null);
    const expected = counts.length > 0 ? Math.max(...counts) : null;
    const lost = k && src ? nameLost(fresh, name, k.listed, (w) => indexValues(src, name, k.indexes, w)) : scanned?.indexes?.lost;
    if (lost && lost.rows.rows.length > 0) report.lostRows[name] = lost.rows;
    if (expected === null) entry.lost = lost && lost.listed > 0 ? lost.count : null;
    else entry.lost = Math.max(0, expected - entry.recovered, lost?.count ?? 0);
  }
}

function openDamaged(damagedPath: string): Database {
  // Read-only: a missing file is not created (SQLITE_CANTOPEN).
  const src = new BetterSqlite3(damagedPath, { readonly: true });
  try {
    // Read what lies before a cut: SQLite refuses a file shorter than its header says unless the
    // schema is "writable", which better-sqlite3's defensive mode forbids. Harmless on a read-only connection.
    src.unsafeMode(true);
    src.pragma('writable_schema = ON');
    src.prepare('SELECT count(*) FROM sqlite_schema').get();
    return src;
  } catch (err) {
    src.close();
    throw err;
  }
}

/**
 * Copies the readable rows of the damaged database at `damagedPath` into `fresh`. Never modifies the
 * damaged file (it is opened read-only, so its WAL is read, never checkpointed into it). Throws only
 * when writing to `fresh` fails (a full disk): what was committed by then stays.
 */
export function salvageInto(fresh: Database, damagedPath: string, clock: { now(): number } = { now: () => performance.now() }): SalvageReport {
  const t0 = clock.now();
  const tables = freshTables(fresh);
  const report: SalvageReport = { tables: {}, lostRows: {}, ms: 0 };
  let src: Database | null = null;
  let openError: string | undefined;
  try {
    src = openDamaged(damagedPath);
  } catch (err) {
    openError = `the damaged file cannot be read as a database: ${errorMessage(err)}`;
  }
  const fk = fresh.pragma('foreign_keys', { simple: true });
  fresh.pragma('foreign_keys = OFF');
  try {
    let damaged: Map<string, number | null>;
    if (src) damaged = copyThroughSqlite(fresh, src, tables, report);
    else {
      for (const t of tables) report.tables[t.name] = { recovered: 0, lost: null, errors: 1 };
      damaged = new Map(tables.filter((t) => t.rowid).map((t) => [t.name, null]));
    }
    if (damaged.size > 0) scanDamaged(fresh, src, damagedPath, tables, damaged, report);
  } finally {
    fresh.pragma(`foreign_keys = ${fk ? 'ON' : 'OFF'}`);
    src?.close();
  }
  // Not readable by SQLite yet rows found page by page: a salvage, not a failure.
  if (openError && Object.values(report.tables).every((t) => t.recovered === 0)) report.error = openError;
  report.ms = clock.now() - t0;
  return report;
}
