import BetterSqlite3 from 'better-sqlite3';
import { copyFileSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CacheWarmer } from '../../src/outbox/warm-cache.js';
import { writePendingSalvage } from '../../src/store/quarantine.js';
import { Store } from '../helpers/store.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The start's page-cache warm-up: a read-only worker runs the outbox's recovery query while the
 * agent's modules load. What a user could be hurt by is checked here: that it never changes the
 * database's files (a start's checks still see them as they were), never fails a start, and skips
 * files it must not or need not read. That it warms the cache is measured by bench:restart.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

/** A database with queued rows as a kill -9 leaves it: committed frames still in the WAL, no connection open. */
function crashedDatabase(): string {
  const path = join(dirs.make(), 'agent.db');
  Store.open({ path, logger: silentLogger(), clock: { now: Date.now } }).close();
  const db = new BetterSqlite3(path);
  db.pragma('journal_mode = WAL');
  db.pragma('wal_autocheckpoint = 0');
  const insert = db.prepare("INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, 'telemetry', 20, 0, 0, 2, '{}')");
  db.transaction(() => {
    for (let i = 0; i < 500; i++) insert.run(`m-${i}`);
  })();
  // The files as they are while the writer holds them, copied: what a kill -9 leaves behind.
  const crashed = join(dirs.make(), 'agent.db');
  for (const s of ['', '-wal', '-shm']) copyFileSync(`${path}${s}`, `${crashed}${s}`);
  db.close();
  return crashed;
}

const files = (path: string) => [path, `${path}-wal`].map((f) => (existsSync(f) ? `${statSync(f).size}:${statSync(f).mtimeMs}` : 'none'));

describe('CacheWarmer', () => {
  it('reads a backlog on a worker, as the only connection, without changing the database or its WAL', async () => {
    const path = crashedDatabase();
    const before = files(path);
    expect(before[1]).not.toBe('none');
    const warmer = new CacheWarmer(path, 1);
    expect(warmer.started).toBe(true);
    await warmer.done;
    // A connection that could write would have folded the WAL into the database as it closed, last.
    expect(files(path)).toEqual(before);
    const db = new BetterSqlite3(path, { readonly: true });
    expect(db.prepare('SELECT count(*) AS n FROM outbox').get()).toEqual({ n: 500 });
    db.close();
  });

  it('skips a small database, a missing one and one waiting for its salvage; a garbage file only means no warm-up', async () => {
    const path = crashedDatabase();
    expect(new CacheWarmer(path).started).toBe(false); // well under 16 MiB
    const missing = join(dirs.make(), 'none.db');
    expect(new CacheWarmer(missing).started).toBe(false);
    const forced = new CacheWarmer(missing, 0);
    await expect(forced.done).resolves.toBeUndefined();
    expect(existsSync(missing)).toBe(false); // not created
    writePendingSalvage(path, { reason: 'test', at: new Date(0).toISOString() });
    expect(new CacheWarmer(path, 1).started).toBe(false);

    const garbage = join(dirs.make(), 'agent.db');
    writeFileSync(garbage, Buffer.alloc(64 * 1024, 0x5a));
    const w = new CacheWarmer(garbage, 1);
    expect(w.started).toBe(true);
    await expect(w.done).resolves.toBeUndefined();
    expect(statSync(garbage).size).toBe(64 * 1024);
  });
});
