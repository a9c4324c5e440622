import type { CloudLoopDeps } from '../cloud/loop-deps.js';
import type { TargetStatePoller } from '../cloud/target-state.js';
import { pollTargetHandler, restartServiceHandler, runCommandHandler } from '../jobs/handlers.js';
import { JobPoller } from '../jobs/poller.js';
import { JobRunner } from '../jobs/runner.js';
import type { JobHandler } from '../jobs/types.js';
import type { Outbox } from '../outbox/outbox.js';
import type { Reconciler } from '../workloads/reconciler.js';
import { resolveProcessUser } from '../workloads/runtimes/process.js';
import type { Core } from './core.js';

export interface JobsNeeds {
  /** The jobs poller's cloud loop deps. */
  loop: CloudLoopDeps;
  outbox: Outbox;
  poller: Pick<TargetStatePoller, 'pollOnce'>;
  reconciler: Pick<Reconciler, 'restartService'>;
}

/** Cloud jobs (`features.jobs`): the job types this agent runs, the runner, and the poller that feeds it. */
export function buildJobs(core: Core, needs: JobsNeeds): { runner: JobRunner; poller: JobPoller } {
  const { config, store, clock, random, logger } = core;
  const handlers: Record<string, JobHandler> = {
    'run-command': runCommandHandler({ allowed: config.jobs.allowedCommands, maxOutputBytes: config.jobs.maxOutputBytes, user: resolveProcessUser(config.workloads.processUser) }),
    'poll-target': pollTargetHandler((s) => needs.poller.pollOnce(s)),
    'restart-service': restartServiceHandler((app, service, s) => needs.reconciler.restartService(app, service, s)),
  };
  const runner = new JobRunner({ db: store.db, outbox: needs.outbox, handlers, clock, logger: logger.child({ part: 'jobs' }), history: config.jobs.history });
  const poller = new JobPoller({ ...needs.loop, random, runner, pollIntervalMs: () => config.jobs.pollIntervalMs });
  return { runner, poller };
}
