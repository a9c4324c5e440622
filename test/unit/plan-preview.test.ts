import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/util/random.js';
import { PlanPreview } from '../../src/workloads/plan-preview.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { PLAN_SCENARIOS } from '../fixtures/plan-targets.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';
import { PlanApplyCheck } from '../helpers/plan-check.js';

function parse(doc: Record<string, unknown>): TargetState {
  const v = validateTarget(doc);
  if (!v.ok) throw new Error(v.message);
  return v.target;
}

function rig(images: string[] = []) {
  const clock = new FakeClock();
  const docker = new MemoryRuntime('docker', clock);
  const proc = new MemoryRuntime('process', clock);
  for (const rt of [docker, proc]) rt.pullBehaviour = () => Promise.resolve();
  for (const i of images) docker.images.add(i);
  const source = new MemoryTargetSource();
  const check = new PlanApplyCheck({ docker, process: proc });
  const reconciler = new Reconciler({ source, docker: check.docker, process: check.process, clock, random: seededRandom(7), logger: silentLogger(), reconciliationIntervalMs: 30_000 });
  check.attach(reconciler, source);
  const preview = new PlanPreview({ docker, process: proc, policy: { ...DEFAULT_WORKLOAD_POLICY }, stopTimeoutSeconds: 10 });
  /** Passes until nothing is left to do (a pull runs in the background between two passes). */
  const settle = async (): Promise<void> => {
    for (let quiet = 0, n = 0; quiet < 2 && n < 20; n++) {
      const r = await reconciler.reconcileOnce();
      await new Promise((resolve) => setImmediate(resolve));
      quiet = r.acted ? 0 : quiet + 1;
    }
  };
  /** Plans `t` (the check records its apply), sets it and lets it settle. */
  const apply = async (t: TargetState): Promise<void> => {
    await check.expect(t);
    source.set(t);
    await settle();
  };
  return { docker, proc, source, reconciler, preview, apply, settle, check };
}

describe('plan preview: plan == apply', () => {
  it.each(PLAN_SCENARIOS.map((s) => [s.name, s] as const))('%s', async (_name, scenario) => {
    const r = rig(scenario.images);
    if (scenario.before) await r.apply(parse(scenario.before));
    const before = JSON.stringify([...r.docker.instances.values(), ...r.proc.instances.values()]);
    const pulls = r.docker.pulls.length;
    const result = await r.preview.plan(scenario.target);
    if (!result.ok) throw new Error(result.validation.message);
    // Nothing changed by the preview: no pull, no create.
    expect(JSON.stringify([...r.docker.instances.values(), ...r.proc.instances.values()])).toBe(before);
    expect(r.docker.pulls).toHaveLength(pulls);

    await r.apply(parse(scenario.target));
    expect(r.reconciler.currentState().status).toBe('applied');
    // Both applies (before and target) took exactly their plans' steps and pulls.
    expect(r.check.verify().targets).toBe(scenario.before ? 2 : 1);
  });

  it('the check sees a difference: a step the plan did not list fails it, naming the service', async () => {
    const r = rig();
    await r.apply(parse({ version: 1, apps: { a: { services: { s: { image: 'busybox:1', command: ['x'] } } } } }));
    r.check.verify();
    const t = parse({ version: 2, apps: { a: { services: { s: { image: 'busybox:1', command: ['y'] } } } } });
    await r.check.expect(t);
    // Someone else removes the instance between the plan and the apply: the apply makes fewer calls than planned.
    for (const id of [...r.docker.instances.keys()]) await r.docker.remove(id);
    r.source.set(t);
    await r.settle();
    expect(() => r.check.verify()).toThrow(/target 2, a\/s: planned \[stop s-1, remove s-1, create, start\], made \[create, start\]/);
  });
});

describe('plan preview: what it says', () => {
  it('names the action, why and the downtime of each service', async () => {
    const r = rig();
    const mixed = PLAN_SCENARIOS.find((s) => s.name.startsWith('mixed'));
    if (!mixed?.before) throw new Error('fixture missing');
    await r.apply(parse(mixed.before));
    const result = await r.preview.plan(mixed.target);
    if (!result.ok) throw new Error(result.validation.message);
    const by = Object.fromEntries(result.plan.services.map((s) => [`${s.app}/${s.service}`, s]));
    expect(by['a/keep']).toMatchObject({ action: 'unchanged', downtime: { kind: 'none' }, steps: [] });
    expect(by['a/gone']).toMatchObject({ action: 'remove', downtime: { kind: 'permanent' } });
    expect(by['a/added']).toMatchObject({ action: 'create', downtime: { kind: 'none' } });
    expect(by['b/changed']).toMatchObject({ action: 'recreate', why: ['config'], downtime: { kind: 'gap', maxSeconds: 10 } });
    expect(result.plan.images.pull.map((i) => i.image)).toEqual(['busybox:1.36']);
    expect(result.plan.images.present.map((i) => i.image)).toEqual(['nginx:1.25']);
  });

  it('recreate by image under kill-then-download: the gap includes the download', async () => {
    const r = rig();
    const s = PLAN_SCENARIOS.find((x) => x.name === 'recreate by image, kill-then-download');
    if (!s?.before) throw new Error('fixture missing');
    await r.apply(parse(s.before));
    const result = await r.preview.plan(s.target);
    if (!result.ok) throw new Error('invalid');
    expect(result.plan.services[0]).toMatchObject({ action: 'recreate', why: ['image'], downtime: { kind: 'gap', includesPull: true } });
    expect(result.plan.services[0]?.steps.map((x) => x.kind)).toEqual(['stop', 'remove', 'pull', 'create', 'start']);
  });

  it('a health-gated update: no downtime beside the old; one that cannot run twice has a gap until healthy; the old goes after', async () => {
    const plans = [];
    for (const name of ['health-gated update: the new', 'health-gated update of a new image']) {
      const r = rig();
      const s = PLAN_SCENARIOS.find((x) => x.name.startsWith(name));
      if (!s?.before) throw new Error('fixture missing');
      await r.apply(parse(s.before));
      const result = await r.preview.plan(s.target);
      if (!result.ok) throw new Error('invalid');
      plans.push(result.plan.services[0]);
    }
    expect(plans[0]).toMatchObject({ action: 'recreate', why: ['config'], downtime: { kind: 'none' } });
    expect(plans[0]?.steps).toEqual([{ kind: 'create' }, { kind: 'start' }, { kind: 'stop', instance: 'api-1', after: 'healthy' }, { kind: 'remove', instance: 'api-1', after: 'healthy' }]);
    expect(plans[1]).toMatchObject({ action: 'recreate', why: ['image'], downtime: { kind: 'gap', untilHealthy: true } });
    expect(plans[1]?.steps).toEqual([
      { kind: 'pull', image: 'nginx:1.26' },
      { kind: 'stop', instance: 'api-1', after: 'download' },
      { kind: 'create', after: 'download' },
      { kind: 'start', after: 'download' },
      { kind: 'remove', instance: 'api-1', after: 'healthy' },
    ]);
  });

  it('lists what the policy refuses instead of throwing; bad input is not a plan', async () => {
    const r = rig();
    const result = await r.preview.plan({ version: 1, apps: { a: { services: { s: { image: 'busybox:1', privileged: true } } } } });
    if (!result.ok) throw new Error(result.validation.message);
    expect(result.plan.refused.join('\n')).toContain('apps.a.services.s.privileged');
    expect(result.plan.services[0]).toMatchObject({ action: 'refused', steps: [] });
    const bad = await r.preview.plan({ version: 'x', apps: {} });
    expect(bad.ok).toBe(false);
  });
});
