import BetterSqlite3 from 'better-sqlite3';
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Store } from '../helpers/store.js';
import { TARGET_MIRROR_FILE } from '../../src/store/target-mirror.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The target in force is copied outside the database, so a corrupt database that loses the target's
 * page does not leave the device with none until the cloud answers.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 11, 5, 8, 0, 0) };
const TARGET = { etag: '"t9"', version: 9, document: { version: 9, apps: { web: { services: { nginx: { image: 'nginx:1.27' } } } } }, source: 'cloud' as const };

function paths(): { dir: string; db: string; mirror: string } {
  const dir = dirs.make();
  return { dir, db: join(dir, 'agent.db'), mirror: join(dir, TARGET_MIRROR_FILE) };
}

const open = (db: string, mirror: string, logger = silentLogger()): Store => Store.open({ path: db, logger, clock, targetMirror: mirror });

/** Overwrites the page holding `table` (target_state by default), then starts as after a crash (the file is checked). */
function damagePageOf(db: string, table = 'target_state'): void {
  const ro = new BetterSqlite3(db, { readonly: true });
  const pages = (ro.prepare('SELECT pageno FROM dbstat WHERE name = ?').all(table) as { pageno: number }[]).map((r) => r.pageno);
  ro.close();
  expect(pages.length).toBe(1);
  const fd = openSync(db, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0x3c), 0, 4096, (pages[0]! - 1) * 4096);
  closeSync(fd);
  rmSync(`${db}.clean`, { force: true });
}

describe('the copy of the target outside the database', () => {
  it('is written with every target, 0600, and a salvage that lost the target takes it back from it', () => {
    const { db, mirror } = paths();
    const first = open(db, mirror);
    first.setTarget({ ...TARGET, version: 8, etag: '"t8"' });
    first.setTarget(TARGET);
    first.close();
    expect(statSync(mirror).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(mirror, 'utf8'))).toMatchObject({ version: 9, etag: '"t9"', source: 'cloud' });

    damagePageOf(db);
    const log = captureLogger();
    const second = open(db, mirror, log.logger);
    expect(second.quarantine).toBeDefined();
    expect(second.getTarget()).toMatchObject({ ...TARGET, receivedAt: clock.now() });
    expect(log.records().some((r) => String(r.msg).startsWith('the target was lost with the damaged database; took back version 9 (cloud)'))).toBe(true);
    second.close();
  });

  it('a lost target and no usable copy: none in force, and the log says why', () => {
    const { db, mirror } = paths();
    const first = open(db, mirror);
    first.setTarget(TARGET);
    first.close();
    writeFileSync(mirror, '{"format":1,"version":', { mode: 0o600 });
    damagePageOf(db);
    const log = captureLogger();
    const second = open(db, mirror, log.logger);
    expect(second.quarantine).toBeDefined();
    expect(second.getTarget()).toBeUndefined();
    expect(log.records().some((r) => String(r.msg).includes('cannot be taken back') && String(r.msg).includes('the copy is not JSON'))).toBe(true);
    second.close();
  });

  it('a damaged database that never held a target: nothing is said to be lost', () => {
    const { db, mirror } = paths();
    const first = open(db, mirror);
    first.setKv('k', 'v');
    first.close();
    damagePageOf(db, 'kv');
    const log = captureLogger();
    const second = open(db, mirror, log.logger);
    expect(second.quarantine?.tables['target_state']).toMatchObject({ recovered: 0, lost: 0 });
    expect(second.getTarget()).toBeUndefined();
    expect(log.records().filter((r) => String(r.msg).includes('the target was lost'))).toEqual([]);
    second.close();
  });

  it('an intact database without a target is not given one from a copy; one with a target and no copy makes the copy', () => {
    const { db, mirror } = paths();
    Store.open({ path: db, logger: silentLogger(), clock }).close();
    writeFileSync(mirror, JSON.stringify({ format: 1, ...TARGET, receivedAt: 1 }), { mode: 0o600 });
    const s = open(db, mirror);
    expect(s.getTarget()).toBeUndefined();
    s.close();

    rmSync(mirror);
    // A database from before copies were kept.
    const old = Store.open({ path: db, logger: silentLogger(), clock });
    old.setTarget(TARGET);
    old.close();
    expect(existsSync(mirror)).toBe(false);
    open(db, mirror).close();
    expect(JSON.parse(readFileSync(mirror, 'utf8'))).toMatchObject({ version: 9, document: TARGET.document });
  });

  it('clearing the target (local mode ended) removes the copy too: a later salvage gives back no stale target', () => {
    const { db, mirror } = paths();
    const s = open(db, mirror);
    s.setTarget({ ...TARGET, etag: null, source: 'local' });
    expect(existsSync(mirror)).toBe(true);
    s.clearTarget();
    expect(s.getTarget()).toBeUndefined();
    expect(existsSync(mirror)).toBe(false);
    s.close();
  });

  it('a copy that cannot be written (its directory gone) is logged; the target is stored all the same', () => {
    const { db, dir } = paths();
    const log = captureLogger();
    const s = open(db, join(dir, 'missing', TARGET_MIRROR_FILE), log.logger);
    s.setTarget(TARGET);
    expect(s.getTarget()).toMatchObject({ version: 9 });
    expect(log.records().some((r) => r.level === 40 && String(r.msg).startsWith('could not write the copy of the target'))).toBe(true);
    s.close();
  });
});
