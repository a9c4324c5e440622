import BetterSqlite3, { type Database } from 'better-sqlite3';
import { errorMessage } from '../util/errors.js';

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
 */

export interface TableSalvage {
  recovered: number;
  /** Rows known to be lost: `expected - recovered` when the damaged table could still count its rows, else null (unknown). */
  lost: number | null;
  /** Read errors skipped over (each cost one or more rows). */
  errors: number;
}

export interface SalvageReport {
  tables: Record<string, TableSalvage>;
  /** Set when salvage could not read the damaged file at all (e.g. not a database): nothing was copied. */
  error?: string;
  ms: number;
}

/** Rows per read and per write transaction. */
const CHUNK = 2_000;
/** Largest rowid SQLite assigns. */
const MAX_ROWID = 2n ** 63n - 1n;

const quote = (name: string): string => `"${name.replaceAll('"', '""')}"`;

interface TableInfo {
  name: string;
  columns: string[];
  rowid: boolean;
}

/** Tables of the fresh database, with their columns, in creation order. */
function freshTables(fresh: Database): TableInfo[] {
  const rows = fresh
    .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
    .all() as { name: string; sql: string }[];
  return rows.map(({ name, sql }) => {
    const info = fresh.pragma(`table_info(${quote(name)})`) as { name: string; type: string; pk: number }[];
    const rowid = !/WITHOUT\s+ROWID/i.test(sql.slice(sql.lastIndexOf(')')));
    // An INTEGER PRIMARY KEY is the rowid itself: copied as `rowid`, not twice.
    const pks = info.filter((c) => c.pk > 0);
    const alias = rowid && pks.length === 1 && pks[0]!.type.toUpperCase() === 'INTEGER' ? pks[0]!.name : undefined;
    return { name, columns: info.map((c) => c.name).filter((c) => c !== alias), rowid };
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

class TableCopier {
  recovered = 0;
  errors = 0;
  private readonly write: (rows: unknown[][]) => void;

  constructor(fresh: Database, table: string, columns: string[], withRowid: boolean) {
    const cols = [...(withRowid ? ['rowid'] : []), ...columns];
    const one = fresh.prepare(`INSERT INTO ${quote(table)} (${cols.map(quote).join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`);
    this.write = fresh.transaction((rows: unknown[][]) => {
      for (const r of rows) {
        try {
          one.run(r);
          this.recovered++;
        } catch (err) {
          // Only a row the schema refuses is skipped; a full disk or an I/O error ends the salvage.
          if (!String((err as { code?: unknown }).code).startsWith('SQLITE_CONSTRAINT')) throw err;
          this.errors++;
        }
      }
    });
  }

  flush(rows: unknown[][]): void {
    if (rows.length > 0) this.write(rows);
    rows.length = 0;
  }
}

/** Whether reading from `after` (exclusive) yields a row without an error: the seek past a bad page. */
function readableFrom(src: Database, table: string, after: bigint): 'row' | 'end' | 'error' {
  try {
    const r = src.prepare(`SELECT rowid FROM ${quote(table)} WHERE rowid > ? ORDER BY rowid LIMIT 1`).safeIntegers(true).get(after);
    return r === undefined ? 'end' : 'row';
  } catch {
    return 'error';
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
    if (readableFrom(src, table, at) !== 'error') {
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
    if (readableFrom(src, table, mid) === 'error') bad = mid;
    else hi = mid;
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
    let read = 0;
    const from = after;
    try {
      for (const row of select.iterate(after) as IterableIterator<unknown[]>) {
        after = row[0] as bigint;
        batch.push(row);
        read++;
      }
      copier.flush(batch);
      // A damaged page can return rows out of order: never read the same stretch forever.
      if (read < CHUNK || after <= from) return;
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
  const code = String((err as { code?: unknown }).code ?? '');
  return code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_NOTADB') || code.startsWith('SQLITE_IOERR') || code.startsWith('SQLITE_ERROR') || code === 'SQLITE_RANGE';
}

/**
 * Copies the readable rows of the damaged database at `damagedPath` into `fresh`. Never modifies the
 * damaged file (it is opened read-only, so its WAL is read, never checkpointed into it). Throws only
 * when writing to `fresh` fails (a full disk): what was committed by then stays.
 */
export function salvageInto(fresh: Database, damagedPath: string, clock: { now(): number } = { now: () => performance.now() }): SalvageReport {
  const t0 = clock.now();
  const tables = freshTables(fresh);
  const report: SalvageReport = { tables: {}, ms: 0 };
  let src: Database;
  try {
    src = new BetterSqlite3(damagedPath, { readonly: true, fileMustExist: true });
    // Read what lies before a cut: SQLite refuses a file shorter than its header says unless the
    // schema is "writable", which better-sqlite3's defensive mode forbids. Harmless on a read-only connection.
    src.unsafeMode(true);
    src.pragma('writable_schema = ON');
    src.prepare('SELECT count(*) FROM sqlite_schema').get();
  } catch (err) {
    report.error = `the damaged file cannot be read as a database: ${errorMessage(err)}`;
    for (const t of tables) report.tables[t.name] = { recovered: 0, lost: null, errors: 1 };
    report.ms = clock.now() - t0;
    return report;
  }
  try {
    const fk = fresh.pragma('foreign_keys', { simple: true });
    fresh.pragma('foreign_keys = OFF');
    try {
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
      }
    } finally {
      fresh.pragma(`foreign_keys = ${fk ? 'ON' : 'OFF'}`);
    }
  } finally {
    src.close();
  }
  report.ms = clock.now() - t0;
  return report;
}
