import { Kick } from '../util/kick.js';
import { errorMessage } from '../util/errors.js';
import { CloudError } from '../resilience/cloud-error.js';
import type { CloudLoopDeps } from './loop-deps.js';
import { failureKind } from '../resilience/outcome.js';

export interface HealthReporterOptions extends CloudLoopDeps {
  health: () => unknown;
}

/**
 * Sends the ConnectionHealth (with the outage that just ended) when the device comes back from
 * offline, so the cloud can see how long a device was away and why. Several returns while a send
 * is pending collapse into one: the latest health says everything the earlier ones did.
 */
export class HealthReporter {
  private due = false;
  private readonly kick = new Kick();
  sent = 0;

  constructor(private readonly o: HealthReporterOptions) {}

  /** Schedules a report (called on each return from offline). */
  request(): void {
    this.due = true;
    this.kick.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if (!this.due) {
        await this.kick.wait(Infinity, signal, this.o.clock);
        continue;
      }
      try {
        await this.o.http.request({
          method: 'POST',
          path: `/device/v1/${encodeURIComponent(this.o.uuid)}/health`,
          json: this.o.health(),
          signal,
        });
        this.due = false;
        this.sent++;
        this.o.monitor.markSuccess('api', 'health');
        this.o.retry.afterSuccess();
      } catch (err) {
        if (signal.aborted) return;
        const e = err instanceof CloudError ? err : undefined;
        if (!e) this.o.logger.error({ err: errorMessage(err) }, 'health report failed unexpectedly; retrying with backoff');
        this.o.monitor.markFailure('api', 'health', errorMessage(err), failureKind(err));
        if (e && !e.retryable) {
          this.o.logger.warn({ err: errorMessage(err) }, 'health report refused by the cloud; dropping it');
          this.due = false;
          continue;
        }
        await this.o.retry.wait(this.o.retry.afterFailure(err), signal);
      }
    }
  }

}
