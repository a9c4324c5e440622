import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/util/random.js';
import { PlanPreview, type PlanStep, type TargetPlan } from '../../src/workloads/plan-preview.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import type { DesiredService } from '../../src/workloads/types.js';
import { PLAN_SCENARIOS } from '../fixtures/plan-targets.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';

/** A memory runtime that records, per service, the calls the reconciler makes (the steps it took). */
class RecordingRuntime extends MemoryRuntime {
  recording = false;
  readonly calls = new Map<string, PlanStep[]>();
  readonly pulled: string[] = [];
  private readonly made = new Set<string>();

  private log(id: string, kind: PlanStep['kind']): void {
    const i = this.instances.get(id);
    if (!this.recording || !i) return;
    const key = `${i.app}/${i.service}`;
    // An instance made during the recorded apply is "the one the create made": the plan has no id for it.
    this.calls.set(key, [...(this.calls.get(key) ?? []), this.made.has(id) ? { kind } : { kind, instance: id }]);
  }
  override async pull(image: string, signal?: AbortSignal): Promise<void> {
    if (this.recording) this.pulled.push(image);
    return super.pull(image, signal);
  }
  override async create(d: DesiredService, signal?: AbortSignal): Promise<string> {
    const id = await super.create(d, signal);
    if (this.recording) {
      this.made.add(id);
      this.log(id, 'create');
    }
    return id;
  }
  override start(id: string): Promise<void> {
    this.log(id, 'start');
    return super.start(id);
  }
  override stop(id: string): Promise<void> {
    this.log(id, 'stop');
    return super.stop(id);
  }
  override remove(id: string): Promise<void> {
    this.log(id, 'remove');
    return super.remove(id);
  }
}

function parse(doc: Record<string, unknown>): TargetState {
  const v = validateTarget(doc);
  if (!v.ok) throw new Error(v.message);
  return v.target;
}

function rig(images: string[] = []) {
  const clock = new FakeClock();
  const docker = new RecordingRuntime('docker', clock);
  const proc = new RecordingRuntime('process', clock);
  for (const rt of [docker, proc]) rt.pullBehaviour = () => Promise.resolve();
  for (const i of images) docker.images.add(i);
  const source = new MemoryTargetSource();
  const reconciler = new Reconciler({ source, docker, process: proc, clock, random: seededRandom(7), logger: silentLogger(), reconciliationIntervalMs: 30_000 });
  const preview = new PlanPreview({ docker, process: proc, policy: { ...DEFAULT_WORKLOAD_POLICY }, stopTimeoutSeconds: 10 });
  /** Passes until nothing is left to do (a pull runs in the background between two passes). */
  const apply = async (t: TargetState): Promise<void> => {
    source.set(t);
    for (let quiet = 0, n = 0; quiet < 2 && n < 20; n++) {
      const r = await reconciler.reconcileOnce();
      await new Promise((resolve) => setImmediate(resolve));
      quiet = r.acted ? 0 : quiet + 1;
    }
  };
  return { docker, proc, reconciler, preview, apply };
}

/** The plan's steps without its pulls (those are per image, compared apart), per service. */
function plannedSteps(plan: TargetPlan): Map<string, PlanStep[]> {
  const out = new Map<string, PlanStep[]>();
  for (const s of plan.services) {
    const steps = s.steps.filter((x) => x.kind !== 'pull');
    if (steps.length > 0) out.set(`${s.app}/${s.service}`, steps);
  }
  return out;
}

describe('plan preview: plan == apply', () => {
  it.each(PLAN_SCENARIOS.map((s) => [s.name, s] as const))('%s', async (_name, scenario) => {
    const r = rig(scenario.images);
    if (scenario.before) await r.apply(parse(scenario.before));
    const before = JSON.stringify([...r.docker.instances.values(), ...r.proc.instances.values()]);

    const result = await r.preview.plan(scenario.target);
    if (!result.ok) throw new Error(result.validation.message);
    const plan = result.plan;
    // Nothing changed by the preview: no pull, no create.
    expect(JSON.stringify([...r.docker.instances.values(), ...r.proc.instances.values()])).toBe(before);

    r.docker.recording = r.proc.recording = true;
    await r.apply(parse(scenario.target));
    const taken = new Map([...r.docker.calls, ...r.proc.calls]);
    expect(Object.fromEntries(taken)).toEqual(Object.fromEntries(plannedSteps(plan)));
    expect([...r.docker.pulled].sort()).toEqual(plan.images.pull.map((i) => i.image).sort());
    const state = r.reconciler.currentState();
    expect(state.status).toBe('applied');
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
