import BetterSqlite3 from 'better-sqlite3';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SAFETY_FACTOR, WalCheckpointer } from '../../src/store/checkpointer.js';
import { Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

// A real database file and a real worker thread.
const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 10, 28) };

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Writes about `pages` WAL pages of rows (4 KiB pages, a row of 3,000 bytes each). */
function write(db: BetterSqlite3.Database, pages: number): void {
  db.exec('CREATE TABLE IF NOT EXISTS t (x TEXT)');
  const insert = db.prepare('INSERT INTO t VALUES (?)');
  for (let i = 0; i < pages; i += 50) db.transaction(() => { for (let k = 0; k < 50; k++) insert.run('y'.repeat(3000)); })();
}

describe('WalCheckpointer (store.checkpoint = background)', () => {
  it('checkpoints from the worker once the WAL passes the threshold, leaving the main connection a safety net only', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock, checkpoint: 'background' });
    expect(store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000 * SAFETY_FACTOR);
    expect(store.walCheckpointPages).toBe(1000);
    write(store.db, 1500);
    await until('a background checkpoint', () => (store.checkpointStats()?.checkpoints ?? 0) >= 1);
    const stats = store.checkpointStats();
    expect(stats).toMatchObject({ running: true, failures: 0, lastError: null });
    expect(stats?.pagesCopied).toBeGreaterThanOrEqual(1000);
    // The main connection's own checkpoint (at 4,000 pages) never ran: it would have nothing left to copy.
    const [r] = store.db.pragma('wal_checkpoint(PASSIVE)') as Array<{ log: number; checkpointed: number }>;
    expect(r!.log - stats!.pagesCopied).toBeLessThan(1000);
    store.close();
  });

  it('close stops the worker before the WAL is folded back: the file is whole and the WAL empty', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock, checkpoint: 'background' });
    write(store.db, 2500);
    store.close();
    expect(statSync(`${path}-wal`, { throwIfNoEntry: false })?.size ?? 0).toBe(0);
    const db = new BetterSqlite3(path, { readonly: true });
    expect(db.pragma('quick_check', { simple: true })).toBe('ok');
    expect((db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n).toBe(2500);
    db.close();
  });

  it('falls back to SQLite checkpointing on the main connection when the worker cannot run, and says why', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const log = captureLogger();
    // The worker opens its own connection to `path`: a file that does not exist stops it at once.
    const c = new WalCheckpointer(store.db, { path: join(dirs.make(), 'missing.db'), logger: log.logger });
    await until('the fallback', () => !c.stats().running);
    expect(c.stats().lastError).toMatch(/the checkpoint worker could not start: .*missing\.db/);
    expect(store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000);
    expect(log.text()).toMatch(/checkpointing the WAL inline from now on/);
    c.close();
    store.close();
  });
});
