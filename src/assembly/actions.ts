import { DeviceActions } from '../actions/device-actions.js';
import type { PowerAction } from '../actions/power.js';
import type { Json } from '../util/json-diff.js';
import { PlanPreview } from '../workloads/plan-preview.js';
import type { Core } from './core.js';
import type { Queueing } from './outbox.js';
import type { Workloads } from './workloads.js';

export interface ActionParts {
  actions: DeviceActions;
  preview: PlanPreview;
}

/** Device actions and the plan preview; `power` stops the agent and runs the power action (Agent.powerOff). */
export function buildActions(core: Core, workloads: Workloads, queueing: Queueing, power: (action: PowerAction) => void): ActionParts {
  const { config, logger } = core;
  const { runtimes, reconciler, targets, policy, secrets } = workloads;
  const actions = new DeviceActions({
    config: config.actions,
    reconciler,
    source: targets,
    runtimes: [runtimes.process, runtimes.docker],
    // Awaited: an action's event is durable before its answer (a reboot's before the agent stops).
    record: async (type, data) => {
      await queueing.outbox.enqueue({ channel: 'events', payload: JSON.parse(JSON.stringify({ type, ...data })) as Json });
    },
    power,
    logger: logger.child({ part: 'actions' }),
  });
  const preview = new PlanPreview({ docker: runtimes.docker, process: runtimes.process, policy, secrets, stopTimeoutSeconds: config.workloads.stopTimeoutSeconds });
  return { actions, preview };
}
