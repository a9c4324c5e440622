import type { Outbox } from '../outbox/outbox.js';
import { CloudError } from '../resilience/cloud-error.js';
import { withOutcome, type OutcomeSink } from '../resilience/outcome.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import type { CloudHttpClient } from './http-client.js';
import type { ChannelDelivery } from './http-sink.js';

/** The outbox channel of health reports (priority 30, drop-oldest at its limits). */
export const HEALTH_CHANNEL = 'health';
/** One health report waits at a time: a newer one replaces it (the latest says all the earlier did). */
const COALESCE_KEY = 'latest';

export interface HealthReporterOptions {
  outbox: Pick<Outbox, 'enqueue'>;
  /** The ConnectionHealth (with the outages) and the config's source, read when a report is asked for. */
  health: () => unknown;
  logger: Logger;
  clock: Pick<Clock, 'sleep'>;
  /** A report at every start and then this often (`settings.healthReportIntervalMs`), so the cloud sees the loss ledger move. */
  intervalMs: () => number;
}

/**
 * Queues the ConnectionHealth (with the outage that just ended, and the outbox's loss ledger) at
 * every start, every `intervalMs`, when the device comes back from offline, when the outbox counted
 * its rows again (the ledger may have moved), and at a start on the last-known-good config, so the
 * cloud can see how long a device was away and why, and check that nothing was lost. It goes through the outbox like everything bound for the cloud: durable (a restart
 * before the cloud is back keeps it) and coalesced (several returns while one waits become the latest).
 */
export class HealthReporter {
  constructor(private readonly o: HealthReporterOptions) {}

  /** A report now, then one every interval, until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      this.request();
      await this.o.clock.sleep(this.o.intervalMs(), signal).catch(() => undefined);
    }
  }

  /** Queues a report of the health as it is now. Never throws: a refusal is logged. */
  request(): void {
    let payload: Json;
    try {
      payload = JSON.parse(JSON.stringify(this.o.health())) as Json;
    } catch (err) {
      this.o.logger.error({ err: errorMessage(err) }, 'health report: the health could not be read');
      return;
    }
    this.o.outbox
      .enqueue({ channel: HEALTH_CHANNEL, payload, coalesceKey: COALESCE_KEY })
      .catch((err: unknown) => this.o.logger.warn({ err: errorMessage(err) }, `health report not queued: ${errorMessage(err)}`));
  }
}

/** Sends queued health reports: `POST /device/v1/{uuid}/health` with the report, its outbox id as `Idempotency-Key`. */
export class HealthDelivery implements ChannelDelivery {
  constructor(
    private readonly http: Pick<CloudHttpClient, 'request'>,
    private readonly uuid: string,
    /** Outcomes are marked as the `health` operation on the `api` channel. */
    private readonly monitor?: OutcomeSink,
  ) {}

  async send(id: string, payload: Json, signal: AbortSignal): Promise<void> {
    await withOutcome(this.monitor, 'health', signal, () =>
      this.http.request({ method: 'POST', path: `/device/v1/${encodeURIComponent(this.uuid)}/health`, headers: { 'idempotency-key': id }, json: payload, signal }),
    );
  }

  /** A report the cloud refuses as it is (a 4xx other than 408/429) is parked, not retried. */
  isPermanent(err: unknown): boolean {
    return err instanceof CloudError && !err.retryable && err.kind === 'http';
  }
}
