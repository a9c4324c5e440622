import { describe, expect, it } from 'vitest';
import { normalizeImage, parseImageReference } from '../../src/workloads/image-ref.js';
import { updateStrategyOf, validateTarget, type WorkloadPolicy } from '../../src/workloads/target-schema.js';

function svc(spec: Record<string, unknown>, policy?: Partial<WorkloadPolicy>) {
  return validateTarget({ version: 1, apps: { a: { services: { s: spec } } } }, policy ? { policy } : {});
}

function reasons(spec: Record<string, unknown>, policy?: Partial<WorkloadPolicy>): string {
  const r = svc(spec, policy);
  expect(r.ok).toBe(false);
  return r.ok ? '' : r.message;
}

describe('image references', () => {
  it.each([
    'busybox',
    'busybox:1.36',
    'library/busybox:latest',
    'registry.local/collector:1.4',
    'registry.local:5000/team/app/collector:v1.2.3-rc_1',
    '127.0.0.1:40000/app:2',
    'localhost/app',
    'localhost:5000/app',
    '[::1]:5000/app:1',
    'a__b/c--d/e.f:TAG',
    `app@sha256:${'a'.repeat(64)}`,
    `reg.io/app:1@sha256:${'0'.repeat(64)}`,
  ])('accepts %s', (ref) => {
    expect(parseImageReference(ref)).not.toHaveProperty('error');
    expect(svc({ image: ref }).ok).toBe(true);
  });

  it.each([
    ['Busybox', 'lowercase'],
    ['team/App:1', 'lowercase'],
    ['busybox:', 'an image reference like'],
    [':1', 'an image reference like'],
    ['busy box', 'without spaces'],
    ['busybox:-bad', 'an image reference like'],
    ['a/-b', 'an image reference like'],
    ['app@sha256:abc', 'an image reference like'],
    ['http://reg/app', 'an image reference like'],
    [`${'a'.repeat(256)}:1`, 'at most 255'],
  ])('rejects %s with the path', (ref, why) => {
    expect(reasons({ image: ref })).toContain(`apps.a.services.s.image: expected ${why.startsWith('at most') ? 'an image name of' : ''}`);
    expect(reasons({ image: ref })).toContain(why);
  });

  it('normalizes a bare name to :latest, and splits registry, tag and digest', () => {
    expect(normalizeImage('busybox')).toBe('busybox:latest');
    expect(normalizeImage('127.0.0.1:5000/app')).toBe('127.0.0.1:5000/app:latest');
    expect(normalizeImage('app:1')).toBe('app:1');
    expect(parseImageReference('127.0.0.1:5000/team/app:1')).toEqual({ repository: '127.0.0.1:5000/team/app', registry: '127.0.0.1:5000', tag: '1' });
    expect(parseImageReference('team/app:1')).toEqual({ repository: 'team/app', tag: '1' });
  });
});

describe('volumes, devices and the rest of the service', () => {
  it('checks the volume grammar', () => {
    expect(svc({ image: 'x', volumes: ['data:/data', 'logs:/var/log:ro', 'cache:/c:rw'] }).ok).toBe(true);
    expect(reasons({ image: 'x', volumes: ['data'] })).toContain('apps.a.services.s.volumes.0: expected a volume "NAME:/container/path[:ro|rw]"');
    expect(reasons({ image: 'x', volumes: ['data:relative'] })).toContain('volumes.0');
    expect(reasons({ image: 'x', volumes: ['data:/d:rx'] })).toContain('volumes.0');
    expect(reasons({ image: 'x', volumes: ['-x:/d'] })).toContain('volumes.0');
  });

  it('reserves the agent\'s label prefix except the update strategy, whose value is checked', () => {
    expect(reasons({ image: 'x', labels: { 'io.iotistic.managed': 'true' } })).toContain('apps.a.services.s.labels.io.iotistic.managed: expected no label under "io.iotistic."');
    expect(reasons({ image: 'x', labels: { 'io.iotistic.update-strategy': 'yolo' } })).toContain('expected one of "download-then-kill", "kill-then-download"');
    const r = svc({ image: 'x', labels: { 'io.iotistic.update-strategy': 'kill-then-download', team: 'a' } });
    expect(r.ok && updateStrategyOf(r.target.apps.a!.services.s!)).toBe('kill-then-download');
    const d = svc({ image: 'x' });
    expect(d.ok && updateStrategyOf(d.target.apps.a!.services.s!)).toBe('download-then-kill');
  });

  it('refuses container-only fields on processes, and a relative working dir', () => {
    const msg = reasons({ runtime: 'process', command: ['/bin/true'], ports: ['80:80'], volumes: ['d:/d'], privileged: true });
    expect(msg).toContain('apps.a.services.s.ports: expected no ports for runtime "process" (containers only)');
    expect(msg).toContain('apps.a.services.s.volumes: expected no volumes for runtime "process"');
    expect(msg).toContain('apps.a.services.s.privileged: expected no privileged');
    expect(reasons({ runtime: 'auto', command: ['run'] })).toContain('apps.a.services.s.command.0: expected an absolute path');
    expect(reasons({ runtime: 'auto', command: ['/bin/true'], network_mode: 'none' })).toContain('for runtime "auto" without an image (it runs as a process)');
    expect(reasons({ image: 'x', workingDir: 'app' })).toContain('apps.a.services.s.workingDir: expected an absolute path');
    expect(reasons({ image: 'x', network_mode: 'container:other' })).toContain('apps.a.services.s.network_mode: expected one of "bridge", "none", "host"');
    expect(reasons({ image: 'x', devices: ['/etc/passwd'] })).toContain('apps.a.services.s.devices.0: expected a device');
  });
});

describe('local policy: what a target may do to the host', () => {
  const hostile = { image: 'x', volumes: ['/:/host', 'ok:/data'], privileged: true, network_mode: 'host', devices: ['/dev/ttyUSB0'] };

  it('refuses host mounts, privileged, host networking and devices by default, naming the path and the local setting', () => {
    const r = svc(hostile);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues.map((i) => i.path)).toEqual(['apps.a.services.s.volumes.0', 'apps.a.services.s.privileged', 'apps.a.services.s.network_mode', 'apps.a.services.s.devices']);
    expect(r.message).toContain("apps.a.services.s.volumes.0: expected a named volume, not a host bind mount: refused unless the device's local config sets workloads.allowHostMounts: true");
    expect(r.message).toContain('apps.a.services.s.privileged: expected false (a privileged container owns the host): refused unless the device\'s local config sets workloads.allowPrivileged: true');
    expect(r.message).toContain('workloads.allowHostNetwork: true');
    expect(r.message).toContain('workloads.allowDevices: true');
  });

  it('allows each one only when the local policy does', () => {
    expect(reasons(hostile, { allowHostMounts: true, allowPrivileged: true, allowHostNetwork: true })).not.toContain('allowPrivileged');
    expect(svc(hostile, { allowHostMounts: true, allowPrivileged: true, allowHostNetwork: true, allowDevices: true }).ok).toBe(true);
    expect(svc({ image: 'x', network_mode: 'none', privileged: false, devices: [] }).ok).toBe(true);
  });

  it('reports policy refusals together with schema problems', () => {
    const r = validateTarget({ version: 1, apps: { a: { services: { s: { image: 'Bad', privileged: true } } } } });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues.map((i) => i.path)).toEqual(['apps.a.services.s.image', 'apps.a.services.s.privileged']);
  });
});
