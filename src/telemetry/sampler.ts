import type { MetricsBuffer } from '../outbox/downsample.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { Kick } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import type { SystemMetrics } from './system-metrics.js';

/**
 * Samples system metrics every `intervalMs` into the metrics buffer (durable; downsampled rather than
 * dropped when full). As a degradable feature it samples five times less often while the device has
 * been offline long enough: a week offline needs a coarse history, not a fine one.
 */
export class MetricsSampler {
  readonly name = 'metrics-sampling';
  private slow = false;
  private readonly kick = new Kick();
  samples = 0;
  lastError: string | null = null;

  constructor(
    private readonly o: { metrics: SystemMetrics; buffer: Pick<MetricsBuffer, 'add'>; clock: Clock; logger: Logger; intervalMs: () => number },
  ) {}

  pause(): void {
    this.slow = true;
  }

  resume(): void {
    this.slow = false;
    this.kick.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    // The first CPU figure needs two readings.
    this.o.metrics.sample();
    while (!signal.aborted) {
      await this.kick.wait(this.o.intervalMs() * (this.slow ? 5 : 1), signal, this.o.clock);
      if (signal.aborted) return;
      try {
        await this.o.buffer.add({ ts: this.o.clock.now(), values: this.o.metrics.sample() });
        this.samples++;
        this.lastError = null;
      } catch (err) {
        // A full disk or a full queue: the sample is lost, the loop goes on.
        this.lastError = errorMessage(err);
        this.o.logger.warn({ err: this.lastError }, 'could not queue a metrics sample');
      }
    }
  }
}
