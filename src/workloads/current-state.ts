import type { ResolvedService, ServicePlan } from './planner.js';
import { isActive } from './planner.js';
import type { RetryManager } from './retry.js';
import type { TargetState } from './target-schema.js';
import type { ApplyStatus, CurrentState, ServiceState } from './types.js';

/** What the current state is computed from besides the pass's plans (the reconciler's memos and backoffs). */
export interface StateInputs {
  memo(key: string, configHash: string): { restarts: number; lastError: string | null };
  retry: RetryManager;
  /** Downloads under way: while any runs, the target is still being applied. */
  pullsUnderWay: number;
  /** Wall-clock now, for a service seen running before its instance is listed. */
  now: number;
}

/** The current state a reconcile pass reports: each service's status, restarts, last error and retry time, and the apply status. */
export function buildCurrentState(target: TargetState, byKey: Map<string, ResolvedService>, plans: Map<string, ServicePlan>, acting: boolean, o: StateInputs): CurrentState {
  const apps: CurrentState['apps'] = {};
  let anyBusy = acting || o.pullsUnderWay > 0;
  let anyFailed = false;
  for (const [key, r] of byKey) {
    const plan = plans.get(key);
    const memo = o.memo(key, r.desired.configHash);
    const { desired } = r;
    const s: ServiceState = {
      status: plan?.status ?? 'stopped',
      restarts: memo.restarts,
      lastError: memo.lastError,
      image: desired.spec.image ?? null,
      runtime: desired.runtime,
      startedAt: null,
      nextRetryAt: null,
      exitCode: null,
    };
    const cur = plan?.current;
    if (cur) {
      s.exitCode = cur.exitCode;
      if (isActive(cur)) s.startedAt = cur.startedAt;
    } else if (s.status === 'running') s.startedAt = o.now;
    s.lastError = r.blocked?.reason ?? planError(s, plan) ?? s.lastError;
    if (s.status === 'backoff') {
      const crash = o.retry.crash.view(key);
      const pull = desired.image !== undefined ? o.retry.pull.view(desired.image) : undefined;
      const v = pull && o.retry.pull.waiting(desired.image as string) ? pull : crash;
      s.nextRetryAt = v.nextRetryAt;
      s.lastError = v.lastError ?? s.lastError;
    }
    if (['pulling', 'creating', 'stopped', 'starting', 'waiting'].includes(s.status)) anyBusy = true;
    if (s.status === 'failed' || s.status === 'backoff' || s.status === 'unhealthy' || plan?.rejectedUpdate === true) anyFailed = true;
    // Object.hasOwn: an app may be named "constructor", which a plain object already "has".
    const appState = Object.hasOwn(apps, desired.app) ? (apps[desired.app] as CurrentState['apps'][string]) : (apps[desired.app] = { services: {} });
    appState.services[desired.service] = s;
  }
  // A service leaving the target whose removal waits for another's (the reverse start order).
  for (const [key, plan] of plans) if (!byKey.has(key) && plan.status === 'waiting') anyBusy = true;
  const status: ApplyStatus = anyBusy ? 'applying' : anyFailed ? 'failed' : 'applied';
  return { status, targetVersion: target.version, apps };
}

function planError(s: ServiceState, plan: ServicePlan | undefined): string | undefined {
  if (plan?.reason !== undefined) return plan.reason;
  if (s.status !== 'unhealthy') return undefined;
  const log = plan?.current?.healthLog;
  return `unhealthy${log ? `: ${log}` : ''}`;
}
