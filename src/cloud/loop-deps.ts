import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import type { OutcomeSink } from '../resilience/outcome.js';
import type { RetryPolicy } from '../resilience/retry-policy.js';
import type { CloudHttpClient } from './http-client.js';

/** What every cloud loop (poller, reporters) is built with; each has its own retry policy. */
export interface CloudLoopDeps {
  http: Pick<CloudHttpClient, 'request'>;
  uuid: string;
  monitor: OutcomeSink;
  retry: RetryPolicy;
  clock: Clock;
  logger: Logger;
}
