import { describe, expect, it } from 'vitest';
import { validateTarget } from '../../src/workloads/target-schema.js';

function reasons(doc: unknown): string {
  const r = validateTarget(doc);
  expect(r.ok).toBe(false);
  return r.ok ? '' : r.message;
}

describe('target state validation', () => {
  it('accepts the protocol example and fills defaults', () => {
    const r = validateTarget({
      version: 7,
      config: { settings: { pollIntervalMs: 60000 } },
      apps: {
        sensors: {
          services: {
            collector: { runtime: 'docker', image: 'registry.local/collector:1.4', command: ['node', 'main.js'], environment: { LEVEL: 'info' }, ports: ['8080:80'], volumes: ['collector-data:/data'], restart: 'always', labels: {} },
            'modbus-bridge': { runtime: 'process', command: ['/opt/bridge/run', '--port', '502'], restart: 'on-failure' },
          },
        },
      },
    });
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.target.apps.sensors?.services['modbus-bridge']).toMatchObject({ environment: {}, ports: [], volumes: [] });
  });

  it('names the path of wrong types', () => {
    expect(reasons({ version: '7', apps: {} })).toContain('version: expected a number, got "7"');
    expect(reasons({ version: 1, apps: { a: { services: { s: { image: 'x', environment: { A: 1 } } } } } })).toContain('apps.a.services.s.environment.A: expected a string, got 1');
    expect(reasons({ version: 1, apps: [] })).toContain('apps: expected a record, got an array');
  });

  it('rejects unknown runtimes and restart policies', () => {
    expect(reasons({ version: 1, apps: { a: { services: { s: { runtime: 'lxc', image: 'x' } } } } })).toContain('apps.a.services.s.runtime: expected one of "docker", "process", "auto", got "lxc"');
    expect(reasons({ version: 1, apps: { a: { services: { s: { image: 'x', restart: 'sometimes' } } } } })).toContain('apps.a.services.s.restart: expected one of "no", "always", "on-failure", "unless-stopped"');
  });

  it('rejects a host port used twice across apps, naming both', () => {
    const msg = reasons({
      version: 1,
      apps: { a: { services: { web: { image: 'x', ports: ['8080:80'] } } }, b: { services: { api: { image: 'y', ports: ['9000:9000', '8080:8080/tcp'] } } } },
    });
    expect(msg).toContain('apps.b.services.api.ports.1: expected a host port not already used (apps.a.services.web.ports.0 uses 8080:80), got "8080:8080/tcp"');
    // The same port on udp, or on another address, is a different socket.
    expect(validateTarget({ version: 1, apps: { a: { services: { w: { image: 'x', ports: ['53:53/udp', '53:53/tcp', '127.0.0.1:80:80', '80:80'] } } } } }).ok).toBe(true);
  });

  it('rejects malformed ports, relative process commands, and images on processes', () => {
    expect(reasons({ version: 1, apps: { a: { services: { s: { image: 'x', ports: ['80'] } } } } })).toContain('apps.a.services.s.ports.0: expected a port mapping');
    expect(reasons({ version: 1, apps: { a: { services: { s: { image: 'x', ports: ['70000:80'] } } } } })).toContain('ports.0');
    expect(reasons({ version: 1, apps: { a: { services: { s: { runtime: 'process', command: ['run.sh'] } } } } })).toContain('apps.a.services.s.command.0: expected an absolute path');
    expect(reasons({ version: 1, apps: { a: { services: { s: { runtime: 'process', image: 'x', command: ['/bin/true'] } } } } })).toContain('apps.a.services.s.image: expected no image for runtime "process"');
    expect(reasons({ version: 1, apps: { a: { services: { s: { runtime: 'docker' } } } } })).toContain('apps.a.services.s.image: expected an image reference');
  });

  it('rejects settings a target may not override, and unknown keys', () => {
    expect(reasons({ version: 1, config: { settings: { offline: { maxQueueSize: 1 } } }, apps: {} })).toContain('config.settings.offline: expected no such key');
    expect(reasons({ version: 1, apps: {}, extra: true })).toContain('extra: expected no such key');
    expect(reasons({ version: 1, apps: { 'Bad Name': { services: {} } } })).toContain('Bad Name');
  });

  it('reports every problem at once', () => {
    const r = validateTarget({ version: -1, apps: { a: { services: { s: { runtime: 'lxc' }, t: { image: 'x', ports: ['1:1'] }, u: { image: 'y', ports: ['1:2'] } } } } });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.issues.map((i) => i.path)).toEqual(expect.arrayContaining(['version', 'apps.a.services.s.runtime', 'apps.a.services.u.ports.0']));
  });
});
