import type { Database } from 'better-sqlite3';

/**
 * Runs `fn` (one commit) with the connection's `synchronous` lowered to NORMAL, and puts `level`
 * back after it: the commit is in the WAL when it returns, without an fsync of its own. For a
 * connection at FULL (2) or EXTRA (3) whose writer either does not need the fsync (an ack: a lost
 * one costs a duplicate, not a message) or does it off the event loop (WalSync).
 *
 * `synchronous` is per connection and cannot change inside a transaction: inside one, or at a level
 * already NORMAL or below, `fn` runs as it is. `db.exec` each time, not a prepared statement:
 * SQLite applies `PRAGMA synchronous = X` when the statement is compiled, so a prepared one would do
 * nothing when run (and `exec` costs a quarter of `db.pragma`, which builds a statement object).
 */
export function commitWithoutFsync<T>(db: Pick<Database, 'exec' | 'inTransaction'>, level: number, fn: () => T): T {
  if (level <= 1 || db.inTransaction) return fn();
  db.exec('PRAGMA synchronous = NORMAL');
  try {
    return fn();
  } finally {
    db.exec(`PRAGMA synchronous = ${level}`);
  }
}

/** The connection's `synchronous` level: 0 off, 1 normal, 2 full, 3 extra. */
export function syncLevel(db: Pick<Database, 'pragma'>): number {
  return db.pragma('synchronous', { simple: true }) as number;
}
