import type { Outbox } from '../outbox/outbox.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { withoutNulls, type Json } from '../util/json-diff.js';
import { Kick } from '../util/kick.js';
import type { Logger } from '../util/logger.js';

export const STATE_CHANNEL = 'state';
const STATE_KEY = 'current-state';

export interface StateReporterOptions {
  outbox: Pick<Outbox, 'enqueue'>;
  clock: Clock;
  logger: Logger;
  /** At most one report per this interval (read each time: a target may change it). */
  intervalMs: () => number;
  /** The current state as it should be reported now (null members are left out: absent means null). */
  current: () => Json;
}

/**
 * Queues the current state for the cloud, at most once per interval, on the outbox's `state` channel
 * with one coalescing key: however many changes happen while the cloud is away, one report (the latest)
 * waits on disk, and a restart does not lose it. What goes over the wire is decided at delivery by
 * `StateDelivery`: only what changed since the report the cloud last acknowledged.
 */
export class StateReporter {
  private dirty = true;
  private readonly kick = new Kick();
  private lastQueuedAt = -Infinity;
  private lastQueued: string | undefined;
  lastError: string | undefined;
  queued = 0;

  constructor(private readonly o: StateReporterOptions) {}

  /** Something in the state changed: report it (within the throttle). */
  markDirty(): void {
    this.dirty = true;
    this.kick.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if (!this.dirty) {
        await this.kick.wait(Infinity, signal, this.o.clock);
        continue;
      }
      // Throttle: one report per interval, measured on the monotonic clock.
      const wait = this.lastQueuedAt + this.o.intervalMs() - this.o.clock.monotonic();
      if (wait > 0) {
        await this.o.clock.sleep(wait, signal).catch(() => undefined);
        continue;
      }
      await this.queueOnce();
    }
  }

  /** Queues the current state if it differs from the last one queued. Returns whether it did. */
  async queueOnce(): Promise<boolean> {
    this.dirty = false;
    const full = withoutNulls(this.o.current());
    const json = JSON.stringify(full);
    if (json === this.lastQueued) return false;
    this.lastQueuedAt = this.o.clock.monotonic();
    try {
      await this.o.outbox.enqueue({ channel: STATE_CHANNEL, coalesceKey: STATE_KEY, payload: full });
      this.lastQueued = json;
      this.lastError = undefined;
      this.queued++;
      return true;
    } catch (err) {
      // A full disk: the next change tries again; the state is recomputed then anyway.
      this.lastError = errorMessage(err);
      this.dirty = true;
      this.o.logger.warn({ err: this.lastError }, 'could not queue the state report');
      return false;
    }
  }
}
