import type { Backoff } from '../resilience/backoff.js';
import type { Clock } from '../util/clock.js';
import type { WakeableSleep } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import type { CloudHttpClient } from './http-client.js';

/** What the loops need of the connection monitor: every request's outcome. */
export interface OutcomeSink {
  markSuccess(channel: string, operation: string): void;
  markFailure(channel: string, operation: string, error: string): void;
}

/** What every cloud loop (poller, reporters) is built with; each has its own backoff. */
export interface CloudLoopDeps {
  http: Pick<CloudHttpClient, 'request'>;
  uuid: string;
  monitor: OutcomeSink;
  backoff: Backoff;
  /** Wakeable by the connectivity probe. */
  sleeper: WakeableSleep;
  clock: Clock;
  logger: Logger;
}
