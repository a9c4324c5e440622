import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/util/clock.js';
import { ProcessFiles, type PidRecord } from '../../src/workloads/runtimes/process-files.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function files(root: string): ProcessFiles {
  return new ProcessFiles({ root, clock: systemClock, logger: silentLogger() });
}

function rec(id: string, pid = 4242): PidRecord {
  return { id, pid, startTicks: '123', app: 'a', service: 's', configHash: 'h', agentPid: 1 };
}

function put(path: string, text: string): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, text);
}

const aside = (root: string): string[] => (existsSync(join(root, '.aside')) ? readdirSync(join(root, '.aside')) : []);

describe('the process runtime\'s files', () => {
  it('lays out a fresh root: apps/ (marked) apart from run/ (0700)', () => {
    const root = join(dirs.make(), 'services');
    const f = files(root);
    f.prepare();
    expect(readdirSync(join(root, 'apps'))).toEqual(['.layout']);
    expect(statSync(join(root, 'run')).mode & 0o777).toBe(0o700);
    expect(f.serviceDir('run', 'x.json')).toBe(join(root, 'apps', 'run', 'x.json'));
  });

  it('moves the previous layout into apps/, whatever the app names (even "run" and "apps"), once', () => {
    const root = dirs.make();
    put(join(root, 'edge', 'ticker', 'output.log'), 'edge log\n');
    put(join(root, 'apps', 'svc', 'output.log'), 'an app named apps\n');
    put(join(root, 'run', 'x.json', 'output.log'), 'app run, service x.json\n');
    put(join(root, 'run', 'run.x.json.abc.1.json'), JSON.stringify(rec('run.x.json.abc.1')));
    chmodSync(join(root, 'run', 'run.x.json.abc.1.json'), 0o600);
    put(join(root, 'junk'), 'not ours');
    const f = files(root);
    f.prepare();
    expect(readdirSync(root).sort()).toEqual(['.aside', 'apps', 'run']);
    expect(readFileSync(join(root, 'apps', 'edge', 'ticker', 'output.log'), 'utf8')).toBe('edge log\n');
    expect(readFileSync(join(root, 'apps', 'apps', 'svc', 'output.log'), 'utf8')).toBe('an app named apps\n');
    expect(readFileSync(join(root, 'apps', 'run', 'x.json', 'output.log'), 'utf8')).toBe('app run, service x.json\n');
    expect(readdirSync(join(root, 'run'))).toEqual(['run.x.json.abc.1.json']);
    expect(f.readPidFiles().map((p) => p.rec.id)).toEqual(['run.x.json.abc.1']);
    expect(aside(root)).toHaveLength(1);
    // A second start finds layout 2 and moves nothing.
    files(root).prepare();
    expect(readdirSync(join(root, 'apps')).sort()).toEqual(['.layout', 'apps', 'edge', 'run']);
    expect(aside(root)).toHaveLength(1);
  });

  it('completes a migration cut off halfway', () => {
    const root = dirs.make();
    put(join(root, '.migrating', 'edge', 'ticker', 'output.log'), 'moved before the crash\n');
    put(join(root, 'other', 's', 'output.log'), 'not yet moved\n');
    files(root).prepare();
    expect(readFileSync(join(root, 'apps', 'edge', 'ticker', 'output.log'), 'utf8')).toBe('moved before the crash\n');
    expect(readFileSync(join(root, 'apps', 'other', 's', 'output.log'), 'utf8')).toBe('not yet moved\n');
    expect(existsSync(join(root, '.migrating'))).toBe(false);
  });

  it('reads only pid files it can trust; moves everything else in run/ aside without blocking or throwing', () => {
    const root = dirs.make();
    const f = files(root);
    f.prepare();
    const run = join(root, 'run');
    const good = join(run, 'good.json');
    writeFileSync(good, JSON.stringify(rec('good')), { mode: 0o600 });
    mkdirSync(join(run, 'dir.json'));
    expect(spawnSync('mkfifo', [join(run, 'fifo.json')]).status).toBe(0);
    writeFileSync(join(root, 'target.json'), JSON.stringify(rec('link')), { mode: 0o600 });
    symlinkSync(join(root, 'target.json'), join(run, 'link.json'));
    writeFileSync(join(run, 'foreign.json'), JSON.stringify(rec('foreign')), { mode: 0o600 });
    chownSync(join(run, 'foreign.json'), 65534, 65534);
    writeFileSync(join(run, 'loose.json'), JSON.stringify(rec('loose')));
    chmodSync(join(run, 'loose.json'), 0o622);
    writeFileSync(join(run, 'garbage.json'), '{', { mode: 0o600 });
    writeFileSync(join(run, 'huge.json'), ' '.repeat(100_000), { mode: 0o600 });
    writeFileSync(join(run, 'init.json'), JSON.stringify(rec('init', 1)), { mode: 0o600 });
    writeFileSync(join(run, 'notes.txt'), 'hello', { mode: 0o600 });
    const found = f.readPidFiles();
    expect(found).toEqual([{ path: good, rec: rec('good') }]);
    expect(readdirSync(run)).toEqual(['good.json']);
    expect(aside(root)).toHaveLength(9);
    expect(readFileSync(join(root, 'target.json'), 'utf8')).toBe(JSON.stringify(rec('link')));
  });

  it('replaces a run/ that is a symlink or another user\'s, and repairs its own loose one', () => {
    const root = dirs.make();
    const elsewhere = dirs.make();
    writeFileSync(join(elsewhere, 'p.json'), JSON.stringify(rec('p')), { mode: 0o600 });
    mkdirSync(join(root, 'apps'));
    writeFileSync(join(root, 'apps', '.layout'), '2\n');
    symlinkSync(elsewhere, join(root, 'run'));
    const f = files(root);
    f.prepare();
    expect(lstatSync(join(root, 'run')).isDirectory()).toBe(true);
    expect(f.readPidFiles()).toEqual([]);
    expect(readdirSync(elsewhere)).toEqual(['p.json']);

    chownSync(join(root, 'run'), 65534, 65534);
    files(root).prepare();
    expect(statSync(join(root, 'run')).uid).toBe(process.geteuid?.());

    chmodSync(join(root, 'run'), 0o777);
    writeFileSync(join(root, 'run', 'p.json'), JSON.stringify(rec('p')), { mode: 0o600 });
    const g = files(root);
    g.prepare();
    expect(statSync(join(root, 'run')).mode & 0o777).toBe(0o700);
    expect(g.readPidFiles().map((p) => p.rec.id)).toEqual(['p']);
  });

  it('makes a service dir whatever stands in its way, and refuses names that would leave it', () => {
    const root = dirs.make();
    const f = files(root);
    f.prepare();
    writeFileSync(join(root, 'apps', 'a'), 'a file where the app dir goes');
    expect(f.ensureServiceDir('a', 's', ['output.log'])).toBe(join(root, 'apps', 'a', 's'));
    mkdirSync(join(root, 'apps', 'a', 's', 'output.log'));
    f.ensureServiceDir('a', 's', ['output.log']);
    expect(existsSync(join(root, 'apps', 'a', 's', 'output.log'))).toBe(false);
    expect(aside(root)).toHaveLength(2);
    for (const [app, svc] of [['..', 'x'], ['a', '../../etc'], ['A', 'b'], ['a', '.layout']]) {
      expect(() => f.serviceDir(app as string, svc as string)).toThrow(expect.objectContaining({ code: 'UNSAFE_NAME' }));
    }
  });

  it('writes a pid file through no planted link', () => {
    const root = dirs.make();
    const f = files(root);
    f.prepare();
    writeFileSync(join(root, 'precious'), 'keep me');
    symlinkSync(join(root, 'precious'), join(root, 'run', 'a.s.h.1.json'));
    f.writePidFile(rec('a.s.h.1'));
    expect(readFileSync(join(root, 'precious'), 'utf8')).toBe('keep me');
    expect(f.readPidFiles().map((p) => p.rec.id)).toEqual(['a.s.h.1']);
    expect(() => f.writePidFile(rec('../x'))).toThrow(expect.objectContaining({ code: 'UNSAFE_NAME' }));
  });
});
