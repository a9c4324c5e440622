import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import type { FailureKind } from '../resilience/connection-monitor.js';
import { CloudAnswerRefused, CloudError, type CloudHttpClient } from './http-client.js';
import type { RetryPolicy } from './retry.js';

/** What the loops need of the connection monitor: every request's outcome. */
export interface OutcomeSink {
  markSuccess(channel: string, operation: string): void;
  markFailure(channel: string, operation: string, error: string, kind?: FailureKind): void;
}

/** A transport failure (no connection, timeout) or an answer (the cloud said 5xx, 4xx). */
export function failureKind(err: unknown): FailureKind {
  return err instanceof CloudError && err.kind === 'http' ? 'answer' : 'transport';
}

/**
 * Tells the monitor how a request ended in failure. An answer refused for its size or depth
 * (limits.*) came from a cloud that is reachable: it must never take the channel offline.
 */
export function markRequestFailure(monitor: OutcomeSink, operation: string, err: unknown): void {
  if (err instanceof CloudAnswerRefused) monitor.markSuccess('api', operation);
  else monitor.markFailure('api', operation, err instanceof Error ? err.message : String(err), failureKind(err));
}

/** What every cloud loop (poller, reporters) is built with; each has its own retry policy. */
export interface CloudLoopDeps {
  http: Pick<CloudHttpClient, 'request'>;
  uuid: string;
  monitor: OutcomeSink;
  retry: RetryPolicy;
  clock: Clock;
  logger: Logger;
}
