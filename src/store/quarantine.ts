import type { Database } from 'better-sqlite3';
import { closeSync, existsSync, fsyncSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { salvageInto, type SalvageReport, type TableSalvage } from './salvage.js';

/**
 * What happens to a database found corrupt: its files are moved aside (kept for a person to look at,
 * the newest few only), a fresh database is made, and what can still be read is copied into it.
 *
 * A marker file, `<db>.salvage`, makes this survive a crash half-way: it is written before anything
 * moves and removed once the report is stored in the fresh database. A start that finds it redoes
 * the salvage from the quarantined copy it names (or, when it names none, quarantines the database
 * first: the background integrity check leaves it so when it finds damage while the agent runs).
 */

export interface QuarantineReport {
  /** The damaged database, as moved aside. */
  quarantinedTo: string;
  /** ISO time of the quarantine. */
  at: string;
  reason: string;
  /** Rows recovered and lost, per table of the fresh database. */
  tables: Record<string, TableSalvage>;
  recovered: number;
  /** Rows known lost; tables that could not count theirs add nothing here and are listed in `unknownLoss`. */
  lost: number;
  unknownLoss: string[];
  /** Why nothing (or only part) could be salvaged; the agent started on an empty database then. */
  salvageError: string | null;
  salvageMs: number;
}

/** The `database-quarantined` event's fields (JSON). */
export function quarantineEvent(q: QuarantineReport): Record<string, unknown> {
  const tables = Object.fromEntries(Object.entries(q.tables).map(([name, t]) => [name, { recovered: t.recovered, lost: t.lost }]));
  const { quarantinedTo, at, reason, recovered, lost, unknownLoss, salvageError } = q;
  return { quarantinedTo, at, reason, recovered, lost, unknownLoss, salvageError, tables };
}

export interface PendingSalvage {
  reason: string;
  at: string;
  quarantinedTo?: string;
}

/** Quarantined copies kept on disk; older ones are deleted. */
export const KEEP_QUARANTINED = 3;
/** Where the last report is kept (the `kv` table), so it stays visible across restarts. */
export const QUARANTINE_KV_KEY = 'store.quarantine';
export const SQLITE_FILES = ['', '-wal', '-shm'] as const;

const CORRUPT_INFIX = '.corrupt-';

export function pendingMarkerPath(path: string): string {
  return `${path}.salvage`;
}

export function readPendingSalvage(path: string): PendingSalvage | undefined {
  let text: string;
  try {
    text = readFileSync(pendingMarkerPath(path), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const p = JSON.parse(text) as Partial<PendingSalvage>;
    const quarantinedTo = typeof p.quarantinedTo === 'string' && isOurQuarantine(path, p.quarantinedTo) ? p.quarantinedTo : undefined;
    return { reason: typeof p.reason === 'string' ? p.reason : 'a salvage was pending', at: typeof p.at === 'string' ? p.at : new Date(0).toISOString(), ...(quarantinedTo ? { quarantinedTo } : {}) };
  } catch {
    // A torn marker still says the database was found damaged.
    return { reason: 'a salvage was pending (its marker is unreadable)', at: new Date(0).toISOString() };
  }
}

/** A marker names only a quarantined copy of this database, never another file. */
function isOurQuarantine(path: string, candidate: string): boolean {
  return dirname(candidate) === dirname(path) && basename(candidate).startsWith(basename(path) + CORRUPT_INFIX) && !candidate.includes('\0');
}

/** Written atomically and fsynced: a crash leaves the old marker, the new one, or none. */
export function writePendingSalvage(path: string, pending: PendingSalvage): void {
  const marker = pendingMarkerPath(path);
  const tmp = `${marker}.tmp`;
  writeFileSync(tmp, JSON.stringify(pending), { mode: 0o600 });
  const fd = openSync(tmp, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, marker);
  syncDir(dirname(path));
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some filesystems cannot fsync a directory; the rename is then as durable as they make it.
  }
}

/** Moves the database and its WAL and shared-memory files aside; returns the new name. */
export function moveAside(path: string, now: number): string {
  const stamp = new Date(now).toISOString().replace(/[:.]/g, '-');
  let quarantinedTo = `${path}${CORRUPT_INFIX}${stamp}`;
  for (let n = 2; existsSync(quarantinedTo); n++) quarantinedTo = `${path}${CORRUPT_INFIX}${stamp}-${n}`;
  for (const suffix of SQLITE_FILES) {
    if (existsSync(path + suffix)) renameSync(path + suffix, quarantinedTo + suffix);
  }
  syncDir(dirname(path));
  return quarantinedTo;
}

/** Deletes all but the newest `keep` quarantined copies (their names sort by time). */
export function pruneQuarantined(path: string, keep: number, logger: Logger): void {
  const dir = dirname(path);
  const prefix = basename(path) + CORRUPT_INFIX;
  let names: string[];
  try {
    names = readdirSync(dir).filter((f) => f.startsWith(prefix) && !/-(wal|shm)$/.test(f));
  } catch {
    return;
  }
  // Stryker disable next-line MethodExpression: readdirSync (libuv scandir) already returns names in byte order, the order sort() gives these ASCII time stamps
  for (const old of names.sort().slice(0, Math.max(0, names.length - keep))) {
    const file = join(dir, old);
    for (const suffix of SQLITE_FILES) rmSync(file + suffix, { force: true });
    logger.warn({ file }, `deleted the quarantined database ${file}: only the newest ${keep} are kept`);
  }
}

function summarise(salvage: SalvageReport | undefined): Pick<QuarantineReport, 'tables' | 'recovered' | 'lost' | 'unknownLoss'> {
  const tables = salvage?.tables ?? {};
  const all = Object.entries(tables);
  return {
    tables,
    recovered: all.reduce((n, [, t]) => n + t.recovered, 0),
    lost: all.reduce((n, [, t]) => n + (t.lost ?? 0), 0),
    unknownLoss: all.filter(([, t]) => t.lost === null).map(([name]) => name),
  };
}

export interface SalvageStep {
  /** Opens the fresh database at the original path (schema migrated). */
  openFresh(): Database;
  /** Deletes the database files at the original path (a partial fresh one). */
  removeFresh(): void;
  /**
   * Lets the features that own the tables account for what was lost (the outbox counts lost messages
   * per channel), in the fresh database before the marker goes: a crash before that redoes it all.
   */
  onSalvaged?: SalvageHook;
}

/** See `SalvageStep.onSalvaged`. An error it throws is logged; the salvage stands. */
export type SalvageHook = (db: Database, salvage: SalvageReport) => void;

function runHook(hook: SalvageHook | undefined, db: Database, salvage: SalvageReport, logger: Logger): void {
  if (!hook) return;
  try {
    hook(db, salvage);
  } catch (err) {
    logger.warn({ err: errorMessage(err) }, `could not account for the rows the salvage lost: ${errorMessage(err)}`);
  }
}

/**
 * Salvages `pending.quarantinedTo` into a fresh database, stores the report in it, clears the marker.
 * Never throws for the salvage itself: a failed salvage leaves a fresh, empty database and says why.
 */
export function salvageQuarantined(path: string, pending: Required<PendingSalvage>, step: SalvageStep, logger: Logger): { db: Database; report: QuarantineReport } {
  step.removeFresh();
  let db = step.openFresh();
  let salvage: SalvageReport | undefined;
  let salvageError: string | null = null;
  try {
    // The marker makes the salvage redoable from the start, so it need not fsync every chunk; one
    // checkpoint at the end makes it durable before the marker goes.
    const sync = db.pragma('synchronous', { simple: true }) as number;
    db.pragma('synchronous = OFF');
    salvage = salvageInto(db, pending.quarantinedTo);
    runHook(step.onSalvaged, db, salvage, logger);
    db.pragma(`synchronous = ${sync}`);
    db.pragma('wal_checkpoint(TRUNCATE)');
    if (salvage.error) salvageError = salvage.error;
  } catch (err) {
    salvageError = `salvage failed, started on an empty database: ${errorMessage(err)}`;
    db.close();
    step.removeFresh();
    db = step.openFresh();
    salvage = undefined;
  }
  const report: QuarantineReport = {
    quarantinedTo: pending.quarantinedTo,
    at: pending.at,
    reason: pending.reason,
    ...summarise(salvage),
    salvageError,
    salvageMs: Math.round(salvage?.ms ?? 0),
  };
  try {
    db.prepare(
      'INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at',
    ).run(QUARANTINE_KV_KEY, JSON.stringify(report), Date.parse(pending.at) || 0);
  } catch (err) {
    logger.warn({ err: errorMessage(err) }, 'could not keep the quarantine report in the database; it is reported for this run only');
  }
  rmSync(pendingMarkerPath(path), { force: true });
  syncDir(dirname(path));
  const lossText = report.unknownLoss.length > 0 ? `${report.lost} lost (and an unknown number from ${report.unknownLoss.join(', ')})` : `${report.lost} lost`;
  logger.error(
    { file: path, quarantinedTo: report.quarantinedTo, reason: report.reason, recovered: report.recovered, lost: report.lost, tables: report.tables, salvageError },
    salvageError
      ? `database ${path} is corrupt (${report.reason}); moved it to ${report.quarantinedTo}; ${salvageError}`
      : `database ${path} is corrupt (${report.reason}); moved it to ${report.quarantinedTo} and salvaged ${report.recovered} rows into a fresh one, ${lossText}`,
  );
  pruneQuarantined(path, KEEP_QUARANTINED, logger);
  return { db, report };
}
