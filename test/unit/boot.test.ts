import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { trustedFile } from '../../src/boot/data-dir.js';
import { DataDirDisk } from '../../src/boot/disk.js';
import { loadIdentity, saveIssuedCredentials } from '../../src/boot/identity.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterAll(() => dirs.cleanup());

describe('the data dir disk and its reserve', () => {
  it('releases the reserve when the disk fills, refuses producers while it is gone, and makes it again with room', () => {
    const dataDir = dirs.make();
    let free = 100 << 20;
    let now = 0;
    const { logger, records } = captureLogger();
    const disk = new DataDirDisk({ dataDir, reserveBytes: 64 * 1024, minFreeBytes: 10 << 20, logger, now: () => now, freeBytes: () => free });
    expect(disk.check()).toMatchObject({ state: 'ok', reserve: { present: true } });
    expect(statSync(join(dataDir, 'disk-reserve')).size).toBe(64 * 1024);
    expect(disk.refusal()).toBeUndefined();

    free = 5 << 20;
    now += 5_000;
    expect(disk.check().state).toBe('low');
    expect(disk.refusal()).toBeUndefined();

    free = 1000;
    now += 5_000;
    // Read again after a second: no wait for the loop.
    expect(disk.refusal()).toMatch(new RegExp(`disk holding the data dir ${dataDir} is full \\(1000 bytes free`));
    expect(existsSync(join(dataDir, 'disk-reserve'))).toBe(false);
    expect(records().some((r) => String(r.msg).startsWith(`disk full where ${dataDir} lives`))).toBe(true);

    // Room for the reserve but not twice: still full (no flapping), then back.
    free = 100 * 1024;
    now += 5_000;
    expect(disk.check().state).toBe('full');
    free = 20 << 20;
    now += 5_000;
    expect(disk.refusal()).toBeUndefined();
    expect(disk.view()).toMatchObject({ state: 'ok', freeBytes: 20 << 20, dataDir, reserve: { present: true } });
  });

  it('runs without a reserve it cannot make for a reason other than space, and is not "full" for it', () => {
    const notADir = join(dirs.make(), 'file');
    writeFileSync(notADir, 'x');
    const { logger, records } = captureLogger();
    const disk = new DataDirDisk({ dataDir: notADir, reserveBytes: 4096, minFreeBytes: 0, logger, now: () => 0, freeBytes: () => 100 << 20 });
    expect(disk.check().state).toBe('ok');
    expect(disk.refusal()).toBeUndefined();
    expect(records().some((r) => String(r.msg).startsWith('cannot make the disk reserve'))).toBe(true);
  });

  it('at start, gives the reserve back only when less than its size is free', () => {
    const dataDir = dirs.make();
    let free = 100 << 20;
    const disk = new DataDirDisk({ dataDir, reserveBytes: 4096, minFreeBytes: 0, logger: silentLogger(), now: () => 0, freeBytes: () => free });
    disk.check();
    expect(disk.releaseIfFull()).toBe(false);
    free = 100;
    expect(disk.releaseIfFull()).toBe(true);
    expect(existsSync(join(dataDir, 'disk-reserve'))).toBe(false);
  });
});

describe('identity', () => {
  const legacyNone = (): undefined => undefined;

  it('is made once, 0600, and read without a write after', () => {
    const dataDir = dirs.make();
    const a = loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: legacyNone });
    expect(a.uuid).toMatch(/^[0-9a-f]{32}$/);
    const path = join(dataDir, 'identity.json');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const mtime = statSync(path).mtimeMs;
    expect(loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: () => 'ff'.repeat(16) })).toEqual(a);
    expect(statSync(path).mtimeMs).toBe(mtime);
    expect(readdirSync(dataDir)).toEqual(['identity.json']);
  });

  it('takes an older agent\'s uuid and key, and moves aside a key file others may write', () => {
    const dataDir = dirs.make();
    writeFileSync(join(dataDir, 'local-api.key'), 'an-older-agents-key-0123\n', { mode: 0o600 });
    const a = loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: () => 'ab'.repeat(16) });
    expect(a).toEqual({ uuid: 'ab'.repeat(16), localApiKey: 'an-older-agents-key-0123' });

    const other = dirs.make();
    writeFileSync(join(other, 'local-api.key'), 'a-key-anyone-could-write\n');
    chmodSync(join(other, 'local-api.key'), 0o666);
    const { logger, records } = captureLogger();
    const b = loadIdentity({ dataDir: other, logger, now: Date.UTC(2026, 0, 1), legacyUuid: legacyNone });
    expect(b.localApiKey).not.toBe('a-key-anyone-could-write');
    expect(readdirSync(other).sort()).toEqual(['identity.json', 'local-api.key.untrusted-2026-01-01T00-00-00-000Z']);
    expect(records().some((r) => r.level === 50 && String(r.msg).includes('lets group/other write it'))).toBe(true);
  });

  it('keeps what it can from a damaged file', () => {
    const dataDir = dirs.make();
    writeFileSync(join(dataDir, 'identity.json'), JSON.stringify({ uuid: 'cd'.repeat(16), localApiKey: 'short' }), { mode: 0o600 });
    const a = loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: legacyNone });
    expect(a.uuid).toBe('cd'.repeat(16));
    expect(a.localApiKey).not.toBe('short');
    expect(JSON.parse(readFileSync(join(dataDir, 'identity.json'), 'utf8'))).toEqual(a);
  });

  it('keeps the device key the cloud issued (0600), reads it back, forgets it, and drops a damaged one whole', () => {
    const dataDir = dirs.make();
    const path = join(dataDir, 'identity.json');
    const a = loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: legacyNone });
    const issued = { uuid: a.uuid, deviceApiKey: 'issued-device-key-1', mqtt: { username: a.uuid, password: 'issued-device-key-1' } };
    saveIssuedCredentials(dataDir, a, issued);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const { logger, text } = captureLogger();
    expect(loadIdentity({ dataDir, logger, now: 0, legacyUuid: legacyNone })).toEqual({ ...a, issued });
    expect(text()).not.toContain('issued-device-key-1');
    saveIssuedCredentials(dataDir, a, undefined);
    expect(loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: legacyNone })).toEqual(a);

    writeFileSync(path, JSON.stringify({ ...a, issued: { uuid: a.uuid, deviceApiKey: 'has a space' } }), { mode: 0o600 });
    expect(loadIdentity({ dataDir, logger: silentLogger(), now: 0, legacyUuid: legacyNone })).toEqual(a);
  });
});

describe('trustedFile', () => {
  it('trusts only a regular file of ours that group/other cannot write', () => {
    const dir = dirs.make();
    writeFileSync(join(dir, 'ok'), 'x', { mode: 0o600 });
    expect(trustedFile(join(dir, 'ok'), silentLogger(), 0)).toBe(true);
    expect(trustedFile(join(dir, 'missing'), silentLogger(), 0)).toBe(false);
    writeFileSync(join(dir, 'loose'), 'x');
    chmodSync(join(dir, 'loose'), 0o620);
    expect(trustedFile(join(dir, 'loose'), silentLogger(), 0)).toBe(false);
    expect(existsSync(join(dir, 'loose'))).toBe(false);
  });
});
