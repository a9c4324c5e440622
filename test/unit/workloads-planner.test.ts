import { describe, expect, it } from 'vitest';
import { configHash, planService, resolveTarget, type PlanInput, type ResolvedService } from '../../src/workloads/planner.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import type { Instance } from '../../src/workloads/types.js';

function target(services: Record<string, unknown>, app = 'a'): TargetState {
  const r = validateTarget({ version: 1, apps: { [app]: { services } } }, { policy: { allowPrivileged: true } });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

function resolved(spec: Record<string, unknown>, docker = true): ResolvedService {
  const r = resolveTarget(target({ s: spec }), docker ? { ok: true } : { ok: false, reason: 'connect ENOENT /var/run/docker.sock' }, { ...DEFAULT_WORKLOAD_POLICY, allowPrivileged: true });
  return r[0] as ResolvedService;
}

function inst(r: ResolvedService, over: Partial<Instance> = {}): Instance {
  return {
    id: 'c1',
    runtime: r.desired.runtime,
    app: r.desired.app,
    service: r.desired.service,
    configHash: r.desired.configHash,
    image: r.desired.image ?? null,
    state: 'running',
    exitCode: null,
    error: null,
    startedAt: 1000,
    finishedAt: null,
    exitKey: null,
    ...over,
  };
}

function plan(r: ResolvedService | undefined, instances: Instance[], over: Partial<PlanInput> = {}) {
  return planService({ resolved: r, instances, imagePresent: true, pulling: false, pullWaiting: false, crashWaiting: false, ...over });
}

const kinds = (p: ReturnType<typeof plan>): string[] => p.steps.map((s) => s.kind);

describe('config hash', () => {
  it('ignores the restart policy, the update strategy and key order; sees everything else', () => {
    const base = { image: 'busybox:1', command: ['/bin/sh'], environment: { A: '1', B: '2' } };
    const h = (spec: Record<string, unknown>): string => resolved(spec).desired.configHash;
    expect(h(base)).toBe(h({ ...base, environment: { B: '2', A: '1' } }));
    expect(h(base)).toBe(h({ ...base, restart: 'no' }));
    expect(h(base)).toBe(h({ ...base, labels: { 'io.iotistic.update-strategy': 'kill-then-download' } }));
    expect(h(base)).toBe(h({ ...base, image: 'busybox:1' }));
    expect(h({ ...base, image: 'busybox' })).toBe(h({ ...base, image: 'busybox:latest' }));
    expect(h(base)).not.toBe(h({ ...base, environment: { A: '1', B: '3' } }));
    expect(h(base)).not.toBe(h({ ...base, command: ['/bin/sh', '-c', 'x'] }));
    expect(h(base)).not.toBe(h({ ...base, privileged: true }));
    expect(h(base)).not.toBe(h({ ...base, labels: { team: 'x' } }));
    expect(configHash('docker', target({ s: base }).apps.a!.services.s!)).toBe(h(base));
  });
});

describe('runtime resolution', () => {
  it('auto with an image is docker when an engine answers and failed with the reason when not; auto without an image is a process', () => {
    expect(resolved({ runtime: 'auto', image: 'x' }).desired.runtime).toBe('docker');
    const noEngine = resolved({ runtime: 'auto', image: 'x' }, false);
    expect(noEngine.blocked?.reason).toMatch(/runtime "auto" with an image needs a container engine.*ENOENT/);
    const proc = resolved({ runtime: 'auto', command: ['/bin/true'] }, false);
    expect(proc.desired.runtime).toBe('process');
    expect(proc.blocked).toBeUndefined();
    expect(resolved({ image: 'x' }, false).blocked).toMatchObject({ reason: expect.stringContaining('no container engine answers'), removeInstances: false });
  });

  it('re-checks the local policy at apply time: a refused service is blocked and what runs is removed', () => {
    const t = target({ s: { image: 'x', privileged: true } });
    const [r] = resolveTarget(t, { ok: true }, DEFAULT_WORKLOAD_POLICY);
    expect(r?.blocked?.reason).toContain('workloads.allowPrivileged');
    const p = plan(r, [inst(r as ResolvedService)]);
    expect(p.status).toBe('failed');
    expect(kinds(p)).toEqual(['stop', 'remove']);
  });
});

describe('planService', () => {
  const r = resolved({ image: 'reg.local/app:2', command: ['/bin/sleep', '100'] });

  it('creates and starts a service that has no instance', () => {
    const p = plan(r, []);
    expect(kinds(p)).toEqual(['create', 'start']);
    expect(p.status).toBe('creating');
  });

  it('leaves a running instance with the wanted configuration alone', () => {
    const p = plan(r, [inst(r)]);
    expect(p.steps).toEqual([]);
    expect(p.status).toBe('running');
  });

  it('removes every instance of a service that left the target', () => {
    const p = plan(undefined, [inst(r), inst(r, { id: 'c2', state: 'exited', exitCode: 0 })]);
    expect(p.steps.map((s) => `${s.kind}:${'instance' in s ? s.instance?.id : ''}`)).toEqual(['stop:c1', 'remove:c1', 'remove:c2']);
  });

  it('keeps one instance when it finds duplicates (the running one)', () => {
    const p = plan(r, [inst(r, { id: 'old', state: 'exited', exitCode: 1, startedAt: 5 }), inst(r, { id: 'live' })]);
    expect(p.current?.id).toBe('live');
    expect(p.steps.map((s) => `${s.kind}:${'instance' in s ? s.instance?.id : ''}`)).toEqual(['remove:old']);
  });

  it('recreates when the configuration changed (download-then-kill, image present)', () => {
    const old = inst(r, { id: 'old', configHash: 'other' });
    const p = plan(r, [old]);
    expect(kinds(p)).toEqual(['stop', 'remove', 'create', 'start']);
  });

  it('download-then-kill: pulls first while the old instance keeps running; the pull failing keeps it running', () => {
    const old = inst(r, { id: 'old', configHash: 'other' });
    expect(kinds(plan(r, [old], { imagePresent: false }))).toEqual(['pull']);
    expect(plan(r, [old], { imagePresent: false, pulling: true })).toMatchObject({ steps: [], status: 'pulling' });
    expect(plan(r, [old], { imagePresent: false, pullWaiting: true })).toMatchObject({ steps: [], status: 'backoff' });
    // The image arrived: now the switch.
    expect(kinds(plan(r, [old], { imagePresent: true }))).toEqual(['stop', 'remove', 'create', 'start']);
  });

  it('kill-then-download: stops the old instance before the pull, and even when the pull is backing off', () => {
    const k = resolved({ image: 'reg.local/app:2', labels: { 'io.iotistic.update-strategy': 'kill-then-download' } });
    const old = inst(k, { id: 'old', configHash: 'other' });
    expect(kinds(plan(k, [old], { imagePresent: false }))).toEqual(['stop', 'remove', 'pull']);
    expect(kinds(plan(k, [old], { imagePresent: false, pullWaiting: true }))).toEqual(['stop', 'remove']);
    expect(kinds(plan(k, [], { imagePresent: false, pullWaiting: true }))).toEqual([]);
  });

  it('restarts an exited instance by its restart policy, after the crash loop allows', () => {
    const exited = (code: number): Instance => inst(r, { state: 'exited', exitCode: code, exitKey: `c1:${code}` });
    expect(plan(r, [exited(1)])).toMatchObject({ status: 'creating', steps: [{ kind: 'start', restart: true }] });
    expect(plan(r, [exited(1)], { crashWaiting: true })).toMatchObject({ status: 'backoff', steps: [] });
    const no = resolved({ image: 'x', restart: 'no' });
    expect(plan(no, [inst(no, { state: 'exited', exitCode: 1 })])).toMatchObject({ status: 'exited', steps: [] });
    const onFailure = resolved({ image: 'x', restart: 'on-failure' });
    expect(plan(onFailure, [inst(onFailure, { state: 'exited', exitCode: 0 })])).toMatchObject({ status: 'exited', steps: [] });
    expect(plan(onFailure, [inst(onFailure, { state: 'exited', exitCode: 137 })]).steps).toHaveLength(1);
  });

  it('starts an instance that was created and never started; retries a failed start after the backoff', () => {
    expect(plan(r, [inst(r, { state: 'created', startedAt: null })])).toMatchObject({ status: 'creating', steps: [{ kind: 'start', restart: false }] });
    const failedStart = inst(r, { state: 'created', startedAt: null, error: 'exec: "/nope": not found', exitCode: 127 });
    expect(plan(r, [failedStart], { crashWaiting: true })).toMatchObject({ status: 'backoff', steps: [] });
    expect(plan(r, [failedStart])).toMatchObject({ steps: [{ kind: 'start', restart: true }] });
  });

  it('reports a docker service on a device without an engine as failed, touching nothing', () => {
    const b = resolved({ image: 'x' }, false);
    expect(plan(b, [])).toMatchObject({ status: 'failed', steps: [], reason: expect.stringContaining('ENOENT') });
  });

  it('moves a service between runtimes: the instance of the other runtime goes', () => {
    const p = resolved({ runtime: 'process', command: ['/bin/sleep', '1'] });
    const container = inst(r, { app: 'a', service: 's' });
    expect(kinds(plan(p, [container]))).toEqual(['stop', 'remove', 'create', 'start']);
  });
});
