import { describe, expect, it } from 'vitest';
import { configHash } from '../../src/workloads/planner.js';
import { containerOptions } from '../../src/workloads/runtimes/docker-create.js';
import { parseSize, parseTmpfs } from '../../src/workloads/service-options.js';
import { validateTarget, type ServiceSpec } from '../../src/workloads/target-schema.js';

function spec(s: Record<string, unknown>): ServiceSpec {
  const r = validateTarget({ version: 1, apps: { a: { services: { s } } } });
  if (!r.ok) throw new Error(r.message);
  return r.target.apps.a?.services.s as ServiceSpec;
}

function refusal(s: Record<string, unknown>): string {
  const r = validateTarget({ version: 1, apps: { a: { services: { s } } } });
  expect(r.ok).toBe(false);
  return r.ok ? '' : r.message;
}

describe('container options', () => {
  it('become the engine\'s create options', () => {
    const o = containerOptions(spec({ image: 'busybox', cpus: 0.5, memory: '256m', memoryReservation: 64 * 1024 * 1024, user: '1000:1000', entrypoint: ['/bin/sh', '-c'], readOnly: true, tmpfs: ['/tmp:size=64m,mode=1777', { path: '/run', size: '1m', mode: '0755' }, '/cache'] }));
    expect(o).toEqual({
      config: { User: '1000:1000', Entrypoint: ['/bin/sh', '-c'] },
      host: {
        NanoCpus: 500_000_000,
        Memory: 268_435_456,
        MemorySwap: 268_435_456,
        MemoryReservation: 67_108_864,
        ReadonlyRootfs: true,
        Tmpfs: { '/tmp': 'size=64m,mode=1777', '/run': 'size=1048576,mode=0755', '/cache': '' },
      },
    });
  });

  it('leave the create options alone when not set', () => {
    expect(containerOptions(spec({ image: 'busybox' }))).toEqual({ config: {}, host: {} });
  });

  it('change the config hash (a change recreates the container); unset ones keep the old hash', () => {
    const base = configHash('docker', spec({ image: 'busybox' }));
    expect(configHash('docker', spec({ image: 'busybox', readOnly: undefined }))).toBe(base);
    for (const extra of [{ cpus: 1 }, { memory: '64m' }, { user: 'nobody' }, { entrypoint: ['/bin/true'] }, { readOnly: true }, { tmpfs: ['/tmp'] }]) {
      expect(configHash('docker', spec({ image: 'busybox', ...extra }))).not.toBe(base);
    }
    expect(configHash('docker', spec({ image: 'busybox', memory: '64m' }))).not.toBe(configHash('docker', spec({ image: 'busybox', memory: '128m' })));
  });

  it.each([
    [{ cpus: 0 }, 'cpus'],
    [{ memory: '1x' }, 'memory: expected a size'],
    [{ memory: '1m' }, "at least 6m (the engine's minimum)"],
    [{ memory: -5 }, 'memory'],
    [{ user: 'root user' }, 'a user "uid[:gid]"'],
    [{ entrypoint: [] }, 'entrypoint'],
    [{ tmpfs: ['tmp'] }, 'a tmpfs "/path'],
    [{ tmpfs: ['/tmp:size=lots'] }, 'a tmpfs "/path'],
    [{ tmpfs: [{ path: '/tmp', uid: 5 }] }, 'a tmpfs "/path'],
    [{ tmpfs: ['/a/../etc'] }, 'a tmpfs "/path'],
  ])('refuses %j, naming the field', (extra, why) => {
    expect(refusal({ image: 'busybox', ...extra })).toContain(why);
  });

  it.each([
    ['cpus', 1, 'no CPU limit'],
    ['memory', '64m', 'RLIMIT_AS counts address space'],
    ['user', 'nobody', 'workloads.processUser'],
    ['entrypoint', ['/bin/sh'], 'its command is the program'],
    ['readOnly', true, 'containers only'],
    ['tmpfs', ['/tmp'], 'containers only'],
  ])('refuses %s for a process, saying why', (key, value, why) => {
    const msg = refusal({ runtime: 'process', command: ['/bin/true'], [key]: value });
    expect(msg).toContain(`apps.a.services.s.${key}`);
    expect(msg).toContain(why);
  });

  it('lets a process have a working dir and readOnly false', () => {
    expect(spec({ runtime: 'process', command: ['/bin/true'], workingDir: '/tmp', readOnly: false }).workingDir).toBe('/tmp');
  });
});

describe('sizes and tmpfs', () => {
  it.each([
    [1048576, 1048576],
    ['64m', 64 * 1024 ** 2],
    ['1g', 1024 ** 3],
    ['1G', 1024 ** 3],
    ['512k', 512 * 1024],
    ['256mb', 256 * 1024 ** 2],
    ['1.5g', 1.5 * 1024 ** 3],
    ['100', 100],
  ])('%j is %d bytes', (value, bytes) => {
    expect(parseSize(value)).toBe(bytes);
  });

  it.each(['', 'm', '1t', '-1m', 0, 1.5, '1 2m'])('%j is not a size', (value) => {
    expect(parseSize(value)).toBeUndefined();
  });

  it('reads a tmpfs string or object', () => {
    expect(parseTmpfs('/tmp:size=64m,noexec')).toEqual({ path: '/tmp', options: 'size=64m,noexec' });
    expect(parseTmpfs({ path: '/run' })).toEqual({ path: '/run', options: '' });
    expect(parseTmpfs({ path: '/run', mode: 1777 })).toBeUndefined();
  });
});
