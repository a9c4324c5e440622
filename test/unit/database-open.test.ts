import BetterSqlite3 from 'better-sqlite3';
import { closeSync, existsSync, mkdirSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { markClosedCleanly, migrate, openDatabase, type OpenStoreOptions } from '../../src/store/database.js';
import { pendingMarkerPath } from '../../src/store/quarantine.js';
import { MIGRATIONS } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Opening the agent's database: when a clean close lets the check be skipped, which check runs,
 * what a damaged file becomes, and the errors a caller sees when the file cannot be used at all.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 11, 5, 4, 0, 0) };
const opts = (path: string, more: Partial<OpenStoreOptions> = {}): OpenStoreOptions => ({ path, logger: silentLogger(), clock, migrations: MIGRATIONS, ...more });

/** A closed agent database with a rowid table of 2,000 padded rows whose last leaf can be damaged. */
function makeDb(path: string): void {
  const { db } = openDatabase(opts(path));
  db.exec('CREATE TABLE pad (v TEXT)');
  const ins = db.prepare('INSERT INTO pad (v) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < 2_000; i++) ins.run(`${i}`.padEnd(300, 'p'));
  })();
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
}

function damageLastLeaf(path: string): void {
  const ro = new BetterSqlite3(path, { readonly: true });
  const pages = ro.prepare("SELECT pageno FROM dbstat WHERE name = 'pad' AND pagetype = 'leaf' ORDER BY path").all() as { pageno: number }[];
  ro.close();
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, (pages.at(-1)!.pageno - 1) * 4096);
  closeSync(fd);
}

describe('opening the database', () => {
  it('a clean close leaves a private marker; the next open trusts the file, says so, and consumes the marker', () => {
    const path = join(dirs.make(), 'agent.db');
    openDatabase(opts(path)).db.close();
    markClosedCleanly(path);
    expect(statSync(`${path}.clean`).mode & 0o777).toBe(0o600);
    const log = captureLogger();
    const opened = openDatabase(opts(path, { logger: log.logger }));
    expect(opened.checked).toBe(false);
    expect(existsSync(`${path}.clean`)).toBe(false);
    expect(log.records().find((r) => String(r.msg).includes('integrity check skipped'))).toMatchObject({
      file: path,
      msg: 'database closed cleanly last time and unchanged since: integrity check skipped',
    });
    opened.db.close();
  });

  it('a WAL beside a cleanly closed file: not trusted, checked', () => {
    const path = join(dirs.make(), 'agent.db');
    openDatabase(opts(path)).db.close();
    markClosedCleanly(path);
    writeFileSync(`${path}-wal`, '');
    const opened = openDatabase(opts(path));
    expect(opened.checked).toBe(true);
    opened.db.close();
  });

  it('deferred: the fast check at open finds a damaged last page and the file is quarantined', () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path);
    damageLastLeaf(path);
    const opened = openDatabase(opts(path, { integrityCheck: 'deferred' }));
    expect(opened.checked).toBe(true);
    expect(opened.quarantine?.reason).toMatch(/malformed|corrupt/i);
    opened.db.close();
  });

  it('inline: quick_check findings are the quarantine reason', () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path);
    // A middle leaf: the first and last rows stay readable, quick_check still finds the damage.
    const ro = new BetterSqlite3(path, { readonly: true });
    const pages = ro.prepare("SELECT pageno FROM dbstat WHERE name = 'pad' AND pagetype = 'leaf' ORDER BY path").all() as { pageno: number }[];
    ro.close();
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, (pages[Math.floor(pages.length / 2)]!.pageno - 1) * 4096);
    closeSync(fd);
    const opened = openDatabase(opts(path));
    expect(opened.quarantine?.reason).toMatch(/^integrity check failed: /);
    opened.db.close();
  });

  it('a salvage left pending by a crash is redone at the next open, which counts as checked', () => {
    const path = join(dirs.make(), 'agent.db');
    openDatabase(opts(path)).db.close();
    writeFileSync(pendingMarkerPath(path), JSON.stringify({ reason: 'integrity check: page 9', at: '2026-12-05T03:00:00.000Z' }));
    const opened = openDatabase(opts(path));
    expect(opened.checked).toBe(true);
    // No copy named yet: the database is quarantined now, at this start's time.
    expect(opened.quarantine).toMatchObject({ reason: 'integrity check: page 9', at: new Date(clock.now()).toISOString() });
    expect(existsSync(pendingMarkerPath(path))).toBe(false);
    opened.db.close();
  });

  it('exclusive: the WAL index stays in memory (no -shm file, which a full disk could not take) and no other connection reads the file', () => {
    const path = join(dirs.make(), 'x.db');
    const { db } = openDatabase(opts(path, { exclusive: true }));
    db.exec('CREATE TABLE t (v TEXT); INSERT INTO t VALUES (1)');
    expect(existsSync(`${path}-wal`)).toBe(true);
    expect(existsSync(`${path}-shm`)).toBe(false);
    const other = new BetterSqlite3(path, { fileMustExist: true });
    expect(() => other.prepare('SELECT count(*) FROM t').get()).toThrow(/locked|busy/i);
    other.close();
    db.close();
    const shared = join(dirs.make(), 's.db');
    const { db: db2 } = openDatabase(opts(shared));
    db2.exec('CREATE TABLE t (v TEXT); INSERT INTO t VALUES (1)');
    expect(existsSync(`${shared}-shm`)).toBe(true);
    db2.close();
  });

  it('a garbage file (not a database) is quarantined, not an error', () => {
    const path = join(dirs.make(), 'agent.db');
    writeFileSync(path, Buffer.alloc(8192, 'this is not a database '));
    const opened = openDatabase(opts(path));
    expect(opened.quarantine?.reason).toMatch(/not a database/);
    opened.db.close();
  });

  it('a file it cannot open is an error naming it, with the cause, and is not quarantined', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    mkdirSync(path);
    let caught: { code?: string; message?: string; cause?: unknown } | undefined;
    try {
      openDatabase(opts(path));
    } catch (err) {
      caught = err as typeof caught;
    }
    expect(caught).toMatchObject({ code: 'STORE_OPEN_FAILED', message: expect.stringContaining(`cannot open the database ${path}: `) as unknown });
    expect(caught?.cause).toBeInstanceOf(Error);
    expect(statSync(path).isDirectory()).toBe(true);
  });

  it('refuses a newer schema and migrations that share a version, each with its code', () => {
    const db = new BetterSqlite3(':memory:');
    db.pragma('user_version = 999');
    expect(() => migrate(db, MIGRATIONS)).toThrow(expect.objectContaining({ code: 'STORE_TOO_NEW' }));
    db.pragma('user_version = 0');
    const twice = [MIGRATIONS[0]!, { ...MIGRATIONS[0]!, name: 'again' }];
    const v = MIGRATIONS[0]!.version;
    expect(() => migrate(db, twice)).toThrow(expect.objectContaining({ code: 'STORE_MIGRATIONS_INVALID', message: `two migrations share a version: ${v}, ${v}` }));
    db.close();
  });
});
