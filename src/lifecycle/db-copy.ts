import BetterSqlite3, { type Database } from 'better-sqlite3';
import { chmodSync, copyFileSync, existsSync, rmSync } from 'node:fs';
import { readCompatMarker } from '../store/database.js';

/**
 * A copy of the database taken before a switch to another version (`VACUUM INTO`: consistent, compact,
 * readable while the agent writes). A rollback to an agent that cannot open what the trial left puts it back.
 */
export function copyDatabase(db: Database, to: string): void {
  rmSync(to, { force: true });
  db.prepare('VACUUM INTO ?').run(to);
  chmodSync(to, 0o600);
}

/**
 * Whether an agent whose schema goes up to `schemaVersion` can open the database at `path`: true when
 * the file is at or below its version, or newer but marked usable by it (see `migrate`).
 */
export function openableBy(path: string, schemaVersion: number): boolean {
  if (!existsSync(path)) return true;
  const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
  try {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version <= schemaVersion) return true;
    return schemaVersion >= (readCompatMarker(db) ?? version);
  } finally {
    db.close();
  }
}

/** Puts the copy back in place of the database and its WAL (the agent is stopped). */
export function restoreDatabase(copy: string, path: string): void {
  for (const suffix of ['-wal', '-shm', '.clean']) rmSync(path + suffix, { force: true });
  copyFileSync(copy, `${path}.restore`);
  chmodSync(`${path}.restore`, 0o600);
  rmSync(path, { force: true });
  copyFileSync(`${path}.restore`, path);
  rmSync(`${path}.restore`, { force: true });
}
