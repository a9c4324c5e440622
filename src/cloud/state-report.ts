import type { Store } from '../store/store.js';
import { Kick } from '../util/kick.js';
import { errorMessage } from '../util/errors.js';
import type { IdGenerator } from '../util/ids.js';
import { applyMergePatch, mergePatch, withoutNulls, type Json } from '../util/json-diff.js';
import { CloudError } from './http-client.js';
import { failureKind, type CloudLoopDeps } from './loop-deps.js';

export interface StateReporterOptions extends CloudLoopDeps {
  store: Store;
  ids: IdGenerator;
  /** At most one report per this interval (read each time: a target may change it). */
  intervalMs: () => number;
  /** The current state as it should be reported now (null members are left out: absent means null). */
  current: () => Json;
}

const ACKED_KEY = 'report.lastAcked';

interface Pending {
  reportId: string;
  patch: Json;
  full: Json;
}

/**
 * Reports the current state to the cloud: only what changed since the last report the cloud
 * acknowledged (a JSON merge patch), at most one per interval. While the cloud is away nothing piles
 * up: the next report is computed from the latest state when the way is open, so a thousand changes
 * during an outage cost one report. A retried report keeps its `reportId` while its content is the
 * same, so the cloud can drop the duplicate.
 */
export class StateReporter {
  /** As a degradable feature: paused after a long outage, resumed (and reporting) on return. */
  readonly name = 'state-report';
  private paused = false;
  private dirty = true;
  private readonly kick = new Kick();
  private pending: Pending | undefined;
  private lastSentAt = -Infinity;
  lastError: string | undefined;

  constructor(private readonly o: StateReporterOptions) {}

  /** Something in the state changed: report it (within the throttle). */
  markDirty(): void {
    this.dirty = true;
    this.kick.kick();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.kick.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if (this.paused || (!this.dirty && !this.pending)) {
        await this.kick.wait(Infinity, signal, this.o.clock);
        continue;
      }
      // Throttle: one report per interval, measured on the monotonic clock.
      const wait = this.lastSentAt + this.o.intervalMs() - this.o.clock.monotonic();
      if (wait > 0) {
        await this.o.clock.sleep(wait, signal).catch(() => undefined);
        continue;
      }
      try {
        await this.reportOnce(signal);
        this.o.retry.afterSuccess();
      } catch (err) {
        if (signal.aborted) return;
        const e = err instanceof CloudError ? err : undefined;
        if (!e) this.o.logger.error({ err: errorMessage(err) }, 'state report failed unexpectedly; retrying with backoff');
        if (e && !e.retryable) {
          // The cloud refuses this report as it is: drop it (it is visible in lastError and logs) and
          // send the whole state next time rather than retrying the same refusal forever.
          this.o.logger.error({ err: errorMessage(err) }, 'state report refused by the cloud; will send the full state next time');
          this.pending = undefined;
          this.o.store.setKv(ACKED_KEY, null);
          this.dirty = false;
          await this.kick.wait(this.o.intervalMs(), signal, this.o.clock);
          continue;
        }
        await this.o.retry.wait(this.o.retry.afterFailure(err), signal);
      }
    }
  }

  /** Builds and sends one report if anything changed. Returns whether one was sent. */
  async reportOnce(signal?: AbortSignal): Promise<boolean> {
    const acked = this.o.store.getKv<Json>(ACKED_KEY) ?? undefined;
    const full = withoutNulls(this.o.current());
    this.dirty = false;
    const patch = mergePatch(acked ?? undefined, full);
    if (patch === undefined) {
      this.pending = undefined;
      return false;
    }
    // Same content as the report that failed: same id, so a cloud that did get it can dedupe.
    const reportId =
      this.pending && JSON.stringify(this.pending.patch) === JSON.stringify(patch) ? this.pending.reportId : this.o.ids.next();
    this.pending = { reportId, patch, full };
    this.lastSentAt = this.o.clock.monotonic();
    try {
      await this.o.http.request({
        method: 'PATCH',
        path: `/device/v1/${encodeURIComponent(this.o.uuid)}/state`,
        headers: { 'idempotency-key': reportId },
        json: { reportId, state: patch },
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      if (!signal?.aborted) {
        this.lastError = errorMessage(err);
        this.o.monitor.markFailure('api', 'report', this.lastError, failureKind(err));
      }
      throw err;
    }
    this.o.monitor.markSuccess('api', 'report');
    this.lastError = undefined;
    this.o.store.setKv(ACKED_KEY, applyMergePatch(acked, patch));
    this.pending = undefined;
    return true;
  }
}
