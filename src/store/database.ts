import BetterSqlite3, { type Database } from 'better-sqlite3';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { fastCheck } from './integrity.js';
import { COMPAT_TABLE, latestVersion, oldestCompatibleReader, type Migration } from './migrations.js';
import { moveAside, readPendingSalvage, salvageQuarantined, SQLITE_FILES, writePendingSalvage, type QuarantineReport, type SalvageHook } from './quarantine.js';

export interface OpenStoreOptions {
  path: string;
  logger: Logger;
  clock: Pick<Clock, 'now'>;
  /** `full` survives power loss; `normal` survives a process crash only (faster). */
  synchronous?: 'full' | 'normal';
  /** The schema, from the layer that knows the parts (the agent's: src/database-schema.ts). */
  migrations: readonly Migration[];
  /**
   * locking_mode EXCLUSIVE before WAL: SQLite keeps the WAL index in memory and never creates the
   * `-shm` file, which a full disk cannot take. Only one connection may then use the file.
   */
  exclusive?: boolean;
  /**
   * `inline` (the default here) runs `quick_check` at open, reading every page; `deferred` runs only
   * a fast check at open and leaves the full one to the caller (`BackgroundIntegrityCheck`), so a
   * start does not grow with the backlog.
   */
  integrityCheck?: 'inline' | 'deferred';
  /** Called with what a salvage recovered and lost, in the fresh database (see `SalvageStep.onSalvaged`). */
  onSalvaged?: SalvageHook;
}

export interface OpenedDatabase {
  db: Database;
  /** Set when a corrupt file was found at start: where it went and what was salvaged from it. */
  quarantine?: QuarantineReport;
  /** The file was (or, deferred, is to be) checked: false when the last clean close vouched for it. */
  checked: boolean;
}

/** Errors from SQLite that mean the file is not a usable database, as opposed to a full disk or a permission problem. */
function isCorruption(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  // SQLITE_CORRUPT and its extended codes (SQLITE_CORRUPT_INDEX, _SEQUENCE, _VTAB).
  return code === 'SQLITE_NOTADB' || (typeof code === 'string' && code.startsWith('SQLITE_CORRUPT'));
}

function createPrivateFile(path: string): void {
  // Create the file ourselves so its mode is 0600 from the first byte; SQLite gives the WAL and
  // shared-memory files the same mode as the database.
  if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  chmodSync(path, 0o600);
}

/**
 * A database the agent closed cleanly leaves `<path>.clean`, the file's size and mtime right after it
 * was folded back and closed. The next open that finds the file as it was left trusts it and skips
 * the integrity check, which reads every page (seconds for a large queue on an SD card, at every
 * graceful restart or update). A crash or a power cut leaves no marker, and a file changed since the
 * marker was written fails the comparison: both are checked. The marker is removed at open, so a
 * crash of this run cannot vouch for the file either. What it cannot see is damage that changes
 * neither size nor mtime while the agent is stopped (silent media decay): that surfaces as
 * SQLITE_CORRUPT errors in use, and the next unclean start checks the file.
 */
const CLEAN_SUFFIX = '.clean';

function fingerprint(path: string): string {
  const st = statSync(path);
  return `${st.size}:${st.mtimeMs}`;
}

/** Writes the marker; called after the last connection closed. Never throws. */
export function markClosedCleanly(path: string): void {
  try {
    writeFileSync(path + CLEAN_SUFFIX, fingerprint(path), { mode: 0o600 });
  } catch {
    // No marker: the next start checks the file, which is only slower.
  }
}

/** Whether the file is as a clean close left it. Consumes the marker either way. */
function closedCleanly(path: string): boolean {
  const marker = path + CLEAN_SUFFIX;
  let mark: string;
  try {
    mark = readFileSync(marker, 'utf8');
  } catch {
    return false;
  }
  rmSync(marker, { force: true });
  try {
    return mark === fingerprint(path) && !existsSync(`${path}-wal`);
  } catch {
    return false;
  }
}

function openAndCheck(path: string, synchronous: 'full' | 'normal', migrations: readonly Migration[], check: 'none' | 'fast' | 'full', exclusive = false): Database {
  const db = new BetterSqlite3(path);
  try {
    if (exclusive) db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('journal_mode = WAL');
    // FULL fsyncs the WAL on every commit, so a committed transaction survives a power cut.
    // Stryker disable next-line MethodExpression: SQLite reads the pragma's keyword in any case
    db.pragma(`synchronous = ${synchronous.toUpperCase()}`);
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    // Bound the WAL so a long offline stretch does not grow it without limit.
    db.pragma('journal_size_limit = 67108864');
    if (check === 'fast') fastCheck(db);
    const result = check === 'full' ? db.pragma('quick_check', { simple: true }) : 'ok';
    if (result !== 'ok') {
      throw Object.assign(new Error(`integrity check failed: ${String(result)}`), { code: 'SQLITE_CORRUPT' });
    }
    migrate(db, migrations);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/**
 * The oldest schema version that can still read and write the database, kept beside `user_version` so
 * an older agent (after a rollback) knows whether it may open a database a newer one migrated;
 * undefined in a database written before there was one.
 */
export function readCompatMarker(db: Database): number | undefined {
  const exists = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(COMPAT_TABLE);
  if (!exists) return undefined;
  const row = db.prepare(`SELECT oldest_reader FROM ${COMPAT_TABLE} WHERE id = 1`).get() as { oldest_reader: number } | undefined;
  return row?.oldest_reader;
}

export function migrate(db: Database, migrations: readonly Migration[]): number {
  const current = db.pragma('user_version', { simple: true }) as number;
  const target = latestVersion(migrations);
  if (current > target) {
    // Written by a newer agent: usable when every migration past ours said older agents can live with it.
    const oldest = readCompatMarker(db) ?? current;
    if (target >= oldest) return current;
    throw new AgentError(
      'STORE_TOO_NEW',
      `the database schema is version ${current} but this agent knows up to ${target}; it was written by a newer agent${oldest !== current ? ` that needs at least version ${oldest}` : ''}`,
    );
  }
  const versions = migrations.map((m) => m.version);
  if (new Set(versions).size !== versions.length) throw new AgentError('STORE_MIGRATIONS_INVALID', `two migrations share a version: ${versions.join(', ')}`);
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (m.version <= current) continue;
    db.transaction(() => {
      m.up(db);
      db.pragma(`user_version = ${m.version}`);
    })();
  }
  const oldest = oldestCompatibleReader(migrations, target);
  if (readCompatMarker(db) !== oldest) {
    db.transaction(() => {
      db.exec(`CREATE TABLE IF NOT EXISTS ${COMPAT_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 1), oldest_reader INTEGER NOT NULL) STRICT`);
      db.prepare(`INSERT INTO ${COMPAT_TABLE} (id, oldest_reader) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET oldest_reader = excluded.oldest_reader`).run(oldest);
    })();
  }
  return target;
}

/**
 * Opens the agent's database: WAL, durable pragmas, migrations, an integrity check. A file that is
 * not a database or fails the check is moved aside (all of its files, with a timestamp suffix), a
 * fresh database takes its place and what can still be read is salvaged into it (see quarantine.ts),
 * so the agent keeps running on what it kept and can rebuild.
 */
export function openDatabase(opts: OpenStoreOptions): OpenedDatabase {
  const { path, logger } = opts;
  const synchronous = opts.synchronous ?? 'full';
  const { migrations } = opts;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const pending = readPendingSalvage(path);
  if (pending) return { ...recover(opts, synchronous, migrations, pending.reason, pending.quarantinedTo, pending.at), checked: true };
  const trusted = closedCleanly(path);
  createPrivateFile(path);
  if (trusted) logger.debug({ file: path }, 'database closed cleanly last time and unchanged since: integrity check skipped');
  const check = trusted ? 'none' : opts.integrityCheck === 'deferred' ? 'fast' : 'full';
  try {
    return { db: openAndCheck(path, synchronous, migrations, check, opts.exclusive), checked: !trusted };
  } catch (err) {
    if (!isCorruption(err)) {
      throw new AgentError('STORE_OPEN_FAILED', `cannot open the database ${path}: ${errorMessage(err)}`, { cause: err });
    }
    return { ...recover(opts, synchronous, migrations, errorMessage(err)), checked: true };
  }
}

/** Quarantines the database (unless an interrupted salvage already did) and salvages it into a fresh one. */
function recover(
  opts: OpenStoreOptions,
  synchronous: 'full' | 'normal',
  migrations: readonly Migration[],
  reason: string,
  quarantinedTo?: string,
  at?: string,
): { db: Database; quarantine: QuarantineReport } {
  const { path } = opts;
  rmSync(path + CLEAN_SUFFIX, { force: true });
  const when = quarantinedTo && at ? at : new Date(opts.clock.now()).toISOString();
  const moved = quarantinedTo ?? moveAside(path, opts.clock.now());
  try {
    writePendingSalvage(path, { reason, at: when, quarantinedTo: moved });
  } catch (err) {
    // Without the marker a crash during the salvage loses it (the copy stays on disk); the start goes on.
    opts.logger.warn({ err: errorMessage(err) }, `could not write the salvage marker: ${errorMessage(err)}`);
  }
  const { db, report } = salvageQuarantined(
    path,
    { reason, at: when, quarantinedTo: moved },
    {
      openFresh: () => {
        createPrivateFile(path);
        return openAndCheck(path, synchronous, migrations, 'none', opts.exclusive);
      },
      removeFresh: () => {
        for (const suffix of SQLITE_FILES) rmSync(path + suffix, { force: true });
      },
      ...(opts.onSalvaged ? { onSalvaged: opts.onSalvaged } : {}),
    },
    opts.logger,
  );
  return { db, quarantine: report };
}
