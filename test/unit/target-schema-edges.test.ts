import { describe, expect, it } from 'vitest';
import { hostPortKey, isSafeName, parsePort, parseVolume, servicePolicyIssues, validateTarget, type WorkloadPolicy } from '../../src/workloads/target-schema.js';

/**
 * The edges of target validation: port and name boundaries, the parts the runtimes read from a port or
 * volume, the policy per permission, and documents whose shape is wrong where the raw checks walk them.
 */

function svc(spec: Record<string, unknown>, policy?: Partial<WorkloadPolicy>) {
  return validateTarget({ version: 1, apps: { a: { services: { s: spec } } } }, policy ? { policy } : {});
}
const okPorts = (...ports: string[]) => svc({ image: 'x', ports }).ok;

describe('ports', () => {
  it('accepts ports 1 to 65535 on both sides, and nothing outside', () => {
    expect(okPorts('1:1', '65535:65535')).toBe(true);
    for (const bad of ['0:80', '80:0', '65536:80', '80:65536', '123456:80', ' 80:80', '80:80 ', '80:80/sctp', 'a80:80', '80']) {
      expect(okPorts(bad), bad).toBe(false);
    }
  });

  it('splits a mapping into what the container runtime publishes', () => {
    expect(parsePort('8080:80')).toEqual({ ip: undefined, host: 8080, container: 80, proto: 'tcp' });
    expect(parsePort('127.0.0.1:53:5353/udp')).toEqual({ ip: '127.0.0.1', host: 53, container: 5353, proto: 'udp' });
    expect(parsePort('1:2/tcp')).toEqual({ ip: undefined, host: 1, container: 2, proto: 'tcp' });
    expect(parsePort('0:80')).toBeUndefined();
    expect(parsePort('80')).toBeUndefined();
  });

  it('keys the host side by address, port and protocol', () => {
    expect(hostPortKey('8080:80')).toBe('0.0.0.0:8080/tcp');
    expect(hostPortKey('10.0.0.1:53:53/udp')).toBe('10.0.0.1:53/udp');
    expect(hostPortKey('nonsense')).toBeUndefined();
  });

  it('finds a duplicate host port only among well-formed string entries', () => {
    const r = validateTarget({ version: 1, apps: { a: { services: { s: { image: 'x', ports: [8080, 'junk', '8080:80'] }, t: { image: 'y', ports: ['8080:81'] } } } } });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues.filter((i) => i.expected.startsWith('a host port not already used'))).toEqual([
      { path: 'apps.a.services.t.ports.0', source: 'target', value: '8080:81', expected: 'a host port not already used (apps.a.services.s.ports.2 uses 8080:80)' },
    ]);
  });
});

describe('names', () => {
  it('accepts 1-63 lowercase letters, digits, "_", "." and "-", starting with a letter or digit, without ".."', () => {
    for (const good of ['a', '0', 'a'.repeat(63), 'a.b', 'a_b-c', 'web-1']) expect(isSafeName(good), good).toBe(true);
    for (const bad of ['', 'a'.repeat(64), 'A', '.a', '-a', '_a', 'a..b', 'ab..c', 'a.b-c..', 'a/b', 'a b', 'é']) expect(isSafeName(bad), bad).toBe(false);
    expect(isSafeName(5)).toBe(false);
    expect(isSafeName(null)).toBe(false);
  });
});

describe('volumes', () => {
  it('splits a volume into source, target, mode and kind', () => {
    expect(parseVolume('data:/data')).toEqual({ source: 'data', target: '/data', readOnly: false, hostPath: false });
    expect(parseVolume('data:/data:ro')).toEqual({ source: 'data', target: '/data', readOnly: true, hostPath: false });
    expect(parseVolume('data:/data:rw')).toEqual({ source: 'data', target: '/data', readOnly: false, hostPath: false });
    expect(parseVolume('/srv/x:/x')).toEqual({ source: '/srv/x', target: '/x', readOnly: false, hostPath: true });
    for (const bad of ['Data:/d', 'data:d', 'data:/d:rx', ':/d', 'data', 'a:b:/c', 'data:/d:ro:x']) expect(parseVolume(bad), bad).toBeUndefined();
  });
});

describe('service fields', () => {
  it('checks environment names, the working dir, commands and devices', () => {
    expect(svc({ image: 'x', environment: { A_1: 'v', _b: 'w' }, workingDir: '/app', command: ['run'] }).ok).toBe(true);
    for (const name of ['1A', 'A-B', 'A B']) {
      const r = svc({ image: 'x', environment: { [name]: 'v' } });
      expect(r.ok, name).toBe(false);
      // The key is what is wrong: named with what a key must be, never the value it maps to.
      if (!r.ok) expect(r.message).toBe(`apps.a.services.s.environment.${name}: expected a key that is an environment variable name, got ${JSON.stringify(name)} (a string)`);
    }
    // A path that only contains a "/" is still relative to wherever the runtime starts.
    for (const dir of ['app/bin', './app', 'C:/app']) {
      const r = svc({ image: 'x', workingDir: dir });
      expect(r.ok, dir).toBe(false);
      if (!r.ok) expect(r.message, dir).toBe(`apps.a.services.s.workingDir: expected an absolute path, got ${JSON.stringify(dir)} (a string)`);
    }
    const label = svc({ image: 'x', labels: { '': 'v' } });
    expect(label.ok).toBe(false);
    if (!label.ok) expect(label.message).toBe('apps.a.services.s.labels.: expected a key that is a string of at least 1 characters, got "" (a string)');
    expect(svc({ image: 'x', command: [] }).ok).toBe(false);
    expect(svc({ image: '' }).ok).toBe(false);
    expect(svc({ image: `r/${'a'.repeat(510)}` }).ok).toBe(false);
    const devices = (d: string) => svc({ image: 'x', devices: [d] }, { allowDevices: true }).ok;
    for (const good of ['/dev/ttyUSB0', '/dev/a:/dev/b', '/dev/ttyUSB0:/dev/ttyS1', '/dev/a:/dev/b:rwm', '/dev/a:r', '/dev/i2c-1:rw']) expect(devices(good), good).toBe(true);
    for (const bad of ['dev/x', '/dev/a:rwmx', '/dev/a:rwmr', '/dev/a:', '/dev/a:/dev/', '/dev/', '/dev/a b', '/dev/a:/etc/b', ' /dev/a', '/dev/a:x']) expect(devices(bad), bad).toBe(false);
  });

  it('names the label at fault', () => {
    const r = svc({ image: 'x', labels: { 'io.iotistic.update-strategy': 'yolo', 'io.iotistic.own': 'x', team: 'a' } });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues.map((i) => i.path)).toEqual(['apps.a.services.s.labels.io.iotistic.update-strategy', 'apps.a.services.s.labels.io.iotistic.own']);
    expect(svc({ image: 'x', labels: { 'io.iotistic.update-strategy': 'download-then-kill' } }).ok).toBe(true);
  });

  it('runs "auto" with an image as a container, and without one by the process rules', () => {
    expect(svc({ runtime: 'auto', image: 'x', ports: ['80:80'] }).ok).toBe(true);
    expect(svc({ runtime: 'auto', command: ['/bin/true'] }).ok).toBe(true);
    const r = svc({ runtime: 'auto' });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).toContain('apps.a.services.s.command: expected a command (an array, first item an absolute path) for runtime "auto" without an image (it runs as a process)');
    const p = svc({ runtime: 'process' });
    if (!p.ok) expect(p.message).toContain('apps.a.services.s.command: expected a command (an array, first item an absolute path) for runtime "process"');
    expect(p.ok).toBe(false);
  });

  it('names each container-only field set on a process, and lets unset ones pass', () => {
    const r = svc({ runtime: 'process', command: ['/bin/true'], devices: ['/dev/a'], network_mode: 'none' });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues.map((i) => [i.path, i.expected])).toEqual([
      ['apps.a.services.s.devices', 'no devices for runtime "process" (containers only)'],
      ['apps.a.services.s.network_mode', 'no network_mode for runtime "process" (containers only)'],
      // devices are also a host permission
      ['apps.a.services.s.devices', expect.stringContaining('workloads.allowDevices')],
    ]);
    expect(svc({ runtime: 'process', command: ['/bin/true'], privileged: false, ports: [], volumes: [], devices: [] }).ok).toBe(true);
  });

  it('bounds the settings a target may set', () => {
    const settings = (s: Record<string, unknown>) => validateTarget({ version: 1, config: { settings: s }, apps: {} }).ok;
    expect(settings({ pollIntervalMs: 1_000, reportIntervalMs: 100, metricsIntervalMs: 1_000, reconciliationIntervalMs: 1_000 })).toBe(true);
    for (const bad of [{ pollIntervalMs: 999 }, { reportIntervalMs: 99 }, { metricsIntervalMs: 999 }, { reconciliationIntervalMs: 999 }, { pollIntervalMs: 1_500.5 }]) {
      expect(settings(bad), JSON.stringify(bad)).toBe(false);
    }
    expect(validateTarget({ version: 0, apps: {} }).ok).toBe(true);
    expect(validateTarget({ version: 1.5, apps: {} }).ok).toBe(false);
    const defaults = validateTarget({ version: 3 });
    expect(defaults.ok && defaults.target).toEqual({ version: 3, config: {}, apps: {} });
  });
});

describe('local policy, one permission at a time', () => {
  const hostile = { image: 'x', volumes: ['ok:/data', '/:/host'], privileged: true, network_mode: 'host', devices: ['/dev/ttyUSB0'] };
  const paths = (policy: Partial<WorkloadPolicy>) => {
    const r = svc(hostile, policy);
    return r.ok ? [] : r.issues.map((i) => i.path);
  };

  it('lifts only the refusal its setting names', () => {
    const all = ['apps.a.services.s.volumes.1', 'apps.a.services.s.privileged', 'apps.a.services.s.network_mode', 'apps.a.services.s.devices'];
    expect(paths({})).toEqual(all);
    expect(paths({ allowHostMounts: true })).toEqual(all.filter((p) => !p.includes('volumes')));
    expect(paths({ allowPrivileged: true })).toEqual(all.filter((p) => !p.includes('privileged')));
    expect(paths({ allowHostNetwork: true })).toEqual(all.filter((p) => !p.includes('network_mode')));
    expect(paths({ allowDevices: true })).toEqual(all.filter((p) => !p.includes('devices')));
  });

  it('gives the refused value and the source it was asked for', () => {
    expect(servicePolicyIssues('x', hostile).map((i) => i.source)).toEqual(['target', 'target', 'target', 'target']);
    const issues = servicePolicyIssues('x', hostile, undefined, 'local');
    expect(issues.map((i) => [i.path, i.source, i.value])).toEqual([
      ['x.volumes.1', 'local', '/:/host'],
      ['x.privileged', 'local', true],
      ['x.network_mode', 'local', 'host'],
      ['x.devices', 'local', ['/dev/ttyUSB0']],
    ]);
    expect(issues[2]?.expected).toBe("\"bridge\" or \"none\", not \"host\": refused unless the device's local config sets workloads.allowHostNetwork: true (a target cannot grant it)");
    expect(issues[3]?.expected).toBe("no host devices: refused unless the device's local config sets workloads.allowDevices: true (a target cannot grant it)");
    expect(servicePolicyIssues('x', null)).toEqual([]);
    expect(servicePolicyIssues('x', 'nope')).toEqual([]);
    expect(servicePolicyIssues('x', { volumes: 'not-a-list', privileged: 'yes', network_mode: 'bridge', devices: [] })).toEqual([]);
    expect(servicePolicyIssues('x', { volumes: [5, 'n:/d'], devices: 'x' })).toEqual([]);
  });
});

describe('documents of the wrong shape', () => {
  it('refuses them with a message, never throwing, wherever the shape breaks', () => {
    for (const doc of [null, 5, 'x', [], { version: 1, apps: null }, { version: 1, apps: [] }, { version: 1, apps: { a: null } }, { version: 1, apps: { a: { services: null } } }, { version: 1, apps: { a: { services: [] } } }, { version: 1, apps: { a: { services: { s: null } } } }, { version: 1, apps: { a: { services: { s: { image: 'x', ports: 'p' } } } } }]) {
      const r = validateTarget(doc);
      expect(r.ok, JSON.stringify(doc)).toBe(false);
      if (!r.ok) expect(r.message.length, JSON.stringify(doc)).toBeGreaterThan(0);
    }
  });

  it('names a bad app or service name once, with the pattern, beside other problems', () => {
    const r = validateTarget({ version: 1, apps: { Bad: { services: { 'Also Bad': { image: 'x' } } }, ok: { services: { s: { runtime: 'lxc', image: 'x' } } } } });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    const paths = r.issues.map((i) => i.path);
    expect(paths.filter((p) => p === 'apps.Bad')).toHaveLength(1);
    expect(paths.filter((p) => p === 'apps.Bad.services.Also Bad')).toHaveLength(1);
    expect(paths).toContain('apps.ok.services.s.runtime');
    expect(r.issues.find((i) => i.path === 'apps.Bad')).toMatchObject({ source: 'target', value: 'Bad', expected: expect.stringContaining('a name matching') });
  });

  it('names a bad service name of a good app once, with the pattern, and no other problem', () => {
    const r = validateTarget({ version: 1, apps: { ok: { services: { 'Web 1': { image: 'x' } } } } });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toEqual([{ path: 'apps.ok.services.Web 1', source: 'target', value: 'Web 1', expected: expect.stringContaining('a name matching') }]);
  });
});

describe('the rejection message', () => {
  it('lists every issue, each with its source, separated by "; "', () => {
    const r = validateTarget({ version: '1', apps: { a: { services: { s: { image: 'x', privileged: true } } } } });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues.map((i) => [i.path, i.source])).toEqual([
      ['version', 'target'],
      ['apps.a.services.s.privileged', 'target'],
    ]);
    expect(r.message).toBe(
      'version: expected a number, got "1" (a string); apps.a.services.s.privileged: expected false (a privileged container owns the host): refused unless the device\'s local config sets workloads.allowPrivileged: true (a target cannot grant it), got true (a boolean)',
    );
  });
});
