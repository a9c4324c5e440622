import type { JobRunner } from '../jobs/runner.js';
import type { Logger } from '../util/logger.js';
import { ReleaseStore } from './release-store.js';

export const LIFECYCLE_JOB_TYPES = ['update-agent', 'update-config'] as const;

/**
 * Reports the lifecycle jobs an agent left RUNNING when it stopped for a switch: the launcher wrote
 * how each trial ended in state.json. One still on trial is left for the confirmation; one with
 * neither (the agent stopped before the switch was asked) is reported FAILED.
 */
export async function settleLifecycleJobs(dataDir: string, runner: Pick<JobRunner, 'leftRunning' | 'conclude'>, logger: Logger): Promise<void> {
  const state = new ReleaseStore(dataDir).read();
  for (const job of runner.leftRunning(LIFECYCLE_JOB_TYPES)) {
    if (state.trial?.jobId === job.id) continue;
    const outcome = state.outcomes.findLast((o) => o.jobId === job.id);
    if (outcome) {
      logger.info({ jobId: job.id, status: outcome.status }, `job ${job.id} (${job.type}) ended with the trial: ${outcome.status}`);
      await runner.conclude(job.id, outcome.status, { ...outcome.details, ...(outcome.status === 'FAILED' ? { error: String(outcome.details.reason) } : {}) });
    } else {
      await runner.conclude(job.id, 'FAILED', { error: 'the agent stopped before the switch was made; nothing was changed' });
    }
  }
}
