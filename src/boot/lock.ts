import BetterSqlite3, { type Database } from 'better-sqlite3';
import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { trustedFile } from './data-dir.js';

export const LOCK_FILE = 'agent.lock';
export const LOCK_PID_FILE = 'agent.lock.pid';

export interface DataDirLock {
  readonly path: string;
  release(): void;
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED';
}

/** The pid the holder wrote next to the lock, when it could. */
export function lockHolderPid(dataDir: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(join(dataDir, LOCK_PID_FILE), 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Overwrites in place, then trims: an existing file's blocks take the new pid even on a full disk. */
function writePid(path: string): void {
  const text = Buffer.from(`${process.pid}\n`);
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT, 0o600);
  try {
    writeSync(fd, text, 0, text.length, 0);
    ftruncateSync(fd, text.length);
  } finally {
    closeSync(fd);
  }
}

/**
 * One agent per data dir. Node has no flock(2), so the lock is SQLite's: a connection to
 * `agent.lock` holds an EXCLUSIVE transaction for the life of the process. SQLite takes it with
 * fcntl(2) record locks, which the kernel drops when the process dies (kill -9 included), and which
 * are per file, so two containers sharing the dir through a bind mount see each other (an abstract
 * unix socket would be per network namespace). journal_mode MEMORY: taking the lock writes nothing,
 * so it works on a full disk. Nothing else in this process may open the lock file: closing any
 * descriptor of it would drop an fcntl lock.
 */
export function lockDataDir(dataDir: string, logger: Logger, now: number): DataDirLock {
  const path = join(dataDir, LOCK_FILE);
  // A lock file someone else planted (or could swap) is moved aside, not locked.
  trustedFile(path, logger, now);
  trustedFile(join(dataDir, LOCK_PID_FILE), logger, now);
  let db: Database;
  try {
    // Created ahead so its mode is 0600 from the first byte, as every file of the agent's.
    closeSync(openSync(path, 'a', 0o600));
    db = new BetterSqlite3(path);
  } catch (err) {
    throw new AgentError('DATA_DIR_LOCK_FAILED', `cannot open the lock file ${path}: ${errorMessage(err)}`, { cause: err });
  }
  try {
    db.pragma('busy_timeout = 0');
    db.pragma('journal_mode = MEMORY');
    db.exec('BEGIN EXCLUSIVE');
  } catch (err) {
    db.close();
    if (!isBusy(err)) throw new AgentError('DATA_DIR_LOCK_FAILED', `cannot lock ${path}: ${errorMessage(err)}`, { cause: err });
    const pid = lockHolderPid(dataDir);
    throw new AgentError(
      'DATA_DIR_LOCKED',
      `another agent is running on the data dir ${dataDir} (pid ${pid ?? 'unknown'}, holding ${path}); one agent per data dir: stop it or use another --data-dir`,
    );
  }
  try {
    writePid(join(dataDir, LOCK_PID_FILE));
  } catch (err) {
    // Only the message of a second agent loses the pid; the lock itself holds.
    logger.warn({ err: errorMessage(err) }, `could not write the lock holder's pid next to ${path}`);
  }
  return {
    path,
    release: () => {
      if (db.open) db.close();
    },
  };
}
