import { describe, expect, it } from 'vitest';
import { pollLoop } from '../../src/cloud/poll-loop.js';
import { CloudError } from '../../src/resilience/cloud-error.js';
import type { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Kick, type WaitResult } from '../../src/util/kick.js';
import { silentLogger } from '../helpers/logger.js';

/** Runs the loop over `outcomes` (true: the poll succeeds), each wait ending as `waits` says; returns the options of each afterFailure. */
async function failureOptions(outcomes: boolean[], waits: WaitResult[]): Promise<Array<Record<string, unknown>>> {
  const seen: Array<Record<string, unknown>> = [];
  const stop = new AbortController();
  let polls = 0;
  let waitsDone = 0;
  const retry = {
    afterSuccess: () => undefined,
    afterFailure: (_err: unknown, opts: Record<string, unknown> = {}) => {
      seen.push(opts);
      return 1_000;
    },
    wait: () => {
      if (polls >= outcomes.length) stop.abort();
      return Promise.resolve(waits[waitsDone++] ?? 'elapsed');
    },
  } as unknown as RetryPolicy;
  await pollLoop(
    { retry, random: () => 0, logger: silentLogger(), intervalMs: () => 60_000, kick: new Kick(), what: 'test poll' },
    () => {
      const ok = outcomes[polls++];
      return ok ? Promise.resolve('wait' as const) : Promise.reject(new CloudError('network', 'refused'));
    },
    stop.signal,
  );
  return seen;
}

describe('pollLoop', () => {
  it('tells the retry policy a poll failed at the loop\'s own moment (its interval after a success ran out)', async () => {
    // success, its interval elapses, failure (phased), its backoff elapses, failure (not: a retry's moment is the backoff's).
    expect(await failureOptions([true, false, false], ['elapsed', 'elapsed'])).toEqual([{ phased: true }, {}]);
  });

  it('does not call a poll phased when a kick ended the wait (a notify reaches a fleet at one moment) or when no success came before', async () => {
    expect(await failureOptions([true, false], ['kicked'])).toEqual([{}]);
    expect(await failureOptions([false, false], ['elapsed'])).toEqual([{}, {}]);
  });
});
