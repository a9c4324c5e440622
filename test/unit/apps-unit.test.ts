import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/util/random.js';
import { findCycle } from '../../src/workloads/app-graph.js';
import { configHash, planService, resolveTarget } from '../../src/workloads/planner.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import type { Instance } from '../../src/workloads/types.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';

function target(version: number, apps: Record<string, unknown>): TargetState {
  const r = validateTarget({ version, apps });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

function refused(apps: Record<string, unknown>): string {
  const r = validateTarget({ version: 1, apps });
  if (r.ok) throw new Error('expected a refusal');
  return r.message;
}

const HC = { test: ['CMD', '/bin/true'], intervalSeconds: 1, retries: 2 };

describe('dependsOn and healthcheck validation', () => {
  it('names a cycle along its services', () => {
    const msg = refused({ app: { services: { a: { image: 'x:1', dependsOn: ['b'] }, b: { image: 'x:1', dependsOn: ['c'] }, c: { image: 'x:1', dependsOn: { a: { condition: 'started' } } } } } });
    expect(msg).toContain('apps.app.services: expected dependsOn without a cycle');
    expect(msg).toContain('a -> b -> c -> a');
    expect(findCycle(new Map([['a', ['b']], ['b', []]]))).toBeUndefined();
  });

  it('refuses a dependency outside the app, on itself, and "healthy" on a service without a health check', () => {
    const msg = refused({
      one: { services: { a: { image: 'x:1', dependsOn: ['db'] }, self: { image: 'x:1', dependsOn: ['self'] }, b: { image: 'x:1', dependsOn: { c: { condition: 'healthy' } } }, c: { image: 'x:1' } } },
      two: { services: { db: { image: 'x:1' } } },
    });
    expect(msg).toContain('apps.one.services.a.dependsOn: expected a service of app "one" (a, b, c, self), got "db"');
    expect(msg).toContain('apps.one.services.self.dependsOn: expected another service');
    expect(msg).toContain('apps.one.services.b.dependsOn.c.condition: expected "started", or a health check on c');
    expect(refused({ a: { services: { b: { image: 'x:1', dependsOn: { c: { condition: 'ready' } } }, c: { image: 'x:1' } } } })).toContain('apps.a.services.b.dependsOn');
  });

  it('takes the engine\'s check for containers and the agent\'s (loopback only) for processes', () => {
    expect(validateTarget({ version: 1, apps: { a: { services: { c: { image: 'x:1', healthcheck: HC }, p: { runtime: 'process', command: ['/bin/x'], healthcheck: { http: 'http://127.0.0.1:8080/health' } } } } } }).ok).toBe(true);
    const msg = refused({
      a: {
        services: {
          c: { image: 'x:1', healthcheck: { http: 'http://127.0.0.1/' } },
          p: { runtime: 'process', command: ['/bin/x'], healthcheck: { test: ['CMD', 'true'] } },
          far: { runtime: 'process', command: ['/bin/x'], healthcheck: { http: 'http://10.0.0.1/health' } },
          tcp: { runtime: 'process', command: ['/bin/x'], healthcheck: { tcp: 'example.com:80' } },
          two: { runtime: 'process', command: ['/bin/x'], healthcheck: { tcp: '127.0.0.1:80', http: 'http://127.0.0.1/' } },
          rel: { runtime: 'process', command: ['/bin/x'], healthcheck: { command: ['check'] } },
        },
      },
    });
    expect(msg).toContain('apps.a.services.c.healthcheck.http: expected for a container, "test"');
    expect(msg).toContain('apps.a.services.p.healthcheck.test: expected for a process, "http", "tcp" or "command"');
    expect(msg).toContain('apps.a.services.far.healthcheck.http: expected an http:// URL on the loopback interface');
    expect(msg).toContain('apps.a.services.tcp.healthcheck.tcp: expected a loopback "HOST:PORT"');
    expect(msg).toContain('apps.a.services.two.healthcheck: expected exactly one of');
    expect(msg).toContain('apps.a.services.rel.healthcheck.command: expected an absolute path');
  });

  it('a change of dependsOn alone does not recreate a service; a change of its health check does', () => {
    const t1 = target(1, { a: { services: { b: { image: 'x:1' }, c: { image: 'x:1' } } } });
    const t2 = target(2, { a: { services: { b: { image: 'x:1', dependsOn: ['c'] }, c: { image: 'x:1' } } } });
    const t3 = target(3, { a: { services: { b: { image: 'x:1', healthcheck: HC }, c: { image: 'x:1' } } } });
    const hash = (t: TargetState): string => configHash('docker', t.apps.a?.services.b as never);
    expect(hash(t2)).toBe(hash(t1));
    expect(hash(t3)).not.toBe(hash(t1));
  });
});

function instance(over: Partial<Instance>): Instance {
  return { id: 'i', runtime: 'docker', app: 'a', service: 'web', configHash: 'old', image: 'x:1', state: 'running', exitCode: null, error: null, startedAt: 1, finishedAt: null, exitKey: null, ...over };
}

function plan(spec: Record<string, unknown>, instances: Instance[], rejected?: string) {
  const [resolved] = resolveTarget(target(1, { a: { services: { web: spec } } }), { ok: true }, DEFAULT_WORKLOAD_POLICY);
  const desired = resolved?.desired;
  const fixed = instances.map((i) => (i.configHash === 'new' ? { ...i, configHash: desired?.configHash as string } : i));
  return planService({ resolved, instances: fixed, imagePresent: true, pulling: false, pullWaiting: false, crashWaiting: false, rejected });
}

describe('updates that wait for healthy (the planner)', () => {
  const old = instance({ id: 'old' });
  it('starts the new version beside the old one, or stops the old first (kept for a rollback) when it publishes host ports or writes a volume', () => {
    expect(plan({ image: 'x:2', healthcheck: HC }, [old]).steps.map((s) => s.kind)).toEqual(['create', 'start']);
    const ports = plan({ image: 'x:2', healthcheck: HC, ports: ['8080:80'] }, [old]);
    expect(ports.steps.map((s) => s.kind)).toEqual(['stop', 'create', 'start']);
    expect(plan({ image: 'x:2', healthcheck: HC, volumes: ['data:/data'] }, [old]).steps.map((s) => s.kind)).toEqual(['stop', 'create', 'start']);
    expect(plan({ image: 'x:2', healthcheck: HC, volumes: ['conf:/conf:ro'] }, [old]).steps.map((s) => s.kind)).toEqual(['create', 'start']);
    // Without a health check, or with kill-then-download: as before.
    expect(plan({ image: 'x:2' }, [old]).steps.map((s) => s.kind)).toEqual(['stop', 'remove', 'create', 'start']);
    expect(plan({ image: 'x:2', healthcheck: HC, labels: { 'io.iotistic.update-strategy': 'kill-then-download' } }, [old]).steps.map((s) => s.kind)).toEqual(['stop', 'remove', 'create', 'start']);
  });

  it('waits while the new one starts, removes the old once it is healthy, and keeps the old when it turns unhealthy', () => {
    const starting = plan({ image: 'x:2', healthcheck: HC }, [old, instance({ id: 'new', configHash: 'new', health: 'starting', startedAt: 2 })]);
    expect(starting).toMatchObject({ steps: [], status: 'starting' });
    const healthy = plan({ image: 'x:2', healthcheck: HC }, [old, instance({ id: 'new', configHash: 'new', health: 'healthy', startedAt: 2 })]);
    expect(healthy.steps.map((s) => `${s.kind} ${'instance' in s ? s.instance?.id : ''}`)).toEqual(['stop old', 'remove old']);
    const bad = plan({ image: 'x:2', healthcheck: HC }, [old, instance({ id: 'new', configHash: 'new', health: 'unhealthy', healthLog: 'exit code 1', startedAt: 2 })]);
    expect(bad).toMatchObject({ status: 'running', reject: 'unhealthy: exit code 1', reason: 'new version unhealthy: unhealthy: exit code 1' });
    expect(bad.steps.map((s) => `${s.kind} ${'instance' in s ? s.instance?.id : ''}`)).toEqual(['stop new', 'remove new']);
  });

  it('rolls back to the stopped old container when the new one (host ports) exits, and does not try the rejected one again', () => {
    const stopped = instance({ id: 'old', state: 'exited', exitCode: 143, exitKey: 'k' });
    const exited = instance({ id: 'new', configHash: 'new', state: 'exited', exitCode: 2, exitKey: 'k2', startedAt: 2 });
    const back = plan({ image: 'x:2', healthcheck: HC, ports: ['8080:80'] }, [stopped, exited]);
    expect(back.reject).toBe('exited with code 2');
    expect(back.steps.map((s) => `${s.kind} ${'instance' in s ? s.instance?.id : ''}`)).toEqual(['remove new', 'start old']);
    const later = plan({ image: 'x:2', healthcheck: HC, ports: ['8080:80'] }, [old], 'exited with code 2');
    expect(later).toMatchObject({ steps: [], status: 'running', reason: 'new version unhealthy: exited with code 2' });
  });
});

describe('start order (the reconciler on a memory runtime)', () => {
  it('starts each service once its dependencies run, or are healthy where asked; stops them in the reverse order', async () => {
    const clock = new FakeClock();
    const docker = new MemoryRuntime('docker', clock);
    docker.images.add('x:1');
    const proc = new MemoryRuntime('process', clock);
    const t = target(1, { app: { services: { a: { image: 'x:1', dependsOn: { b: { condition: 'healthy' } } }, b: { image: 'x:1', healthcheck: HC, dependsOn: ['c'] }, c: { image: 'x:1' } } } });
    const source = new MemoryTargetSource(t);
    const rec = new Reconciler({ source, docker, process: proc, clock, random: seededRandom(1), logger: silentLogger(), reconciliationIntervalMs: 10_000 });
    const status = (s: string): unknown => rec.currentState().apps.app?.services[s];
    await rec.reconcileOnce();
    expect(docker.starts.map((s) => s.service)).toEqual(['c']);
    expect(status('b')).toMatchObject({ status: 'waiting', lastError: 'waiting for c to be running' });
    await rec.reconcileOnce();
    expect(docker.starts.map((s) => s.service)).toEqual(['c', 'b']);
    const b = [...docker.instances.values()].find((i) => i.service === 'b') as Instance;
    b.health = 'starting';
    await rec.reconcileOnce();
    expect(status('b')).toMatchObject({ status: 'starting' });
    expect(status('a')).toMatchObject({ status: 'waiting', lastError: 'waiting for b to be healthy' });
    expect(rec.currentState().status).toBe('applying');
    b.health = 'healthy';
    await rec.reconcileOnce();
    expect(docker.starts.map((s) => s.service)).toEqual(['c', 'b', 'a']);
    b.health = 'unhealthy';
    b.healthLog = 'exit code 1: no db';
    await rec.reconcileOnce();
    expect(status('b')).toMatchObject({ status: 'unhealthy', lastError: 'unhealthy: exit code 1: no db' });
    expect(rec.currentState().status).toBe('failed');

    // The app leaves: stopped in the reverse order, by the dependencies its instances were created with.
    for (const i of docker.instances.values()) i.dependsOn = i.service === 'a' ? ['b'] : i.service === 'b' ? ['c'] : [];
    source.set(target(2, {}));
    const left = (): string[] => [...docker.instances.values()].map((i) => i.service).sort();
    await rec.reconcileOnce();
    expect(left()).toEqual(['b', 'c']);
    // Not applied while the removals wait their turn.
    expect(rec.currentState()).toMatchObject({ targetVersion: 2, status: 'applying' });
    await rec.reconcileOnce();
    expect(left()).toEqual(['c']);
    expect(rec.currentState().status).toBe('applying');
    await rec.reconcileOnce();
    expect(left()).toEqual([]);
    expect(rec.currentState().status).toBe('applied');
    await rec.close();
  });
});
