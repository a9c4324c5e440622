import type { CloudHttpClient } from '../cloud/http-client.js';
import { CloudError } from '../resilience/cloud-error.js';
import type { ChannelDelivery } from '../cloud/http-sink.js';
import { withOutcome, type OutcomeSink } from '../resilience/outcome.js';
import { AgentError } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { JobUpdatePayload } from './types.js';

/** Statuses that refuse the update itself: malformed, or a job the cloud does not know (any more). */
const REFUSALS = new Set([400, 404, 409, 410, 413, 415, 422]);

/**
 * Sends queued job updates: `PATCH /device/v1/{uuid}/jobs/{jobId}` with `{ updateId, status,
 * details }`, the update's outbox id as `updateId` (a retry is the same update; the cloud records it
 * once). In queue order, so IN_PROGRESS reaches the cloud before the final status.
 */
export class JobUpdateDelivery implements ChannelDelivery {
  constructor(
    private readonly http: Pick<CloudHttpClient, 'request'>,
    private readonly uuid: string,
    private readonly monitor?: OutcomeSink,
  ) {}

  async send(updateId: string, payload: Json, signal: AbortSignal): Promise<void> {
    const u = payload as unknown as Partial<JobUpdatePayload>;
    if (typeof u.jobId !== 'string' || typeof u.status !== 'string') {
      throw new AgentError('JOB_UPDATE_INVALID', `job update ${updateId} has no jobId or status: it cannot be sent`);
    }
    const jobId = u.jobId;
    await withOutcome(this.monitor, 'jobs', signal, () =>
      this.http.request({
        method: 'PATCH',
        path: `/device/v1/${encodeURIComponent(this.uuid)}/jobs/${encodeURIComponent(jobId)}`,
        json: { updateId, status: u.status, details: u.details ?? null },
        signal,
      }),
    );
  }

  /** A 404 is the job's fault here (the cloud dropped it), not the device's: park the update, do not stall the queue. */
  isPermanent(err: unknown): boolean {
    if (err instanceof AgentError && err.code === 'JOB_UPDATE_INVALID') return true;
    return err instanceof CloudError && err.kind === 'http' && REFUSALS.has(err.status ?? 0);
  }
}
