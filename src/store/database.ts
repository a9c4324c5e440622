import BetterSqlite3, { type Database } from 'better-sqlite3';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { latestVersion, MIGRATIONS, type Migration } from './migrations.js';

export interface OpenStoreOptions {
  path: string;
  logger: Logger;
  clock: Pick<Clock, 'now'>;
  /** `full` survives power loss; `normal` survives a process crash only (faster). */
  synchronous?: 'full' | 'normal';
  migrations?: readonly Migration[];
  /**
   * locking_mode EXCLUSIVE before WAL: SQLite keeps the WAL index in memory and never creates the
   * `-shm` file, which a full disk cannot take. Only one connection may then use the file.
   */
  exclusive?: boolean;
}

export interface OpenedDatabase {
  db: Database;
  /** Where a corrupt file was moved, when one was found at start. */
  quarantinedTo?: string;
  /** The integrity check ran (false: the file was as the last clean close left it). */
  checked: boolean;
}

const SQLITE_FILES = ['', '-wal', '-shm'];

/** Errors from SQLite that mean the file is not a usable database, as opposed to a full disk or a permission problem. */
function isCorruption(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT' || (typeof code === 'string' && code.startsWith('SQLITE_CORRUPT'));
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

function openAndCheck(path: string, synchronous: 'full' | 'normal', migrations: readonly Migration[], trusted: boolean, exclusive = false): Database {
  const db = new BetterSqlite3(path);
  try {
    if (exclusive) db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('journal_mode = WAL');
    // FULL fsyncs the WAL on every commit, so a committed transaction survives a power cut.
    db.pragma(`synchronous = ${synchronous.toUpperCase()}`);
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    // Bound the WAL so a long offline stretch does not grow it without limit.
    db.pragma('journal_size_limit = 67108864');
    const check = trusted ? 'ok' : db.pragma('quick_check', { simple: true });
    if (check !== 'ok') {
      throw Object.assign(new Error(`integrity check failed: ${String(check)}`), { code: 'SQLITE_CORRUPT' });
    }
    migrate(db, migrations);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

export function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): number {
  const current = db.pragma('user_version', { simple: true }) as number;
  const target = latestVersion(migrations);
  if (current > target) {
    throw new AgentError(
      'STORE_TOO_NEW',
      `the database schema is version ${current} but this agent knows up to ${target}; it was written by a newer agent`,
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
  return target;
}

/**
 * Opens the agent's database: WAL, durable pragmas, migrations, a quick integrity check. A file
 * that is not a database or fails the check is moved aside (all of its files, with a timestamp
 * suffix) and a fresh database takes its place, so the agent keeps running on what it can rebuild.
 */
export function openDatabase(opts: OpenStoreOptions): OpenedDatabase {
  const { path, logger } = opts;
  const synchronous = opts.synchronous ?? 'full';
  const migrations = opts.migrations ?? MIGRATIONS;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const trusted = closedCleanly(path);
  createPrivateFile(path);
  if (trusted) logger.debug({ file: path }, 'database closed cleanly last time and unchanged since: integrity check skipped');
  try {
    return { db: openAndCheck(path, synchronous, migrations, trusted, opts.exclusive), checked: !trusted };
  } catch (err) {
    if (!isCorruption(err)) {
      throw new AgentError('STORE_OPEN_FAILED', `cannot open the database ${path}: ${errorMessage(err)}`, { cause: err });
    }
    const stamp = new Date(opts.clock.now()).toISOString().replace(/[:.]/g, '-');
    const quarantinedTo = `${path}.corrupt-${stamp}`;
    for (const suffix of SQLITE_FILES) {
      if (existsSync(path + suffix)) renameSync(path + suffix, quarantinedTo + suffix);
    }
    logger.error(
      { file: path, quarantinedTo, reason: errorMessage(err) },
      `database ${path} is corrupt; moved it to ${quarantinedTo} and started a fresh one`,
    );
    createPrivateFile(path);
    return { db: openAndCheck(path, synchronous, migrations, false, opts.exclusive), quarantinedTo, checked: true };
  }
}
