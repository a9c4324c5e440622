import { hasHealthcheck } from './app-graph.js';
import { parseVolume } from './target-schema.js';
import type { Logger } from '../util/logger.js';
import type { DesiredService, Instance, ServiceStatus } from './types.js';

/**
 * Updates that wait for healthy: with download-then-kill (the default), a container service with a
 * health check runs its new version beside the old one and the old is removed only once the new is
 * healthy. A service that publishes host ports or writes a volume cannot run twice: there the old is stopped first
 * and kept (stopped) until the new is healthy, so it can be started again. A new version that turns
 * unhealthy or exits first is removed, the old keeps (or resumes) running, and the configuration is
 * remembered as rejected: it is not tried again until the target asks for another configuration.
 *
 * Pure, like the planner (planner.ts calls it): the instances and the verdict in, the steps out.
 */

/** The steps this module plans (a subset of the planner's `Step`). */
export type GateStep =
  | { kind: 'stop'; instance: Instance }
  | { kind: 'remove'; instance: Instance }
  | { kind: 'create'; desired: DesiredService }
  | { kind: 'start'; instance?: Instance; restart: boolean };

export interface GatePlan {
  steps: GateStep[];
  status: ServiceStatus;
  current: Instance | undefined;
  reason?: string;
  /** The new configuration failed its health check: the reconciler remembers it as rejected, with this reason. */
  reject?: string;
  /** The old version runs because the new one was rejected (the apply counts as failed). */
  rejectedUpdate?: boolean;
}

export interface GateInput {
  desired: DesiredService;
  /** The instance with the wanted configuration (preferred first), if any. */
  current: Instance | undefined;
  /** The service's other instances. */
  stale: readonly Instance[];
  imagePresent: boolean;
  /** Why this configuration was rejected before, if it was. */
  rejected: string | undefined;
  isActive: (i: Instance) => boolean;
  hasExited: (i: Instance) => boolean;
}

/** Whether updates of this service wait for the new version to be healthy. */
export function healthGated(d: DesiredService): boolean {
  return d.runtime === 'docker' && d.updateStrategy === 'download-then-kill' && hasHealthcheck(d.spec.healthcheck);
}

function drop(instances: readonly Instance[], isActive: (i: Instance) => boolean): GateStep[] {
  return instances.flatMap((i): GateStep[] => (isActive(i) ? [{ kind: 'stop', instance: i }, { kind: 'remove', instance: i }] : [{ kind: 'remove', instance: i }]));
}

/** The status an active instance shows: its health check's verdict, or running without one. */
export function healthStatus(i: Instance): ServiceStatus {
  return i.health === 'starting' ? 'starting' : i.health === 'unhealthy' ? 'unhealthy' : 'running';
}

/** Why a new instance is judged a failure, or undefined while it may still become healthy. */
function failure(i: Instance, g: GateInput): string | undefined {
  if (g.isActive(i)) return i.health === 'unhealthy' ? `unhealthy${i.healthLog ? `: ${i.healthLog}` : ''}` : undefined;
  if (!g.hasExited(i)) return undefined;
  return i.error ?? (i.exitCode === null ? 'exited' : `exited with code ${i.exitCode}`);
}

/** Keeps (or brings back) the old instance: stale ones beyond it go, a stopped one is started. */
function keepOld(old: Instance, others: readonly Instance[], g: GateInput, reason: string): GatePlan {
  const steps: GateStep[] = drop(others, g.isActive);
  if (g.isActive(old)) return { steps, status: healthStatus(old), current: old, reason };
  return { steps: [...steps, { kind: 'start', instance: old, restart: false }], status: 'creating', current: old, reason };
}

/** The plan for a health-gated update, or undefined when the planner's own rules apply. */
export function planGatedUpdate(g: GateInput): GatePlan | undefined {
  if (!healthGated(g.desired)) return undefined;
  const old = [...g.stale].sort((a, b) => Number(g.isActive(b)) - Number(g.isActive(a)) || (b.startedAt ?? 0) - (a.startedAt ?? 0))[0];
  if (old === undefined || old.runtime !== 'docker') return undefined;
  const others = g.stale.filter((i) => i !== old);
  if (g.rejected !== undefined) {
    return { ...keepOld(old, [...others, ...(g.current ? [g.current] : [])], g, `new version unhealthy: ${g.rejected}`), rejectedUpdate: true };
  }
  if (g.current) {
    const why = failure(g.current, g);
    if (why !== undefined) return { ...keepOld(old, [...others, g.current], g, `new version unhealthy: ${why}`), reject: why, rejectedUpdate: true };
    if (g.isActive(g.current) && g.current.health !== 'starting') return { steps: drop(g.stale, g.isActive), status: healthStatus(g.current), current: g.current };
    // Created and not started yet (the agent stopped between the two), or still starting: wait, the old stays.
    const start: GateStep[] = g.isActive(g.current) ? [] : [{ kind: 'start', instance: g.current, restart: false }];
    return { steps: start, status: 'starting', current: g.current };
  }
  if (!g.imagePresent || !g.isActive(old)) return undefined;
  // A host port can be bound once, and two writers on one volume (a database's lock) would fail or
  // corrupt it: stop the old first, but keep it for a rollback.
  const exclusive = g.desired.spec.ports.length > 0 || g.desired.spec.volumes.some((v) => parseVolume(v)?.readOnly === false);
  const stopFirst: GateStep[] = exclusive ? [{ kind: 'stop', instance: old }] : [];
  return { steps: [...drop(others, g.isActive), ...stopFirst, { kind: 'create', desired: g.desired }, { kind: 'start', restart: false }], status: 'starting', current: undefined };
}

/**
 * The configurations that failed as updates, per service. In memory: after an agent restart the
 * update is tried once more (the old instance is still there to fall back to).
 */
export class RejectedUpdates {
  private readonly byKey = new Map<string, { hash: string; reason: string }>();

  /** Why `hash` was rejected for the service, if it was. */
  reason(key: string, hash: string): string | undefined {
    const r = this.byKey.get(key);
    return r?.hash === hash ? r.reason : undefined;
  }

  /** Remembers the configuration of a plan that rejected its update. */
  record(key: string, desired: DesiredService, plan: Pick<GatePlan, 'reject'> | undefined, logger: Logger): void {
    if (plan?.reject === undefined) return;
    this.byKey.set(key, { hash: desired.configHash, reason: plan.reject });
    logger.warn({ app: desired.app, service: desired.service, why: plan.reject }, `service ${key}: the new version failed (${plan.reject}); keeping the old one`);
  }

  /** Forgets services gone from the target and services whose wanted configuration changed. */
  prune(wanted: ReadonlyMap<string, string>): void {
    for (const [key, r] of this.byKey) if (wanted.get(key) !== r.hash) this.byKey.delete(key);
  }
}
