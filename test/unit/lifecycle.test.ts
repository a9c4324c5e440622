import BetterSqlite3 from 'better-sqlite3';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { copyDatabase, openableBy, restoreDatabase } from '../../src/lifecycle/db-copy.js';
import { mergePatch, patchPaths } from '../../src/lifecycle/merge-patch.js';
import { ReleaseStore, type Trial } from '../../src/lifecycle/release-store.js';
import { lifecycleView } from '../../src/lifecycle/view.js';
import { extractTar, unpackTarGz } from '../../src/lifecycle/tar.js';
import { TrialWatch } from '../../src/lifecycle/trial.js';
import type { LauncherLink } from '../../src/lifecycle/child-link.js';
import type { SwitchRequest } from '../../src/lifecycle/ipc.js';
import { NOT_LAUNCHED } from '../../src/lifecycle/update-agent.js';
import { updateConfigHandler } from '../../src/lifecycle/update-config.js';
import type { Json } from '../../src/util/json-diff.js';
import { silentLogger } from '../helpers/logger.js';
import { migrate, readCompatMarker } from '../../src/store/database.js';
import type { Migration } from '../../src/store/migrations.js';
import { pax, tar, tarGz, type TarMember } from '../helpers/tar-writer.js';
import { MIGRATIONS } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

describe('the package tar reader', () => {
  const unpack = (members: TarMember[], max = 1_048_576): Promise<{ dest: string; result: { files: number } }> => {
    const dir = dirs.make();
    writeFileSync(join(dir, 'p.tgz'), tarGz(members));
    const dest = join(dir, 'out');
    return unpackTarGz(join(dir, 'p.tgz'), dest, max).then((result) => ({ dest, result }));
  };

  it('unpacks files and directories under the top directory, which it strips; pax and prefix names too', async () => {
    const long = `pkg/${'d'.repeat(120)}/file.txt`;
    const { dest, result } = await unpack([
      { name: 'pkg/', type: '5' },
      { name: 'pkg/package.json', data: '{"name":"iotistic-agent"}' },
      { name: 'pkg/dist/bundle/cli.js', data: 'console.log(1)', mode: 0o755 },
      { name: 'pax', type: 'x', data: pax({ path: long }) },
      { name: 'ignored-short-name', data: 'long' },
    ]);
    expect(result.files).toBe(3);
    expect(readFileSync(join(dest, 'package.json'), 'utf8')).toBe('{"name":"iotistic-agent"}');
    expect(readFileSync(join(dest, 'd'.repeat(120), 'file.txt'), 'utf8')).toBe('long');
    expect(readdirSync(dest).sort()).toEqual(['d'.repeat(120), 'dist', 'package.json']);
  });

  it.each<[string, TarMember[], RegExp]>([
    ['a ".." member', [{ name: 'pkg/a', data: 'x' }, { name: 'pkg/../../evil', data: 'x' }], /climbs out of the package with "\.\."/],
    ['an absolute path', [{ name: '/etc/passwd', data: 'x' }], /has an absolute path/],
    ['a symlink', [{ name: 'pkg/link', type: '2', linkname: '/etc' }], /is a symbolic link/],
    ['a hard link', [{ name: 'pkg/link', type: '1', linkname: 'pkg/a' }], /is a hard link/],
    ['a device', [{ name: 'pkg/dev', type: '3' }], /is a character device/],
    ['a FIFO', [{ name: 'pkg/fifo', type: '6' }], /is a FIFO/],
    ['two top directories', [{ name: 'a/x', data: '1' }, { name: 'b/y', data: '2' }], /outside the package's top directory "a"/],
    ['a pax path with ".."', [{ name: 'h', type: 'x', data: pax({ path: 'pkg/../../x' }) }, { name: 'pkg/ok', data: 'x' }], /climbs out/],
    ['a pax link target', [{ name: 'h', type: 'x', data: pax({ linkpath: '/etc' }) }, { name: 'pkg/ok', data: 'x' }], /link target/],
    ['a size past the end', [{ name: 'pkg/big', data: 'x', size: 1_000_000 }], /cut off/],
  ])('refuses %s and writes nothing outside', async (_what, members, message) => {
    await expect(unpack(members)).rejects.toThrow(message);
  });

  it('refuses a member written twice rather than write through the first', () => {
    const dir = dirs.make();
    writeFileSync(join(dir, 'p.tar'), tar([{ name: 'pkg/a', data: '1' }, { name: 'pkg/a', data: '2' }]));
    expect(() => extractTar(join(dir, 'p.tar'), join(dir, 'out'))).toThrow(/EEXIST/);
  });

  it('refuses an archive that unpacks past the limit, and one that is not gzip, and a bad checksum', async () => {
    await expect(unpack([{ name: 'pkg/big', data: Buffer.alloc(2_000_000) }], 1_048_576)).rejects.toThrow(/more than update.maxPackageBytes \(1048576 bytes\)/);
    const dir = dirs.make();
    writeFileSync(join(dir, 'p.tgz'), 'not gzip');
    await expect(unpackTarGz(join(dir, 'p.tgz'), join(dir, 'out'), 1_048_576)).rejects.toThrow(/not a gzip file/);
    const broken = tar([{ name: 'pkg/a', data: 'x' }]);
    broken[0] = 'q'.charCodeAt(0);
    writeFileSync(join(dir, 'b.tar'), broken);
    expect(() => extractTar(join(dir, 'b.tar'), join(dir, 'out2'))).toThrow(/bad checksum/);
    expect(existsSync(join(dir, 'out2', 'a'))).toBe(false);
  });
});

describe('a trial, on a fake clock', () => {
  const trial = (over: Partial<Trial> = {}): Trial => ({
    kind: 'agent',
    jobId: 'j1',
    from: { release: null, version: '0.1.0', schemaVersion: 12 },
    to: { release: '0.2.0-abc', version: '0.2.0' },
    startedAt: 1_000,
    deadline: 121_000,
    attempts: 1,
    ...over,
  });
  const rules = { probationMs: 30_000, attempts: 3 };

  it('is confirmed once healthy and still up after the probation', () => {
    const w = new TrialWatch(trial(), rules);
    expect(w.beforeStart(1_000)).toEqual({ action: 'wait' });
    w.healthy(10_000);
    expect(w.tick(39_999)).toEqual({ action: 'wait' });
    expect(w.wakeAt()).toBe(40_000);
    expect(w.tick(40_000)).toEqual({ action: 'confirm' });
  });

  it('is rolled back when not healthy by the deadline, with the reason', () => {
    const w = new TrialWatch(trial(), rules);
    expect(w.wakeAt()).toBe(121_000);
    expect(w.tick(121_000)).toEqual({ action: 'rollback', reason: 'version 0.2.0 did not become healthy within 120 s' });
  });

  it('restarts after an exit until the attempts are used up; a crash during the probation counts', () => {
    const w = new TrialWatch(trial({ attempts: 2 }), rules);
    w.healthy(5_000);
    expect(w.exited(1, null)).toEqual({ action: 'restart' });
    expect(w.isHealthy).toBe(false);
    expect(new TrialWatch(trial({ attempts: 3 }), rules).exited(1, null)).toEqual({ action: 'rollback', reason: 'version 0.2.0 exited with code 1 three times during its trial' });
    expect(new TrialWatch(trial({ attempts: 3, kind: 'config' }), rules).exited(null, 'SIGKILL')).toEqual({
      action: 'rollback',
      reason: 'the config of job j1 was killed by SIGKILL three times during its trial',
    });
  });

  it('counts a launcher killed mid-trial as an attempt: past the attempts, rolled back before starting again', () => {
    expect(new TrialWatch(trial({ attempts: 4 }), rules).beforeStart(2_000)).toEqual({ action: 'rollback', reason: 'version 0.2.0 was started three times during its trial without being confirmed' });
  });
});

describe('JSON merge patch (RFC 7396)', () => {
  it('merges objects, removes keys set to null, replaces arrays and scalars', () => {
    const target = { a: 'b', c: { d: 'e', f: 'g' }, list: [1, 2] };
    expect(mergePatch(target, { a: 'z', c: { f: null }, list: [3] })).toEqual({ a: 'z', c: { d: 'e' }, list: [3] });
    expect(mergePatch({ a: 1 }, { b: { c: null } })).toEqual({ a: 1, b: {} });
    expect(mergePatch([1], { a: 1 })).toEqual({ a: 1 });
    expect(mergePatch({ a: 1 }, 'x')).toBe('x');
    expect(target).toEqual({ a: 'b', c: { d: 'e', f: 'g' }, list: [1, 2] });
  });

  it('lists the paths a patch changes', () => {
    expect(patchPaths({ settings: { pollIntervalMs: 1, offline: { maxQueueSize: 5 } }, jobs: null, api: {} })).toEqual(['settings.pollIntervalMs', 'settings.offline.maxQueueSize', 'jobs', 'api']);
  });
});

describe('the database compatibility marker', () => {
  const extra = (olderAgentsCompatible: boolean): Migration => ({ version: 900, name: 'made-up', olderAgentsCompatible, up: (db) => db.exec('CREATE TABLE made_up (x INTEGER) STRICT') });

  it('lets an older agent open a database migrated past it by a compatible migration, not by one that is not', () => {
    const dir = dirs.make();
    for (const compatible of [true, false]) {
      const path = join(dir, `${String(compatible)}.db`);
      const newer = new BetterSqlite3(path);
      migrate(newer, [...MIGRATIONS, extra(compatible)]);
      const latest = Math.max(...MIGRATIONS.map((m) => m.version));
      expect(readCompatMarker(newer)).toBe(compatible ? latest : 900);
      newer.close();
      expect(openableBy(path, latest)).toBe(compatible);
      const older = new BetterSqlite3(path);
      if (compatible) {
        expect(migrate(older, MIGRATIONS)).toBe(900);
        expect(older.pragma('user_version', { simple: true })).toBe(900);
      } else {
        expect(() => migrate(older, MIGRATIONS)).toThrow(expect.objectContaining({ code: 'STORE_TOO_NEW', message: expect.stringContaining('version 900 but this agent knows up to') as unknown }));
      }
      older.close();
    }
  });

  it('treats a newer database without a marker as unusable by older agents, as before', () => {
    const db = new BetterSqlite3(':memory:');
    db.pragma('user_version = 999');
    expect(() => migrate(db, MIGRATIONS)).toThrow(expect.objectContaining({ code: 'STORE_TOO_NEW' }));
    db.close();
  });
});

describe('the database copy taken before a switch', () => {
  it('is put back in place of a database and its WAL that the older agent cannot open', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    const db = new BetterSqlite3(path);
    db.pragma('journal_mode = WAL');
    migrate(db, MIGRATIONS);
    db.exec("INSERT INTO kv (key, value, updated_at) VALUES ('before', '1', 1)");
    copyDatabase(db, join(dir, 'copy.db'));
    expect(statSync(join(dir, 'copy.db')).mode & 0o777).toBe(0o600);
    db.exec("INSERT INTO kv (key, value, updated_at) VALUES ('during', '2', 2)");
    migrate(db, [...MIGRATIONS, { version: 901, name: 'made-up', up: (d) => d.exec('CREATE TABLE later (x INTEGER) STRICT') }]);
    db.close();
    const latest = Math.max(...MIGRATIONS.map((m) => m.version));
    expect(openableBy(path, latest)).toBe(false);
    restoreDatabase(join(dir, 'copy.db'), path);
    expect(openableBy(path, latest)).toBe(true);
    const back = new BetterSqlite3(path, { readonly: true });
    expect((back.prepare('SELECT key FROM kv ORDER BY key').all() as { key: string }[]).map((r) => r.key)).toEqual(['before']);
    back.close();
  });
});

describe('update-config params', () => {
  const requests: SwitchRequest[] = [];
  const link = { requestSwitch: (r: SwitchRequest) => requests.push(r) } as unknown as LauncherLink;
  const setup = (allowKeys: string[] = []): { run: (patch: Json) => Promise<Json>; file: string } => {
    const dir = dirs.make();
    const file = join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ device: { uuid: 'dev-1', apiKey: 'secret-key-0123456789' }, api: { port: 0 } }));
    const handler = updateConfigHandler({ link, dataDir: dir, configFile: file, version: '0.1.0', schemaVersion: 13, env: {}, allowKeys });
    const abort = new AbortController();
    return {
      file,
      run: (patch) => {
        const p = handler({ patch }, { jobId: 'j1', signal: abort.signal, logger: silentLogger() });
        // Once the switch is asked the handler waits for the stop: stop it.
        setTimeout(() => abort.abort(new Error('stopped')), 10);
        return p;
      },
    };
  };

  it('refuses local-only settings unless allowed, names invalid paths, never echoes a secret', async () => {
    const { run, file } = setup();
    await expect(run({ jobs: { allowedCommands: ['/bin/sh'] } })).rejects.toThrow(/jobs\.allowedCommands is a local-only setting/);
    await expect(run({ workloads: null })).rejects.toThrow(/workloads is a local-only setting/);
    await expect(run({ update: { allowConfigKeys: ['dataDir'] } })).rejects.toThrow(/update\.allowConfigKeys/);
    await expect(run({ device: { uuid: 'other-device' } })).rejects.toThrow(/device\.uuid is a local-only setting/);
    await expect(run({ api: { host: '0.0.0.0' } })).rejects.toThrow(/api\.host is a local-only setting/);
    // The device's broker, one or a list: a cloud must not redirect it.
    await expect(run({ mqtt: { url: 'mqtt://elsewhere.test' } })).rejects.toThrow(/mqtt\.url is a local-only setting/);
    await expect(run({ mqtt: { urls: ['mqtt://elsewhere.test'] } })).rejects.toThrow(/mqtt\.urls is a local-only setting/);
    const invalid = run({ mqtt: { password: 5 }, api: { port: 'high' } });
    await expect(invalid).rejects.toThrow(/api\.port: expected/);
    await expect(invalid).rejects.not.toThrow(/secret-key/);
    await expect(run([] as unknown as Json)).rejects.toThrow(/params\.patch: expected a non-empty JSON object/);
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ device: { uuid: 'dev-1', apiKey: 'secret-key-0123456789' }, api: { port: 0 } });
    expect(requests).toEqual([]);
  });

  it('writes the patched file, keeps the old one, and asks for a trial with the changed paths, secrets redacted', async () => {
    const { run, file } = setup(['jobs.allowedCommands', 'device']);
    await expect(run({ jobs: { allowedCommands: ['/bin/true'] }, device: { apiKey: 'new-secret-0123456789' } })).rejects.toThrow('stopped');
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ jobs: { allowedCommands: ['/bin/true'] }, device: { apiKey: 'new-secret-0123456789' } });
    const r = requests.at(-1)!;
    expect(r).toMatchObject({ kind: 'config', jobId: 'j1', configFile: file, changed: { 'jobs.allowedCommands': ['/bin/true'], 'device.apiKey': '[redacted]' } });
    expect(JSON.parse(readFileSync(r.configBackup!, 'utf8'))).toMatchObject({ device: { apiKey: 'secret-key-0123456789' } });
  });

  it('is REJECTED without the launcher', async () => {
    const handler = updateConfigHandler({ link: undefined, dataDir: dirs.make(), configFile: '/x.json', version: '0.1.0', schemaVersion: 13, env: {}, allowKeys: [] });
    await expect(handler({ patch: { a: 1 } }, { jobId: 'j', signal: new AbortController().signal, logger: silentLogger() })).rejects.toThrow(NOT_LAUNCHED);
  });
});

describe('the lifecycle view', () => {
  it('shows the installed version before any update, then the release, the trial and the last outcome from state.json', () => {
    const dataDir = dirs.make();
    expect(lifecycleView(dataDir, '0.1.0', false)).toEqual({ version: '0.1.0', launched: false, release: null, previous: null, trial: null, lastOutcome: null });
    const store = new ReleaseStore(dataDir);
    store.write({
      current: '0.2.0-aaaaaaaaaaaa',
      previous: '0.1.0-bbbbbbbbbbbb',
      trial: { kind: 'agent', jobId: 'j2', from: { release: '0.2.0-aaaaaaaaaaaa', version: '0.2.0', schemaVersion: 13 }, to: { release: '0.3.0-cccccccccccc', version: '0.3.0' }, startedAt: 1_000, deadline: 121_000, attempts: 2 },
      outcomes: [{ jobId: 'j1', status: 'FAILED', details: { reason: 'version 0.3.0 did not become healthy within 120 s' }, at: 500 }],
    });
    expect(lifecycleView(dataDir, '0.2.0', true)).toEqual({
      version: '0.2.0',
      launched: true,
      release: '0.2.0-aaaaaaaaaaaa',
      previous: '0.1.0-bbbbbbbbbbbb',
      trial: { kind: 'agent', jobId: 'j2', from: '0.2.0', to: '0.3.0', startedAt: 1_000, deadline: 121_000, attempts: 2 },
      lastOutcome: { jobId: 'j1', status: 'FAILED', at: 500, reason: 'version 0.3.0 did not become healthy within 120 s' },
    });
  });
});
