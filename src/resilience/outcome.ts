import type { FailureKind } from './connection-monitor.js';
import { errorMessage } from '../util/errors.js';
import { CloudAnswerRefused, CloudError } from './cloud-error.js';

/** What the loops need of the connection monitor: every request's outcome. */
export interface OutcomeSink {
  markSuccess(channel: string, operation: string): void;
  markFailure(channel: string, operation: string, error: string, kind?: FailureKind): void;
}

/**
 * A transport failure (no connection, timeout) or an answer (the cloud said 5xx, 4xx). A TLS
 * refusal for want of a synced clock is an answer too: the cloud was reached, the network is fine.
 */
export function failureKind(err: unknown): FailureKind {
  return err instanceof CloudError && (err.kind === 'http' || err.kind === 'clock') ? 'answer' : 'transport';
}

/**
 * Tells the monitor how a request ended in failure. An answer refused for its size or depth
 * (limits.*) came from a cloud that is reachable: it must never take the channel offline.
 */
export function markRequestFailure(monitor: OutcomeSink, operation: string, err: unknown): void {
  if (err instanceof CloudAnswerRefused) monitor.markSuccess('api', operation);
  else monitor.markFailure('api', operation, err instanceof Error ? err.message : String(err), failureKind(err));
}

/**
 * One request of `operation` on the `api` channel (a queued report or update sent by the HTTP sink),
 * with its outcome told to the monitor: nothing when `signal` aborted it (the agent is stopping).
 */
export async function withOutcome<T>(monitor: OutcomeSink | undefined, operation: string, signal: AbortSignal | undefined, request: () => Promise<T>): Promise<T> {
  let out: T;
  try {
    out = await request();
  } catch (err) {
    if (!signal?.aborted) monitor?.markFailure('api', operation, errorMessage(err), failureKind(err));
    throw err;
  }
  monitor?.markSuccess('api', operation);
  return out;
}
