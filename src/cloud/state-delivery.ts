import type { Store } from '../store/store.js';
import { mergePatch, type Json } from '../util/json-diff.js';
import type { CloudHttpClient } from './http-client.js';
import { CloudError } from '../resilience/cloud-error.js';
import { withOutcome, type OutcomeSink } from '../resilience/outcome.js';

const ACKED_KEY = 'report.lastAcked';

/**
 * Sends queued state reports: `PATCH /device/v1/{uuid}/state` with a JSON merge patch against the
 * last state the cloud acknowledged (kept in the store), so a report carries only what changed, and
 * the first one after a start (or after the cloud refused one) the whole state. Reports are sent one
 * at a time, in order, each diffed at the moment it goes: two reports can never be diffed against the
 * same base and undo each other. The report's id (the outbox message id) is its `reportId` and
 * `Idempotency-Key`: a retry is the same report.
 */
export class StateDelivery {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly http: Pick<CloudHttpClient, 'request'>,
    private readonly uuid: string,
    private readonly store: Pick<Store, 'getKv' | 'setKv'>,
    /** Report outcomes are marked as the `report` operation (ConnectionHealth's lastReportSuccess, reportFailures). */
    private readonly monitor?: OutcomeSink,
  ) {}

  /** Resolves when the cloud took it; throws a CloudError otherwise. */
  send(reportId: string, full: Json, signal?: AbortSignal): Promise<void> {
    const run = this.chain.then(() => this.sendNow(reportId, full, signal));
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async sendNow(reportId: string, full: Json, signal?: AbortSignal): Promise<void> {
    const acked = this.store.getKv<Json>(ACKED_KEY) ?? undefined;
    // Nothing changed since the acknowledged report: still sent (an empty patch), so every report the
    // outbox counts as delivered is one the cloud holds (the loss ledger's check, docs/outbox.md).
    const patch = mergePatch(acked ?? undefined, full) ?? {};
    try {
      await withOutcome(this.monitor, 'report', signal, () =>
        this.http.request({
          method: 'PATCH',
          path: `/device/v1/${encodeURIComponent(this.uuid)}/state`,
          headers: { 'idempotency-key': reportId },
          json: { reportId, state: patch },
          ...(signal ? { signal } : {}),
        }),
      );
    } catch (err) {
      // Refused as it is: the next report carries the whole state rather than another patch.
      if (err instanceof CloudError && !err.retryable) this.store.setKv(ACKED_KEY, null);
      throw err;
    }
    this.store.setKv(ACKED_KEY, full);
  }
}
