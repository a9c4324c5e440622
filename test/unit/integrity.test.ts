import BetterSqlite3 from 'better-sqlite3';
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackgroundIntegrityCheck, fastCheck, isCorruptionError } from '../../src/store/integrity.js';
import { captureLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The checks of the database: the fast one at open (first and last row of each table) and the full
 * one in a child process, with the status, the log line and the callback an operator relies on.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

/** A closed database with a rowid table of `rows` padded rows, a keyed table, and a table whose comment says WITHOUT ROWID. */
function makeDb(path: string, rows = 2_000): void {
  const db = new BetterSqlite3(path);
  db.exec(`CREATE TABLE k (k INTEGER PRIMARY KEY, v TEXT) without  rowid;
    CREATE TABLE "odd ""name""" (a TEXT /* WITHOUT ROWID */);
    INSERT INTO k VALUES (1, 'one'), (2, 'two');`);
  const ins = db.prepare('INSERT INTO "odd ""name""" (a) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < rows; i++) ins.run(`${i}`.padEnd(300, 'p'));
  })();
  db.close();
}

/** Overwrites the last leaf page of the rowid table: its last row can no longer be read. */
function damageLastLeaf(path: string): void {
  const db = new BetterSqlite3(path, { readonly: true });
  const pages = db.prepare(`SELECT pageno FROM dbstat WHERE name = 'odd "name"' AND pagetype = 'leaf' ORDER BY path`).all() as { pageno: number }[];
  db.close();
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, (pages.at(-1)!.pageno - 1) * 4096);
  closeSync(fd);
}

/** A clock that reads 1,000 at the start and 1,250 ever after. */
function steppingClock(): { now: () => number } {
  let started = false;
  return {
    now: () => {
      if (started) return 1_250;
      started = true;
      return 1_000;
    },
  };
}

describe('the fast check at open', () => {
  it('passes a sound database with keyed tables and quoted names', () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path);
    const db = new BetterSqlite3(path);
    expect(() => fastCheck(db)).not.toThrow();
    db.close();
  });

  it("finds a damaged last page of a rowid table (a comment's WITHOUT ROWID does not make it keyed)", () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path);
    damageLastLeaf(path);
    const db = new BetterSqlite3(path);
    let caught: unknown;
    try {
      fastCheck(db);
    } catch (err) {
      caught = err;
    }
    expect(isCorruptionError(caught)).toBe(true);
    db.close();
  });
});

describe('which errors mean damage', () => {
  it('SQLITE_CORRUPT and its extended codes and SQLITE_NOTADB; not a full disk, a lock or a non-error', () => {
    for (const code of ['SQLITE_CORRUPT', 'SQLITE_CORRUPT_INDEX', 'SQLITE_NOTADB']) expect(isCorruptionError({ code })).toBe(true);
    for (const err of [{ code: 'SQLITE_FULL' }, { code: 'SQLITE_BUSY' }, { code: 'SQLITE_NOTADB_X' }, { code: 'X_SQLITE_CORRUPT' }, {}, null, undefined]) {
      expect(isCorruptionError(err)).toBe(false);
    }
  });
});

describe('the background integrity check', () => {
  it('a sound database: ok, with its duration, logged as passed', async () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path, 10);
    const log = captureLogger();
    const corrupt: string[] = [];
    const check = new BackgroundIntegrityCheck({ path, logger: log.logger, clock: steppingClock(), onCorrupt: (d) => corrupt.push(d) });
    expect(check.current.state).toBe('running');
    const status = await check.done;
    expect(status).toEqual({ state: 'ok', startedAt: 1_000, finishedAt: 1_250, ms: 250, detail: null });
    expect(check.current).toEqual(status);
    expect(corrupt).toEqual([]);
    expect(log.records().find((r) => r.msg === 'database integrity check passed')).toMatchObject({ file: path, ms: 250 });
  });

  it('a damaged database: failed with the findings, logged as such, the owner told once', async () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path);
    damageLastLeaf(path);
    const log = captureLogger();
    const corrupt: string[] = [];
    const status = await new BackgroundIntegrityCheck({ path, logger: log.logger, clock: steppingClock(), onCorrupt: (d) => corrupt.push(d) }).done;
    expect(status.state).toBe('failed');
    expect(status.detail).toBeTruthy();
    expect(corrupt).toEqual([status.detail]);
    const line = log.records().find((r) => String(r.msg).includes('failed its integrity check'));
    expect(line).toMatchObject({
      file: path,
      detail: status.detail,
      msg: `database ${path} failed its integrity check (${status.detail}); it will be quarantined and salvaged at the next start`,
    });
  });

  it('a check that cannot run (no file) is an error, not a verdict: logged as a warning, the owner not told', async () => {
    const path = join(dirs.make(), 'missing.db');
    const log = captureLogger();
    const corrupt: string[] = [];
    const status = await new BackgroundIntegrityCheck({ path, logger: log.logger, clock: steppingClock(), onCorrupt: (d) => corrupt.push(d) }).done;
    expect(status.state).toBe('error');
    expect(status.detail).toMatch(/unable to open database file|does not exist/);
    expect(corrupt).toEqual([]);
    const line = log.records().find((r) => String(r.msg).startsWith('the database integrity check could not run'));
    expect(line).toMatchObject({ file: path, err: status.detail, msg: `the database integrity check could not run: ${status.detail}` });
  });

  it('stop kills a running check: an error saying it was stopped', async () => {
    const path = join(dirs.make(), 'agent.db');
    makeDb(path, 10);
    const log = captureLogger();
    const check = new BackgroundIntegrityCheck({ path, logger: log.logger, clock: steppingClock(), onCorrupt: () => undefined });
    check.stop();
    const status = await check.done;
    expect(status).toMatchObject({ state: 'error', detail: 'the check was stopped (SIGKILL)' });
    check.stop(); // after the end: nothing to kill, no error
  });
});
