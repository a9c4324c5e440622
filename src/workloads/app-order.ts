import { dependencies, waitingFor } from './app-graph.js';
import { isActive, serviceKey, type ResolvedService, type ServicePlan } from './planner.js';
import type { Instance } from './types.js';

/**
 * The start order of an app: a service whose plan would create or first start an instance waits
 * (no steps, status `waiting`, the reason naming the dependency) until each of its dependencies is
 * running, or healthy where asked. What runs meanwhile keeps running. Restarts after a crash do not
 * wait: the dependency was there once and the service is expected to cope, as with Compose.
 */
export function holdForDependencies(plans: Map<string, ServicePlan>, byKey: ReadonlyMap<string, ResolvedService>, instances: ReadonlyMap<string, readonly Instance[]>): void {
  holdRemovals(plans, byKey, instances);
  for (const [key, plan] of plans) {
    const r = byKey.get(key);
    if (!r || r.blocked) continue;
    if (!plan.steps.some((s) => s.kind === 'create' || (s.kind === 'start' && !s.restart))) continue;
    const why = waitingFor(dependencies(r.desired.spec.dependsOn), (service) => plans.get(serviceKey(r.desired.app, service))?.status);
    if (why === undefined) continue;
    plan.steps = [];
    plan.status = 'waiting';
    plan.reason = why;
  }
}

/**
 * The stop order of services leaving the target: the reverse of the start order. A leaving service
 * that a leaving service of its app depended on (its instances' `dependsOn`) still running waits
 * for it; a pass later (the loop looks again at once after acting) it goes.
 */
function holdRemovals(plans: Map<string, ServicePlan>, byKey: ReadonlyMap<string, ResolvedService>, instances: ReadonlyMap<string, readonly Instance[]>): void {
  for (const [key, plan] of plans) {
    if (byKey.has(key) || !plan.steps.some((s) => s.kind === 'stop')) continue;
    const slash = key.indexOf('/');
    const app = key.slice(0, slash);
    const service = key.slice(slash + 1);
    const dependent = [...instances].find(([k, list]) => k !== key && !byKey.has(k) && k.startsWith(`${app}/`) && list.some((i) => isActive(i) && i.dependsOn?.includes(service) === true));
    if (dependent) {
      // Held, not done: the apply is still under way (the state must not say applied while it runs).
      plan.steps = [];
      plan.status = 'waiting';
    }
  }
}
