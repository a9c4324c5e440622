import { dependencies, waitingFor } from './app-graph.js';
import { serviceKey, type ResolvedService, type ServicePlan } from './planner.js';

/**
 * The start order of an app: a service whose plan would create or first start an instance waits
 * (no steps, status `waiting`, the reason naming the dependency) until each of its dependencies is
 * running, or healthy where asked. What runs meanwhile keeps running. Restarts after a crash do not
 * wait: the dependency was there once and the service is expected to cope, as with Compose.
 */
export function holdForDependencies(plans: Map<string, ServicePlan>, byKey: ReadonlyMap<string, ResolvedService>): void {
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
