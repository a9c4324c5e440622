import type { CloudLoopDeps } from '../cloud/loop-deps.js';
import type { TargetStatePoller } from '../cloud/target-state.js';
import { pollTargetHandler, restartServiceHandler, runCommandHandler } from '../jobs/handlers.js';
import { JobPoller } from '../jobs/poller.js';
import { JobRunner } from '../jobs/runner.js';
import type { JobHandler } from '../jobs/types.js';
import type { Outbox } from '../outbox/outbox.js';
import type { Reconciler } from '../workloads/reconciler.js';
import { resolveProcessUser } from '../workloads/runtimes/process.js';
import type { CloudHttpClient } from '../cloud/http-client.js';
import { LIFECYCLE_JOB_TYPES } from '../lifecycle/settle.js';
import { updateAgentHandler } from '../lifecycle/update-agent.js';
import { updateConfigHandler } from '../lifecycle/update-config.js';
import { actionJobHandlers } from '../jobs/action-handlers.js';
import type { ActionParts } from './actions.js';
import type { Core } from './core.js';

export interface JobsNeeds {
  /** The jobs poller's cloud loop deps. */
  loop: CloudLoopDeps;
  outbox: Outbox;
  poller: Pick<TargetStatePoller, 'pollOnce'>;
  reconciler: Pick<Reconciler, 'restartService'>;
  http: CloudHttpClient;
  actions: ActionParts;
}

/** Cloud jobs (`features.jobs`): the job types this agent runs, the runner, and the poller that feeds it. */
export function buildJobs(core: Core, needs: JobsNeeds): { runner: JobRunner; poller: JobPoller } {
  const { config, store, clock, random, logger } = core;
  const actionJobs = actionJobHandlers(needs.actions.actions, needs.actions.preview);
  const handlers: Record<string, JobHandler> = {
    'run-command': runCommandHandler({ allowed: config.jobs.allowedCommands, maxOutputBytes: config.jobs.maxOutputBytes, user: resolveProcessUser(config.workloads.processUser) }),
    'poll-target': pollTargetHandler((s) => needs.poller.pollOnce(s)),
    'restart-service': restartServiceHandler((app, service, s) => needs.reconciler.restartService(app, service, s)),
    ...lifecycleHandlers(core, needs.http),
    ...actionJobs.handlers,
  };
  const runner = new JobRunner({ db: store.db, outbox: needs.outbox, handlers, clock, logger: logger.child({ part: 'jobs' }), history: config.jobs.history, finishedElsewhere: LIFECYCLE_JOB_TYPES });
  // A reboot or shutdown job goes once its SUCCEEDED is queued durably.
  runner.on('finished', (job) => actionJobs.finished(job.id));
  const poller = new JobPoller({ ...needs.loop, random, runner, pollIntervalMs: () => config.jobs.pollIntervalMs });
  return { runner, poller };
}

/** `update-agent` and `update-config` (docs/lifecycle.md): they switch through the launcher, rejected without one. */
function lifecycleHandlers(core: Core, http: CloudHttpClient): Record<string, JobHandler> {
  const { config, store, version } = core;
  const lc = core.lifecycle ?? { link: undefined, configFile: undefined, schemaVersion: 0, env: {} };
  const common = { link: lc.link, dataDir: config.dataDir, version, schemaVersion: lc.schemaVersion };
  return {
    'update-agent': updateAgentHandler({ ...common, db: store.db, http, update: config.update }),
    'update-config': updateConfigHandler({ ...common, configFile: lc.configFile, env: lc.env, allowKeys: config.update.allowConfigKeys }),
  };
}
