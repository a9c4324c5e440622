import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { TARGET_MIRROR_FILE } from '../../src/store/target-mirror.js';
import { Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/** What the store tells an operator about its database, and the target copy it keeps beside it. */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 11, 5, 4, 0, 0) };
const TARGET = { etag: '"t9"', version: 9, document: { version: 9, apps: {} }, source: 'cloud' as const };

describe('database health', () => {
  it('a garbage file quarantined at this start: said so in the status and the health', () => {
    const path = join(dirs.make(), 'agent.db');
    writeFileSync(path, Buffer.alloc(8192, 'this is not a database '));
    const store = Store.open({ path, logger: silentLogger(), clock });
    expect(store.integrityStatus()).toEqual({ state: 'ok', startedAt: null, finishedAt: null, ms: null, detail: 'quarantined at this start' });
    expect(store.databaseHealth()).toMatchObject({ quarantinedThisStart: true, salvagePending: null });
    store.close();
    const later = Store.open({ path, logger: silentLogger(), clock });
    expect(later.integrityStatus().detail).toBeNull();
    expect(later.databaseHealth()).toMatchObject({ quarantinedThisStart: false, quarantine: { reason: expect.stringMatching(/not a database/) as unknown } });
    later.close();
  });

  it('inline checkpoints are due at SQLite\'s autocheckpoint size', () => {
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    expect(store.walCheckpointPages).toBe(store.db.pragma('wal_autocheckpoint', { simple: true }));
    expect(store.walCheckpointPages).toBeGreaterThan(1);
    store.close();
  });

  it('an error in use starts one check, says so with the file and why; none once closed', async () => {
    const path = join(dirs.make(), 'agent.db');
    const log = captureLogger();
    const store = Store.open({ path, logger: log.logger, clock });
    store.suspectCorruption('SQLITE_CORRUPT: database disk image is malformed');
    store.suspectCorruption('again');
    const warns = log.records().filter((r) => String(r.msg).startsWith('database error in use'));
    expect(warns).toEqual([
      expect.objectContaining({ file: path, why: 'SQLITE_CORRUPT: database disk image is malformed', msg: 'database error in use (SQLITE_CORRUPT: database disk image is malformed): checking the database' }),
    ]);
    expect((await store.integrityResult()).state).toBe('ok');
    store.close();
    store.suspectCorruption('after close');
    expect(log.records().filter((r) => String(r.msg).startsWith('database error in use'))).toHaveLength(1);
  });

  it('an exclusive store (a full disk) starts no check on an error in use', () => {
    const log = captureLogger();
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: log.logger, clock, exclusive: true });
    store.suspectCorruption('SQLITE_CORRUPT');
    expect(store.integrityStatus().state).not.toBe('running');
    expect(log.records().filter((r) => String(r.msg).startsWith('database error in use'))).toEqual([]);
    store.close();
  });
});

describe('the target copy beside the database', () => {
  it('an existing copy is left as it is at open; clearing the target deletes it, and a missing copy is no error', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    const mirror = join(dir, TARGET_MIRROR_FILE);
    const first = Store.open({ path, logger: silentLogger(), clock });
    first.setTarget(TARGET);
    first.close();
    writeFileSync(mirror, 'kept as it is', { mode: 0o600 });
    const log = captureLogger();
    const store = Store.open({ path, logger: log.logger, clock, targetMirror: mirror });
    expect(readFileSync(mirror, 'utf8')).toBe('kept as it is');
    store.clearTarget();
    expect(existsSync(mirror)).toBe(false);
    store.clearTarget();
    expect(log.records().filter((r) => r.level === 'warn' || r.level === 40)).toEqual([]);
    store.close();
  });
});
