import BetterSqlite3 from 'better-sqlite3';
import { closeSync, existsSync, openSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { migrate } from '../../src/store/database.js';
import type { Migration } from '../../src/store/migrations.js';
import { latestVersion, MIGRATIONS, Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 10, 28, 12, 0, 0) };

describe('store', () => {
  it('creates a private WAL database at the latest schema version', () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    expect(store.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.db.pragma('synchronous', { simple: true })).toBe(2); // FULL
    expect(store.db.pragma('user_version', { simple: true })).toBe(latestVersion());
    expect(statSync(path).mode & 0o777).toBe(0o600);
    store.setKv('a', { b: 1 });
    store.close();
    const again = Store.open({ path, logger: silentLogger(), clock });
    expect(again.getKv('a')).toEqual({ b: 1 });
    again.close();
  });

  it('applies only the migrations not yet applied, each once, in order', () => {
    const db = new BetterSqlite3(':memory:');
    const applied: number[] = [];
    const ms: Migration[] = [
      { version: 2, name: 'two', up: (d) => (applied.push(2), d.exec('CREATE TABLE b (x)')) },
      { version: 1, name: 'one', up: (d) => (applied.push(1), d.exec('CREATE TABLE a (x)')) },
    ];
    expect(migrate(db, ms.slice(1))).toBe(1);
    expect(migrate(db, ms)).toBe(2);
    expect(migrate(db, ms)).toBe(2);
    expect(applied).toEqual([1, 2]);
    db.close();
  });

  it('rolls a failing migration back whole', () => {
    const db = new BetterSqlite3(':memory:');
    const bad: Migration[] = [
      ...MIGRATIONS,
      { version: 99, name: 'bad', up: (d) => { d.exec('CREATE TABLE half (x)'); throw new Error('boom'); } },
    ];
    expect(() => migrate(db, bad)).toThrow('boom');
    expect(db.pragma('user_version', { simple: true })).toBe(latestVersion());
    expect(db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'half'").get()).toEqual({ n: 0 });
    db.close();
  });

  it('refuses a database written by a newer agent', () => {
    const path = join(dirs.make(), 'agent.db');
    const db = new BetterSqlite3(path);
    db.pragma('user_version = 999');
    db.close();
    expect(() => Store.open({ path, logger: silentLogger(), clock })).toThrow(/schema is version 999/);
  });

  it('quarantines a garbage file, logs its name, and starts fresh', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    writeFileSync(path, Buffer.alloc(8192, 'this is not a database '));
    const log = captureLogger();
    const store = Store.open({ path, logger: log.logger, clock });
    expect(store.quarantinedTo).toBeDefined();
    expect(existsSync(store.quarantinedTo!)).toBe(true);
    expect(readdirSync(dir).some((f) => f.startsWith('agent.db.corrupt-'))).toBe(true);
    const err = log.records().find((r) => r.level === 50);
    expect(err?.file).toBe(path);
    expect(String(err?.msg)).toContain(path);
    // The fresh database works.
    store.setKv('k', 1);
    expect(store.getKv('k')).toBe(1);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    store.close();
  });

  it('quarantines a database whose pages are damaged', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    const insert = store.db.prepare('INSERT INTO kv (key, value, updated_at) VALUES (?, ?, 0)');
    store.db.transaction(() => {
      for (let i = 0; i < 2000; i++) insert.run(`k${i}`, 'x'.repeat(200));
    })();
    store.close();
    // Overwrite a stretch of pages in the middle of the file, past the header; then the start is as
    // after a crash (no clean-close marker), so the file is checked.
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(4096 * 4, 0xab), 0, 4096 * 4, 4096 * 3);
    closeSync(fd);
    rmSync(`${path}.clean`);
    const reopened = Store.open({ path, logger: silentLogger(), clock });
    expect(reopened.integrityChecked).toBe(true);
    expect(reopened.quarantinedTo).toBeDefined();
    // The readable rows were salvaged into the fresh database (see salvage.test.ts).
    expect(reopened.db.prepare("SELECT count(*) AS n FROM kv WHERE key LIKE 'k%'").get()).toEqual({ n: 2000 });
    reopened.close();
  });

  it('skips the integrity check after a clean close of an unchanged file, and checks it otherwise', () => {
    const path = join(dirs.make(), 'agent.db');
    const first = Store.open({ path, logger: silentLogger(), clock });
    expect(first.integrityChecked).toBe(true); // a new file has no marker
    first.setKv('k', 1);
    first.close();
    expect(existsSync(`${path}.clean`)).toBe(true);
    const second = Store.open({ path, logger: silentLogger(), clock });
    expect(second.integrityChecked).toBe(false);
    expect(second.getKv('k')).toBe(1);
    // The marker is used up at open: a crash of this run (no close) leaves nothing to vouch for the file.
    expect(existsSync(`${path}.clean`)).toBe(false);
    second.db.close(); // a "crash": the Store is never closed
    expect(Store.open({ path, logger: silentLogger(), clock }).integrityChecked).toBe(true);
  });

  it('vouches for no file whose WAL could not be folded back at close: a reader held it, or the fold failed', () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    store.setKv('k', 1);
    // Another connection in a read transaction: the TRUNCATE checkpoint is busy.
    const reader = new BetterSqlite3(path, { readonly: true });
    reader.exec('BEGIN');
    reader.prepare('SELECT count(*) FROM kv').get();
    store.close();
    expect(existsSync(`${path}.clean`)).toBe(false);
    reader.exec('COMMIT');
    reader.close();

    const other = join(dirs.make(), 'agent.db');
    const s2 = Store.open({ path: other, logger: silentLogger(), clock });
    s2.setKv('k', 1);
    // The connection gone under it: the fold throws, and close goes on without a marker.
    s2.db.close();
    expect(() => s2.close()).not.toThrow();
    expect(existsSync(`${other}.clean`)).toBe(false);
  });

  it('checks a file changed after its clean close (the marker no longer matches)', () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock });
    store.setKv('k', 1);
    store.close();
    // Changed later (a restore from backup, a tool): its mtime moves on.
    const later = new Date(Date.now() + 5_000);
    utimesSync(path, later, later);
    const again = Store.open({ path, logger: silentLogger(), clock });
    expect(again.integrityChecked).toBe(true);
    again.close();
  });

  it('stores and replaces the target state', () => {
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    expect(store.getTarget()).toBeUndefined();
    store.setTarget({ etag: '"a"', version: 1, document: { version: 1, apps: {} }, source: 'cloud' });
    store.setTarget({ etag: '"b"', version: 2, document: { version: 2, apps: {} }, source: 'cloud' });
    expect(store.getTarget()).toMatchObject({ etag: '"b"', version: 2, document: { version: 2 }, source: 'cloud', receivedAt: clock.now() });
    store.close();
  });
});
