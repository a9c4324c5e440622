import { formatIssue } from '../config/issues.js';
import { hasHealthcheck } from './app-graph.js';
import { healthGated } from './health-gate.js';
import { createdInstance, isActive, planService, resolveTarget, serviceKey, type ResolvedService, type Step } from './planner.js';
import { servicePolicyIssues, validateTarget, type TargetState, type TargetValidation, type WorkloadPolicy } from './target-schema.js';
import type { Availability, Instance, RuntimeKind, SecretSource, WorkloadRuntime } from './types.js';

/**
 * The plan preview (`POST /v2/target/plan`, job `plan-target`): what applying a candidate target
 * would do, computed by the reconciler's own planner (planService) from what runs now, without
 * changing anything: no pull, no create. The cloud asks it before a rollout; the plan == apply test
 * holds it to the steps the reconciler then takes.
 */

export interface PlanPreviewOptions {
  docker?: WorkloadRuntime | undefined;
  process: WorkloadRuntime;
  /** The device's policy (`workloads.allow*`): what it refuses is listed, not thrown. */
  policy: WorkloadPolicy;
  secrets?: SecretSource | undefined;
  /** `workloads.stopTimeoutSeconds`: the longest a stop takes, so the longest gap of a recreate. */
  stopTimeoutSeconds: number;
}

/**
 * One step as the plan lists it; `instance` is the id of an existing instance, absent for the one a
 * create makes. `after` marks the steps of a later pass: the one once the download is here, the one
 * once the new version is healthy (a health-gated update removes the old only then).
 */
export interface PlanStep {
  kind: Step['kind'];
  instance?: string;
  image?: string;
  after?: 'download' | 'healthy';
}

export type PlanAction = 'create' | 'recreate' | 'remove' | 'start' | 'unchanged' | 'refused' | 'blocked';

/**
 * What a service sees: `none` (first start, unchanged), `gap` (stopped for at most `maxSeconds`, plus
 * the download under kill-then-download when `includesPull`), `permanent` (removed), `not-started` (refused, blocked).
 */
export interface Downtime {
  kind: 'none' | 'gap' | 'permanent' | 'not-started';
  maxSeconds?: number;
  includesPull?: boolean;
  /** The gap lasts until the new version is healthy (a health-gated update that cannot run twice: host ports, a written volume). */
  untilHealthy?: boolean;
}

export interface ServicePlanPreview {
  app: string;
  service: string;
  runtime: RuntimeKind | null;
  action: PlanAction;
  /** Why a recreate: `image` (another image), `config` (same image, another configuration), `runtime`. Or why refused/blocked. */
  why: string[];
  steps: PlanStep[];
  downtime: Downtime;
  updateStrategy: string | null;
}

export interface ImagePlan {
  image: string;
  present: boolean;
  /** Bytes of the image in the local store when present; null when not known (not present: a registry is not asked). */
  sizeBytes: number | null;
}

export interface TargetPlan {
  targetVersion: number;
  services: ServicePlanPreview[];
  /** Images the target needs: the ones to pull, and the ones already here. */
  images: { pull: ImagePlan[]; present: ImagePlan[]; presentBytes: number };
  /** What the device's policy refuses (host mounts, privileged...), each as `path: message`. */
  refused: string[];
  /** The container engine's state when it cannot run docker services. */
  engine: Availability;
}

export type PlanResult = { ok: true; plan: TargetPlan } | { ok: false; validation: Extract<TargetValidation, { ok: false }> };

const PERMISSIVE: WorkloadPolicy = { allowHostMounts: true, allowPrivileged: true, allowHostNetwork: true, allowDevices: true };

export class PlanPreview {
  constructor(private readonly o: PlanPreviewOptions) {}

  /** Validates `doc` as a target (schema errors: not ok) and plans it; policy refusals are listed in the plan. */
  async plan(doc: unknown, signal?: AbortSignal): Promise<PlanResult> {
    const v = validateTarget(doc, { policy: PERMISSIVE });
    if (!v.ok) return { ok: false, validation: v };
    return { ok: true, plan: await this.planTarget(v.target, signal) };
  }

  async planTarget(target: TargetState, signal?: AbortSignal): Promise<TargetPlan> {
    const { docker, instances } = await this.observe(signal);
    const resolved = resolveTarget(target, docker, this.o.policy, this.o.secrets);
    const byKey = new Map(resolved.map((r) => [serviceKey(r.desired.app, r.desired.service), r]));
    const found = new Map<string, Instance[]>();
    for (const i of instances) found.set(serviceKey(i.app, i.service), [...(found.get(serviceKey(i.app, i.service)) ?? []), i]);

    const images = await this.images(resolved, signal);
    const services: ServicePlanPreview[] = [];
    for (const key of new Set([...byKey.keys(), ...found.keys()])) {
      services.push(this.planOne(key, byKey.get(key), found.get(key) ?? [], images));
    }
    const refused: string[] = [];
    for (const [app, appDoc] of Object.entries(target.apps)) {
      for (const [name, spec] of Object.entries(appDoc.services)) {
        refused.push(...servicePolicyIssues(`apps.${app}.services.${name}`, spec, this.o.policy, 'local policy').map((i) => formatIssue(i)));
      }
    }
    const all = [...images.values()];
    const present = all.filter((i) => i.present);
    return {
      targetVersion: target.version,
      services,
      images: { pull: all.filter((i) => !i.present), present, presentBytes: present.reduce((n, i) => n + (i.sizeBytes ?? 0), 0) },
      refused,
      engine: docker,
    };
  }

  private async observe(signal?: AbortSignal): Promise<{ docker: Availability; instances: Instance[] }> {
    const rt = this.o.docker;
    let docker: Availability = rt ? await rt.availability(signal) : { ok: false, reason: 'no container engine is configured on this device' };
    const instances: Instance[] = [];
    if (rt && docker.ok) {
      try {
        instances.push(...(await rt.list(signal)));
      } catch (err) {
        docker = { ok: false, reason: `listing containers failed: ${(err as Error).message}` };
      }
    }
    instances.push(...(await this.o.process.list(signal)));
    return { docker, instances };
  }

  private async images(resolved: readonly ResolvedService[], signal?: AbortSignal): Promise<Map<string, ImagePlan>> {
    const out = new Map<string, ImagePlan>();
    const rt = this.o.docker;
    for (const r of resolved) {
      const image = r.desired.image;
      if (image === undefined || out.has(image) || r.blocked || !rt) continue;
      const size = rt.imageSize ? await rt.imageSize(image, signal) : undefined;
      const present = size !== undefined || (await rt.hasImage(image, signal));
      out.set(image, { image, present, sizeBytes: size ?? null });
    }
    return out;
  }

  /** What applying the target does to one service: its steps (simulated passes), the action, why, and its downtime. */
  private planOne(key: string, r: ResolvedService | undefined, instances: Instance[], images: Map<string, ImagePlan>): ServicePlanPreview {
    const [app = '', service = ''] = key.split('/');
    const image = r?.desired.image;
    const imagePresent = image === undefined || images.get(image)?.present === true;
    const steps = simulatePasses(r, instances, imagePresent);
    const common = { app, service, runtime: r?.desired.runtime ?? instances[0]?.runtime ?? null, steps, updateStrategy: r?.desired.updateStrategy ?? null };
    if (!r) return { ...common, action: 'remove', why: ['not in the target'], downtime: { kind: 'permanent' } };
    if (r.blocked) return { ...common, action: r.blocked.removeInstances ? 'refused' : 'blocked', why: [r.blocked.reason], downtime: { kind: 'not-started' } };
    if (!steps.some((s) => s.kind === 'create')) {
      const starts = steps.some((s) => s.kind === 'start');
      return { ...common, action: starts ? 'start' : 'unchanged', why: [], downtime: { kind: 'none' } };
    }
    if (instances.length === 0) return { ...common, action: 'create', why: [], downtime: { kind: 'none' } };
    const old = instances.find(isActive) ?? instances[0];
    const why = old && old.runtime !== r.desired.runtime ? 'runtime' : old && (old.image ?? undefined) !== image ? 'image' : 'config';
    return { ...common, action: 'recreate', why: [why], downtime: this.downtime(r, instances, steps) };
  }

  /** The gap a recreate leaves: none when nothing ran or the new one starts before the old is stopped (a health-gated update). */
  private downtime(r: ResolvedService, instances: Instance[], steps: PlanStep[]): Downtime {
    const running = new Set(instances.filter(isActive).map((i) => i.id));
    const stopAt = steps.findIndex((s) => s.kind === 'stop' && s.instance !== undefined && running.has(s.instance));
    const startAt = steps.findIndex((s) => s.kind === 'start' && s.instance === undefined);
    if (stopAt < 0 || (startAt >= 0 && startAt < stopAt)) return { kind: 'none' };
    const pullAt = steps.findIndex((s) => s.kind === 'pull');
    return {
      kind: 'gap',
      maxSeconds: this.o.stopTimeoutSeconds,
      ...(pullAt > stopAt ? { includesPull: true } : {}),
      ...(healthGated(r.desired) ? { untilHealthy: true } : {}),
    };
  }
}

/** At most this many passes are simulated: a pull, a create and start, the removal once healthy. */
const MAX_PASSES = 5;

/**
 * The reconciler's planner (planService), run pass after pass on a model of the service's instances
 * as the apply would see them when every step succeeds: a pull brings the image, a create makes an
 * instance, a start runs it and a new instance with a health check turns healthy before the next
 * pass. The steps of each later pass say what that pass waited for.
 */
function simulatePasses(r: ResolvedService | undefined, instances: readonly Instance[], imagePresent: boolean): PlanStep[] {
  let model = instances.map((i) => ({ ...i }));
  let present = imagePresent;
  let made = 0;
  const planned = new Set<string>();
  const out: PlanStep[] = [];
  let after: PlanStep['after'];
  for (let pass = 0; pass < MAX_PASSES; pass++) {
    const { steps } = planService({ resolved: r, instances: model, imagePresent: present, pulling: false, pullWaiting: false, crashWaiting: false });
    if (steps.length === 0) break;
    let created: Instance | undefined;
    for (const step of steps) {
      out.push(toPlanStep(step, planned, after));
      if (step.kind === 'pull') present = true;
      else if (step.kind === 'remove') model = model.filter((i) => i.id !== step.instance.id);
      else if (step.kind === 'stop') Object.assign(model.find((i) => i.id === step.instance.id) ?? {}, { state: 'exited', exitCode: 0, health: null });
      else if (step.kind === 'create') {
        created = createdInstance(step.desired, `planned-${++made}`);
        planned.add(created.id);
        model.push(created);
      } else {
        const id = step.instance?.id ?? created?.id;
        Object.assign(model.find((i) => i.id === id) ?? {}, { state: 'running', startedAt: pass + 1, exitCode: null, error: null, health: r && hasHealthcheck(r.desired.spec.healthcheck) ? 'starting' : null });
      }
    }
    if (steps.at(-1)?.kind === 'pull') after = 'download';
    else if (model.some((i) => i.health === 'starting')) {
      after = 'healthy';
      for (const i of model) if (i.health === 'starting') i.health = 'healthy';
    }
  }
  return out;
}

/** A planner step as listed: ids of instances the plan itself makes are left out (they do not exist yet). */
function toPlanStep(s: Step, planned: ReadonlySet<string>, after: PlanStep['after']): PlanStep {
  const when = after === undefined ? {} : { after };
  switch (s.kind) {
    case 'pull':
      return { kind: 'pull', image: s.image, ...when };
    case 'create':
      return { kind: 'create', ...when };
    case 'stop':
    case 'remove':
    case 'start':
      return s.instance && !planned.has(s.instance.id) ? { kind: s.kind, instance: s.instance.id, ...when } : { kind: s.kind, ...when };
  }
}
