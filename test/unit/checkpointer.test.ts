import BetterSqlite3 from 'better-sqlite3';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SAFETY_FACTOR, WalCheckpointer } from '../../src/store/checkpointer.js';
import { Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

// A real database file and a real worker thread.
const dirs = tempDirs();
afterEach(() => {
  vi.useRealTimers();
  dirs.cleanup();
});
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

/**
 * For the fake-clock tests: a main connection, and the path of a database whose wal-index the test
 * writes (`shm(frames, backfilled)`: mxFrame at byte 16, nBackfill at 96). That database does not
 * exist, so a worker started for it fails at once; `starts` tells when a look found the threshold reached.
 */
function watchedWal() {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
  const dir = dirs.make();
  const db = new BetterSqlite3(join(dir, 'main.db'));
  const path = join(dir, 'watched.db');
  const shm = (frames: number, backfilled = 0) => {
    const header = Buffer.alloc(100);
    header.writeUInt32LE(frames, 16);
    header.writeUInt32LE(backfilled, 96);
    writeFileSync(`${path}-shm`, header);
  };
  const watch = () => new WalCheckpointer(db, { path, logger: silentLogger(), thresholdPages: 1000, pollMs: 100, idlePollMs: 1600 });
  return { db, shm, watch };
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
    expect(stats).toMatchObject({ state: 'running', starts: 1, failures: 0, lastError: null });
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

  it('starts no worker while the WAL stays below the threshold (an idle device keeps no second thread)', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const c = new WalCheckpointer(store.db, { path, logger: silentLogger(), pollMs: 5, idlePollMs: 5 });
    write(store.db, 500);
    // Forty looks at a WAL of 500 pages: none starts a worker.
    const end = Date.now() + 200;
    await until('200 ms of looks', () => Date.now() >= end);
    expect(c.stats()).toMatchObject({ state: 'watching', starts: 0, checkpoints: 0 });
    write(store.db, 600);
    await until('a background checkpoint', () => c.stats().checkpoints >= 1);
    expect(c.stats()).toMatchObject({ state: 'running', starts: 1 });
    c.close();
    store.close();
  });

  it('lets an idle worker go and starts a new one when the WAL grows again', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const c = new WalCheckpointer(store.db, { path, logger: silentLogger(), pollMs: 10, idleExitMs: 300 });
    write(store.db, 1500);
    await until('a background checkpoint', () => c.stats().checkpoints >= 1);
    await until('the idle worker to end', () => c.stats().state === 'watching');
    expect(c.stats()).toMatchObject({ starts: 1, failures: 0, lastError: null });
    // The safety net stays where it was: an idle end is not a failure.
    expect(store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000 * SAFETY_FACTOR);
    write(store.db, 1500);
    await until('a second worker\'s checkpoint', () => c.stats().checkpoints >= 2);
    expect(c.stats()).toMatchObject({ starts: 2, failures: 0 });
    c.close();
    expect(c.stats().state).toBe('closed');
    store.close();
  });

  it('falls back to SQLite checkpointing on the main connection when the worker cannot run, and says why', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const log = captureLogger();
    // A wal-index saying 2,000 frames are due, for a database that does not exist: the worker starts and cannot open it.
    const missing = join(dirs.make(), 'missing.db');
    const header = Buffer.alloc(100);
    header.writeUInt32LE(2000, 16);
    writeFileSync(`${missing}-shm`, header);
    const c = new WalCheckpointer(store.db, { path: missing, logger: log.logger });
    await until('the fallback', () => c.stats().state === 'failed');
    expect(c.stats()).toMatchObject({ starts: 1 });
    expect(c.stats().lastError).toMatch(/the checkpoint worker could not start: .*missing\.db/);
    expect(store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000);
    expect(log.text()).toMatch(/checkpointing the WAL inline from now on/);
    c.close();
    store.close();
  });

  it('falls back at once when the main thread cannot read the WAL index', () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const log = captureLogger();
    const c = new WalCheckpointer(store.db, { path: join(dirs.make(), 'gone.db'), logger: log.logger });
    expect(c.stats()).toMatchObject({ state: 'failed', starts: 0 });
    expect(c.stats().lastError).toMatch(/the WAL index could not be read: .*gone\.db-shm/);
    expect(store.db.pragma('wal_autocheckpoint', { simple: true })).toBe(1000);
    c.close();
    store.close();
  });

  it('looks at a WAL that stopped moving less and less often (doubling up to idlePollMs), and every pollMs again once it moves', () => {
    const { db, shm, watch } = watchedWal();
    shm(10);
    const c = watch();
    // Looks at 0, 100, 300, 700, 1500, 3100, 4700, 6300...: the WAL does not move.
    vi.advanceTimersByTime(5000);
    shm(20);
    vi.advanceTimersByTime(1299);
    expect(c.stats()).toMatchObject({ state: 'watching', starts: 0 });
    // The look at 6300 sees the WAL moved (20 frames, below the threshold): the next is 100 ms later.
    vi.advanceTimersByTime(1);
    shm(1000);
    vi.advanceTimersByTime(99);
    expect(c.stats().starts).toBe(0);
    vi.advanceTimersByTime(1);
    expect(c.stats().starts).toBe(1);
    c.close();
    db.close();
  });

  it('a quiet WAL that grows past the threshold is seen within idlePollMs, not before its next look', () => {
    const { db, shm, watch } = watchedWal();
    // 1,500 frames of which 600 are already in the database: 900 pending, below the threshold.
    shm(1500, 600);
    const c = watch();
    vi.advanceTimersByTime(5000);
    expect(c.stats().starts).toBe(0);
    shm(1600, 600);
    // Last look at 4700: the next is at 6300.
    vi.advanceTimersByTime(1299);
    expect(c.stats().starts).toBe(0);
    vi.advanceTimersByTime(1);
    expect(c.stats().starts).toBe(1);
    c.close();
    db.close();
  });
  it('close stops a running worker at once, without a warning: no checkpoint runs after it, whatever is written', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const log = captureLogger();
    const c = new WalCheckpointer(store.db, { path, logger: log.logger, pollMs: 5, idlePollMs: 5 });
    write(store.db, 1500);
    await until('a background checkpoint', () => c.stats().checkpoints >= 1);
    c.close();
    const after = c.stats().checkpoints;
    write(store.db, 1500);
    const end = Date.now() + 200;
    await until('200 ms', () => Date.now() >= end);
    expect(c.stats()).toMatchObject({ state: 'closed', checkpoints: after });
    expect(log.text()).not.toMatch(/did not stop/);
    store.close();
  });

  it('a running worker leaves a WAL below the threshold alone (it reads the wal-index in the host byte order)', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const c = new WalCheckpointer(store.db, { path, logger: silentLogger(), pollMs: 5, idlePollMs: 5, idleExitMs: 60_000 });
    write(store.db, 1500);
    await until('a background checkpoint', () => c.stats().checkpoints >= 1);
    const after = c.stats().checkpoints;
    // Twenty frames more, far below the threshold: some forty looks of the worker, none checkpoints.
    write(store.db, 20);
    const end = Date.now() + 200;
    await until('200 ms of looks', () => Date.now() >= end);
    expect(c.stats()).toMatchObject({ state: 'running', checkpoints: after });
    c.close();
    store.close();
  });

  it('looks again pollMs after its first look, whatever the WAL held then (one frame here)', () => {
    const { db, shm, watch } = watchedWal();
    shm(1);
    const c = watch();
    vi.advanceTimersByTime(1);
    shm(1000);
    vi.advanceTimersByTime(98);
    expect(c.stats().starts).toBe(0);
    vi.advanceTimersByTime(1);
    expect(c.stats().starts).toBe(1);
    c.close();
    db.close();
  });
});
