import { createHash } from 'node:crypto';
import { normalizeImage } from './image-ref.js';
import { servicePolicyIssues, updateStrategyOf, UPDATE_STRATEGY_LABEL, type ServiceSpec, type TargetState, type WorkloadPolicy } from './target-schema.js';
import { formatIssue } from '../config/issues.js';
import { healthStatus, planGatedUpdate } from './health-gate.js';
import type { Availability, DesiredService, Instance, RuntimeKind, SecretSource, ServiceStatus } from './types.js';

/**
 * The pure half of the reconciler: from what the target wants and what runs, the steps that close
 * the gap for one service. No I/O and no clock here, so every rule is unit-tested directly.
 */

export function serviceKey(app: string, service: string): string {
  return `${app}/${service}`;
}

/** Deterministic JSON: object keys sorted, so the same configuration always hashes the same. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * The hash of what an instance is made from. The restart policy, the update strategy and the
 * dependencies are left out: the agent applies them itself, so changing them must not recreate a running service.
 */
export function configHash(runtime: RuntimeKind, spec: ServiceSpec): string {
  const { restart: _restart, runtime: _runtime, labels, image, dependsOn: _dependsOn, ...rest } = spec;
  const { [UPDATE_STRATEGY_LABEL]: _strategy, ...ownLabels } = labels;
  const material = { runtime, image: image === undefined ? undefined : normalizeImage(image), labels: ownLabels, ...rest };
  return createHash('sha256').update(canonical(material)).digest('hex').slice(0, 32);
}

export interface ResolvedService {
  desired: DesiredService;
  /** Why it cannot run now (no engine, refused by the local policy); steps are then limited to removing what runs. */
  blocked?: { reason: string; removeInstances: boolean };
}

/**
 * The values of the secrets a service names, and the names missing from the store. With the values,
 * the service's hash takes an HMAC of them: a changed value recreates the service.
 */
function serviceSecrets(spec: ServiceSpec, secrets: SecretSource | undefined): { values: Map<string, string>; missing: string[]; digest: string | undefined } {
  const values = new Map<string, string>();
  const missing: string[] = [];
  for (const ref of spec.secrets) {
    const v = secrets?.get(ref.name);
    if (v === undefined) missing.push(ref.name);
    else values.set(ref.name, v);
  }
  const digest = values.size > 0 && secrets ? secrets.digest([...values].sort(([a], [b]) => (a < b ? -1 : 1))) : undefined;
  return { values, missing, digest };
}

/** Resolves each service of the target: its runtime (for `auto`), image, hash, strategy and secrets. */
export function resolveTarget(target: TargetState, docker: Availability, policy: Readonly<WorkloadPolicy>, secrets?: SecretSource): ResolvedService[] {
  const out: ResolvedService[] = [];
  for (const [app, appDoc] of Object.entries(target.apps)) {
    for (const [service, spec] of Object.entries(appDoc.services)) {
      const runtime: RuntimeKind = spec.runtime === 'process' || (spec.runtime === 'auto' && spec.image === undefined) ? 'process' : 'docker';
      const used = serviceSecrets(spec, secrets);
      const hash = configHash(runtime, spec);
      const desired: DesiredService = {
        app,
        service,
        spec,
        runtime,
        image: runtime === 'docker' && spec.image !== undefined ? normalizeImage(spec.image) : undefined,
        configHash: used.digest === undefined ? hash : createHash('sha256').update(`${hash}:${used.digest}`).digest('hex').slice(0, 32),
        updateStrategy: updateStrategyOf(spec),
        secretValues: used.values,
      };
      const refused = servicePolicyIssues(`apps.${app}.services.${service}`, spec, policy, 'local policy');
      if (used.missing.length > 0) {
        // A running instance keeps the values it was given (as offline); nothing new starts without them.
        out.push({ desired, blocked: { reason: `waiting for secret ${used.missing.join(', ')}`, removeInstances: false } });
      } else if (refused.length > 0) {
        out.push({ desired, blocked: { reason: refused.map((i) => formatIssue(i)).join('; '), removeInstances: true } });
      } else if (runtime === 'docker' && !docker.ok) {
        const reason =
          spec.runtime === 'auto'
            ? `runtime "auto" with an image needs a container engine, and none answers: ${docker.reason}`
            : `no container engine answers: ${docker.reason}`;
        out.push({ desired, blocked: { reason, removeInstances: false } });
      } else out.push({ desired });
    }
  }
  return out;
}

/** Whether the restart policy asks for another run after this exit. */
export function wantsRestart(restart: ServiceSpec['restart'], instance: Pick<Instance, 'exitCode' | 'error'>): boolean {
  switch (restart) {
    case 'no':
      return false;
    case 'on-failure':
      return instance.error !== null || (instance.exitCode !== null && instance.exitCode !== 0);
    case 'always':
    case 'unless-stopped':
      return true;
  }
}

/** An instance that has run and stopped, or whose start failed: not running, and not waiting for a first start. */
export function hasExited(i: Instance): boolean {
  if (i.state === 'exited' || i.state === 'dead') return true;
  return i.state === 'created' && (i.error !== null || i.startedAt !== null);
}

/** An instance as a create makes it: created, never started. */
export function createdInstance(d: DesiredService, id: string): Instance {
  const never = { exitCode: null, error: null, startedAt: null, finishedAt: null, exitKey: null };
  return { id, runtime: d.runtime, app: d.app, service: d.service, configHash: d.configHash, image: d.image ?? null, state: 'created', ...never };
}

export function isActive(i: Instance): boolean {
  return i.state === 'running' || i.state === 'restarting' || i.state === 'paused';
}

export type Step =
  | { kind: 'pull'; image: string }
  | { kind: 'stop'; instance: Instance }
  | { kind: 'remove'; instance: Instance }
  | { kind: 'create'; desired: DesiredService }
  /** Starts `instance`, or the instance the previous `create` made. */
  | { kind: 'start'; instance?: Instance; restart: boolean };

export interface PlanInput {
  /** Undefined when the service is not in the target (its instances go). */
  resolved: ResolvedService | undefined;
  /** Every instance for this app/service, on every runtime that answered. */
  instances: readonly Instance[];
  /** For docker services: whether the image is here. */
  imagePresent: boolean;
  /** A pull of the image is running now. */
  pulling: boolean;
  /** The pull backoff holds the next pull back. */
  pullWaiting: boolean;
  /** The crash loop holds the next start back. */
  crashWaiting: boolean;
  /** Why this configuration failed its health check as an update before (health-gate.ts), if it did. */
  rejected?: string | undefined;
}

export interface ServicePlan {
  steps: Step[];
  /** What the service is while the steps run (or, with no steps, what it is). */
  status: ServiceStatus;
  /** The instance that is (or will be) the service, if there is one now. */
  current: Instance | undefined;
  reason?: string;
  /** The new configuration failed its health check as an update: remember it as rejected, for this reason. */
  reject?: string;
  /** The old version runs because the new one was rejected. */
  rejectedUpdate?: boolean;
}

function teardown(instances: readonly Instance[]): Step[] {
  return instances.flatMap((i): Step[] => (isActive(i) ? [{ kind: 'stop', instance: i }, { kind: 'remove', instance: i }] : [{ kind: 'remove', instance: i }]));
}

/** Running first, then the most recently started. */
function preferred(a: Instance, b: Instance): number {
  const rank = (i: Instance): number => (isActive(i) ? 0 : 1);
  return rank(a) - rank(b) || (b.startedAt ?? 0) - (a.startedAt ?? 0);
}

/**
 * The steps for one service. Rules, in order:
 * - not in the target: stop and remove its instances;
 * - blocked (no engine; refused by the local policy): nothing is started, and under a refusal what
 *   runs is removed;
 * - an instance with the wanted configuration exists: extra instances go; if it exited and the
 *   restart policy wants it back, it is started once the crash loop allows;
 * - otherwise the image is fetched first (download-then-kill: the old instance keeps running while
 *   the new image downloads, and keeps running if the download fails), then the old instance is
 *   stopped and removed and the new one created and started. kill-then-download stops the old one
 *   first.
 */
export function planService(input: PlanInput): ServicePlan {
  const { resolved, instances } = input;
  if (!resolved) return { steps: teardown(instances), status: 'stopped', current: undefined };
  const { desired, blocked } = resolved;
  if (blocked) {
    return { steps: blocked.removeInstances ? teardown(instances) : [], status: 'failed', current: undefined, reason: blocked.reason };
  }
  const matching = instances.filter((i) => i.runtime === desired.runtime && i.configHash === desired.configHash).sort(preferred);
  const current = matching[0];
  const stale = instances.filter((i) => i !== current);
  if (current || !input.crashWaiting) {
    const gated = planGatedUpdate({ desired, current, stale, imagePresent: input.imagePresent, rejected: input.rejected, isActive, hasExited });
    if (gated) return gated;
  }

  if (current) {
    const steps = teardown(stale);
    if (isActive(current)) return { steps, status: healthStatus(current), current };
    if (!hasExited(current)) {
      // Created and never started (the agent stopped between the two): start it now.
      return { steps: [...steps, { kind: 'start', instance: current, restart: false }], status: 'creating', current };
    }
    if (!wantsRestart(desired.spec.restart, current)) return { steps, status: 'exited', current };
    if (input.crashWaiting) return { steps, status: 'backoff', current };
    return { steps: [...steps, { kind: 'start', instance: current, restart: true }], status: 'creating', current };
  }

  const killFirst = desired.updateStrategy === 'kill-then-download';
  if (desired.runtime === 'docker' && !input.imagePresent) {
    const image = desired.image ?? '';
    // kill-then-download frees the old instance's resources before the download, whatever its outcome.
    const before = killFirst ? teardown(stale) : [];
    if (input.pulling) return { steps: before, status: 'pulling', current: undefined };
    if (input.pullWaiting) return { steps: before, status: 'backoff', current: undefined };
    return { steps: [...before, { kind: 'pull', image }], status: 'pulling', current: undefined };
  }
  if (input.crashWaiting) {
    // The last create or start failed; old instances of another configuration are already gone
    // or, under download-then-kill with the image missing, still running above.
    return { steps: teardown(stale), status: 'backoff', current: undefined };
  }
  return { steps: [...teardown(stale), { kind: 'create', desired }, { kind: 'start', restart: false }], status: 'creating', current: undefined };
}
