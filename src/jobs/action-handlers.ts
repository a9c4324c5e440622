import { ActionError, type ActionCaller, type DeviceActions, type PowerRequest } from '../actions/device-actions.js';
import type { Json } from '../util/json-diff.js';
import type { PlanPreview } from '../workloads/plan-preview.js';
import { describeValue } from '../config/issues.js';
import { JobRejected, type JobContext, type JobHandler } from './types.js';

/**
 * The job types of the device actions (docs/jobs.md): `restart-service`, `restart-app`, `reboot`,
 * `shutdown`, `purge-app`, and the plan preview `plan-target`. What the device refuses (not allowed,
 * no such app, a wrong confirmation) is REJECTED with the reason.
 */
export interface ActionJobs {
  handlers: Record<string, JobHandler>;
  /** The runner finished a job (its result queued durably): a reboot or shutdown it asked for goes now. */
  finished(jobId: string): void;
}

function name(params: Record<string, Json>, field: 'app' | 'service'): string {
  const v = params[field];
  if (typeof v !== 'string' || v === '') throw new JobRejected(`params.${field}: expected the name of a${field === 'app' ? 'n app' : ' service'} of the target, got ${describeValue(v)}`);
  return v;
}

async function refusedAsRejected<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (err instanceof ActionError) throw new JobRejected(err.message);
    throw err;
  }
}

export function actionJobHandlers(actions: DeviceActions, preview: PlanPreview): ActionJobs {
  const pending = new Map<string, PowerRequest>();
  const who = (ctx: JobContext): ActionCaller => ({ by: 'job', jobId: ctx.jobId });
  const power =
    (action: 'reboot' | 'shutdown'): JobHandler =>
    async (_params, ctx) => {
      const req = await refusedAsRejected(() => actions.power(action, who(ctx)));
      pending.set(ctx.jobId, req);
      return { outcome: `${action} requested` };
    };
  return {
    handlers: {
      'restart-service': (params, ctx) => refusedAsRejected(() => actions.restartService(name(params, 'app'), name(params, 'service'), who(ctx))),
      'restart-app': (params, ctx) => refusedAsRejected(() => actions.restartApp(name(params, 'app'), who(ctx))),
      reboot: power('reboot'),
      shutdown: power('shutdown'),
      'purge-app': (params, ctx) => refusedAsRejected(() => actions.purgeApp(name(params, 'app'), params.confirm, who(ctx))),
      'plan-target': async (params, ctx) => {
        if (params.target === undefined) throw new JobRejected('params.target: expected a candidate target state (the body of /v2/local/target-state), got nothing');
        const r = await preview.plan(params.target, ctx.signal);
        if (!r.ok) throw new JobRejected(`params.target: ${r.validation.message}`);
        return r.plan as unknown as Json;
      },
    },
    finished: (jobId) => {
      const req = pending.get(jobId);
      pending.delete(jobId);
      req?.go();
    },
  };
}
