import { AgentError } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';

/** A job as the cloud hands it out (`GET /device/v1/{uuid}/jobs/next`, PROTOCOL.md). */
export interface JobSpec {
  id: string;
  type: string;
  params: Record<string, Json>;
  timeoutSeconds: number;
}

/** The statuses of `PATCH …/jobs/{jobId}`. */
export type JobUpdateStatus = 'IN_PROGRESS' | 'SUCCEEDED' | 'FAILED' | 'REJECTED' | 'TIMED_OUT';

/** What a job's row says locally: running, or how it ended. */
export type JobStatus = 'RUNNING' | Exclude<JobUpdateStatus, 'IN_PROGRESS'>;

export interface JobContext {
  jobId: string;
  /** Aborted when the job times out or the agent stops. */
  signal: AbortSignal;
  logger: Logger;
  /**
   * A handler that starts a process group calls this with its leader's pid: the runner records it,
   * so that a group left running by an agent that died is stopped at the next start.
   */
  started?(pid: number): void;
}

/**
 * Runs one type of job. Resolves with the details reported with SUCCEEDED; throws `JobRejected` for
 * a job that cannot be run as asked (bad params, not allowed: REJECTED), or a `JobFailed` / any other
 * error for one that ran and failed (FAILED, with its details).
 */
export type JobHandler = (params: Record<string, Json>, ctx: JobContext) => Promise<Json>;

/** The job is refused as asked: the message names the parameter, the value and what was expected. */
export class JobRejected extends AgentError {
  constructor(message: string) {
    super('JOB_REJECTED', message);
    this.name = 'JobRejected';
  }
}

/** The job ran and failed; `details` go with the FAILED update. */
export class JobFailed extends AgentError {
  constructor(
    message: string,
    readonly details: Record<string, Json>,
  ) {
    super('JOB_FAILED', message);
    this.name = 'JobFailed';
  }
}

/** The outbox channel of job status updates (sent to `PATCH …/jobs/{jobId}` by the HTTP sink). */
export const JOBS_CHANNEL = 'jobs';

/** The payload of a queued update; its outbox id is the update's `updateId`. */
export interface JobUpdatePayload {
  jobId: string;
  status: JobUpdateStatus;
  details: Json;
}
