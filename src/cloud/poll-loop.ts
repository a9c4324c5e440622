import { errorMessage } from '../util/errors.js';
import type { Kick } from '../util/kick.js';
import type { PauseGate } from '../util/pause-gate.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { CloudAnswerRefused, CloudError } from '../resilience/cloud-error.js';
import type { RetryPolicy } from '../resilience/retry-policy.js';

export interface PollLoopOptions {
  retry: RetryPolicy;
  random: Random;
  logger: Logger;
  /** Read on every cycle (a target may change it). */
  intervalMs: () => number;
  /** `pollNow()` of the loop's owner: ends the wait between polls, never a backoff after a failure. */
  kick: Kick;
  /** For the log: "polling for jobs", "target-state poll"... */
  what: string;
  /** Closed while the loop's feature is paused by graceful degradation: no poll starts until it opens. */
  gate?: PauseGate;
}

/**
 * The loop every cloud poller runs (target state, jobs, the shadow's desired state): poll; after a
 * success wait the interval plus up to 10% jitter (or poll again at once when `poll` says there is
 * more), after a failure wait as the loop's retry policy says (the one backoff, Retry-After, the
 * offline floor, woken by the connectivity probe). A refusal that retrying will not cure (a 4xx
 * other than 408/429) waits at least a full interval. A kick ends the wait after a success. While
 * `gate` is closed no poll starts; one under way runs to its end.
 *
 * A poll that fails at the loop's own moment (its interval after a success ran out: the fleet's
 * polls keep the phases of their devices) is retried one step later, not drawn over the step as the
 * first retry of a run usually is: that draw spreads a fleet that failed at one moment, and would
 * only crowd the retries of one that failed at its own moments.
 */
export async function pollLoop(o: PollLoopOptions, poll: (signal: AbortSignal) => Promise<'again' | 'wait'>, signal: AbortSignal): Promise<void> {
  let phased = false;
  while (!signal.aborted) {
    let delay: number;
    let succeeded = false;
    if (o.gate?.paused) {
      await o.gate.whenOpen(signal);
      continue;
    }
    try {
      o.kick.consume();
      const next = await poll(signal);
      o.retry.afterSuccess();
      phased = false;
      if (next === 'again') continue;
      succeeded = true;
      const base = o.intervalMs();
      delay = base + o.random() * base * 0.1;
    } catch (err) {
      if (signal.aborted) return;
      const cloudErr = err instanceof CloudError ? err : undefined;
      delay = o.retry.afterFailure(err, phased ? { phased: true } : {});
      phased = false;
      if (cloudErr && !cloudErr.retryable) delay = Math.max(delay, o.intervalMs());
      // Cloud failures are the monitor's to report; anything else is a bug worth an error.
      // An answer over a limit is the cloud's doing and nothing else reports it: worth a warning.
      o.logger[err instanceof CloudAnswerRefused ? 'warn' : cloudErr ? 'debug' : 'error']({ err: errorMessage(err), retryInMs: Math.round(delay) }, `${o.what} failed${cloudErr ? '' : ' unexpectedly'}`);
    }
    const waited = await o.retry.wait(delay, signal, o.kick);
    phased = succeeded && waited === 'elapsed';
  }
}
