import { formatIssue } from '../config/issues.js';
import { isActive, planService, resolveTarget, serviceKey, type ResolvedService, type Step } from './planner.js';
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

/** One step as the plan lists it; `instance` is the id of an existing instance, absent for the one a create makes. */
export interface PlanStep {
  kind: Step['kind'];
  instance?: string;
  image?: string;
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

  /**
   * The reconciler's planner, run as the passes would: the first pass (with the image as it is),
   * then, when that pass ends at a pull, the pass after the download.
   */
  private planOne(key: string, r: ResolvedService | undefined, instances: Instance[], images: Map<string, ImagePlan>): ServicePlanPreview {
    const [app = '', service = ''] = key.split('/');
    const image = r?.desired.image;
    const imagePresent = image === undefined || images.get(image)?.present === true;
    const base = { pulling: false, pullWaiting: false, crashWaiting: false };
    const first = planService({ resolved: r, instances, imagePresent, ...base }).steps;
    let steps = first;
    if (first.at(-1)?.kind === 'pull') {
      const gone = new Set(first.flatMap((s) => (s.kind === 'remove' ? [s.instance.id] : [])));
      const after = planService({ resolved: r, instances: instances.filter((i) => !gone.has(i.id)), imagePresent: true, ...base }).steps;
      steps = [...first, ...after];
    }
    const planSteps = steps.map(toPlanStep);
    const common = { app, service, runtime: r?.desired.runtime ?? instances[0]?.runtime ?? null, steps: planSteps, updateStrategy: r?.desired.updateStrategy ?? null };
    if (!r) return { ...common, action: 'remove', why: ['not in the target'], downtime: { kind: 'permanent' } };
    if (r.blocked) return { ...common, action: r.blocked.removeInstances ? 'refused' : 'blocked', why: [r.blocked.reason], downtime: { kind: 'not-started' } };
    const creates = steps.some((s) => s.kind === 'create');
    const running = instances.filter(isActive);
    if (!creates) {
      const starts = steps.some((s) => s.kind === 'start');
      return { ...common, action: starts ? 'start' : 'unchanged', why: [], downtime: { kind: 'none' } };
    }
    if (instances.length === 0) return { ...common, action: 'create', why: [], downtime: { kind: 'none' } };
    const old = running[0] ?? instances[0];
    const why: string[] = [];
    if (old && old.runtime !== r.desired.runtime) why.push('runtime');
    else if (old && (old.image ?? undefined) !== image) why.push('image');
    else why.push('config');
    const downtime: Downtime =
      running.length === 0
        ? { kind: 'none' }
        : { kind: 'gap', maxSeconds: this.o.stopTimeoutSeconds, ...(r.desired.updateStrategy === 'kill-then-download' && !imagePresent ? { includesPull: true } : {}) };
    return { ...common, action: 'recreate', why, downtime };
  }
}

function toPlanStep(s: Step): PlanStep {
  switch (s.kind) {
    case 'pull':
      return { kind: 'pull', image: s.image };
    case 'stop':
    case 'remove':
      return { kind: s.kind, instance: s.instance.id };
    case 'create':
      return { kind: 'create' };
    case 'start':
      return s.instance ? { kind: 'start', instance: s.instance.id } : { kind: 'start' };
  }
}
