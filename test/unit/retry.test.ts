import { describe, expect, it } from 'vitest';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Kick } from '../../src/util/kick.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { seededRandom } from '../../src/util/random.js';

function setup(floor = 0) {
  const clock = new FakeClock();
  const random = seededRandom(3);
  const backoff = new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock, random });
  const wakeup = new Wakeup({ clock, random, staggerMaxMs: 1_000 });
  let floorMs = floor;
  const retry = new RetryPolicy({ backoff, sleeper: wakeup, clock, floorMs: () => floorMs });
  return { clock, backoff, wakeup, retry, setFloor: (ms: number) => (floorMs = ms) };
}

/** Starts one of the policy's waits; `ended` turns true when it ends. */
function waiting(t: ReturnType<typeof setup>, ms: number, opts: { kick?: Kick; unwoken?: boolean } = {}): { ended: boolean; promise: Promise<void> } {
  const w = { ended: false, promise: Promise.resolve() };
  const signal = new AbortController().signal;
  w.promise = (opts.unwoken ? t.retry.waitUnwoken(ms, signal) : t.retry.wait(ms, signal, opts.kick)).then(() => {
    w.ended = true;
  });
  return w;
}

describe('retry policy', () => {
  it('follows the backoff and takes Retry-After as a lower bound', () => {
    const t = setup();
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(1_000);
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(2_000);
    expect(t.retry.afterFailure(new CloudError('http', '429', 429, 30_000))).toBe(30_000);
  });

  it('waits at least the offline floor while it applies', () => {
    const t = setup(300_000);
    expect(t.retry.afterFailure(new Error('boom'))).toBe(300_000);
    t.setFloor(0);
    expect(t.retry.afterFailure(new Error('boom'))).toBe(2_000);
  });

  it('a wake ends a wait the offline floor stretched where the backoff alone would have, while that is ahead', async () => {
    const t = setup(300_000);
    t.retry.afterFailure(new CloudError('network', 'refused'));
    t.retry.attemptStarted();
    // The backoff's second step is 2 s; the floor makes it 300 s.
    const delay = t.retry.afterFailure(new CloudError('network', 'refused'));
    expect(delay).toBe(300_000);
    expect(t.retry.pacedUntilMs).toBe(t.clock.monotonic() + 2_000);
    const w = waiting(t, delay);
    await t.clock.advance(500);
    t.wakeup.wake('probe', { staggerMaxMs: 60_000 });
    // Not after the wake's stagger (up to 60 s): at the backoff's 2 s, no later, no sooner.
    await t.clock.advance(1_400);
    expect(w.ended).toBe(false);
    await t.clock.advance(200);
    expect(w.ended).toBe(true);
    await w.promise;
  });

  it('a wake after the backoff alone would have ended the floored wait goes by the wake\'s stagger', async () => {
    const t = setup(300_000);
    const delay = t.retry.afterFailure(new CloudError('network', 'refused'));
    const w = waiting(t, delay);
    await t.clock.advance(10_000);
    t.wakeup.wake('probe', { staggerMaxMs: 5_000 });
    await t.clock.advance(5_100);
    expect(w.ended).toBe(true);
    await w.promise;
    // A success forgets it: the next wait is the backoff's own.
    t.retry.afterSuccess();
    expect(t.retry.pacedUntilMs).toBeUndefined();
  });

  it('starts over after a wake-up but still honours what is left of a Retry-After', async () => {
    const t = setup();
    for (let i = 0; i < 5; i++) t.retry.afterFailure(new CloudError('network', 'refused'));
    const delay = t.retry.afterFailure(new CloudError('http', '503', 503, 20_000));
    expect(delay).toBe(32_000);
    const w = waiting(t, delay);
    await t.clock.advance(2_000);
    t.wakeup.wake('probe');
    // Woken within the stagger, but the server asked for 20 s: not before.
    await t.clock.advance(15_000);
    expect(w.ended).toBe(false);
    await t.clock.advance(3_500);
    expect(w.ended).toBe(true);
    await w.promise;
    // And the backoff starts again from its first step (the attempt failing as it starts).
    t.retry.attemptStarted();
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(1_000);
  });

  it('a success that lasts starts the backoff over; one that does not, does not', async () => {
    const t = setup();
    for (let i = 0; i < 4; i++) t.retry.afterFailure(new CloudError('network', 'refused'));
    t.retry.afterSuccess();
    await t.clock.advance(5_000);
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(16_000);
    t.retry.afterSuccess();
    await t.clock.advance(30_000); // the backoff's resetAfterMs
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(1_000);
  });

  it('spaces the starts of attempts; one that outlasted its step goes at once after a timeout, and is drawn over the step after anything else', async () => {
    const t = setup();
    const signal = new AbortController().signal;
    /** Serves the wait, then an attempt that lasts `spentMs` and fails with `err`: the next delay. */
    const attempt = async (waitMs: number, spentMs: number, err: unknown, opts?: { timedOut?: boolean }): Promise<number> => {
      void t.retry.wait(waitMs, signal);
      await t.clock.advance(waitMs);
      await t.clock.advance(spentMs);
      return t.retry.afterFailure(err, opts);
    };
    // No attempt start known yet (the first failure after a success, or ever): the whole step.
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(1_000);
    // The next attempt hangs 1.5 s: 2 s from its start is 0.5 s from now.
    expect(await attempt(1_000, 1_500, new CloudError('timeout', 'timed out'))).toBe(500);
    // Hung longer than its step (4 s) until its own timeout: at once.
    expect(await attempt(500, 10_000, new CloudError('timeout', 'timed out'))).toBe(0);
    // Reset after 3 s: the phase is kept, 8 s from the start.
    expect(await attempt(0, 3_000, new CloudError('network', 'connection reset'))).toBe(5_000);
    // Reset after outlasting its step (16 s): a moment the network chose, perhaps for a whole fleet: drawn over the step from now.
    const respread = await attempt(5_000, 20_000, new CloudError('network', 'connection reset'));
    expect(respread).toBeGreaterThanOrEqual(100);
    expect(respread).toBeLessThanOrEqual(16_000);
    expect(respread).not.toBe(16_000);
    // A Retry-After counts from the answer.
    expect(await attempt(respread, 1_000, new CloudError('http', '503', 503, 40_000))).toBe(40_000);
    // The session says itself that a connect lasted its timeout (60 s step, 70 s spent: at once).
    expect(await attempt(40_000, 70_000, undefined, { timedOut: true })).toBe(0);
    // After a success the policy does not know when the next attempt started: the whole step.
    t.retry.afterSuccess();
    await t.clock.advance(2_000);
    expect(t.retry.afterFailure(new CloudError('timeout', 'timed out'))).toBe(60_000);
  });

  it('tells the backoff when the moment of a failure was the device alone (phased)', () => {
    const seen: Array<{ retryAfterMs?: number; phased?: boolean } | undefined> = [];
    const backoff = { failure: (o?: { retryAfterMs?: number; phased?: boolean }) => (seen.push(o), 1_000), success: () => undefined, reset: () => undefined, holdRemainingMs: () => 0, respread: () => 1_000 };
    const clock = new FakeClock();
    const retry = new RetryPolicy({ backoff, sleeper: new Wakeup({ clock, random: () => 0 }), clock });
    retry.afterFailure(undefined, { phased: true });
    retry.afterFailure(undefined);
    retry.afterFailure(new CloudError('http', '503', 503, 7_000), { phased: true });
    expect(seen).toEqual([{ phased: true }, {}, { retryAfterMs: 7_000, phased: true, shared: true }]);
  });

  it('tells the backoff when a failure is the first answer after the way was closed (shared): not a later answer, nor one after a success', () => {
    const seen: Array<{ shared?: boolean } | undefined> = [];
    const backoff = { failure: (o?: { shared?: boolean }) => (seen.push(o), 1_000), success: () => undefined, reset: () => undefined, holdRemainingMs: () => 0, respread: () => 1_000 };
    const clock = new FakeClock();
    const retry = new RetryPolicy({ backoff, sleeper: new Wakeup({ clock, random: () => 0 }), clock });
    const answer = new CloudError('http', '503', 503);
    retry.afterFailure(new CloudError('network', 'refused'));
    retry.afterFailure(new CloudError('timeout', 'timed out'));
    retry.afterFailure(answer); // the cloud is back: the devices that waited meet it at once
    retry.afterFailure(answer); // answered again: the crowd is spread already
    retry.afterFailure(new CloudError('network', 'refused'));
    retry.afterSuccess();
    retry.afterFailure(answer); // after a success: the first of a run, which spread draws over the step anyway
    expect(seen.map((o) => o?.shared === true)).toEqual([false, false, true, false, false, false]);
  });

  it('a wake during an attempt that got through does not cut the wait after it short', async () => {
    const t = setup();
    const signal = new AbortController().signal;
    // A failed attempt, then a wait the probe ends: the next attempt starts.
    void t.retry.wait(t.retry.afterFailure(new CloudError('network', 'refused')), signal);
    t.wakeup.wake('probe');
    await t.clock.advance(1_000);
    // While it runs, its own success sets off a wake (the channel back online wakes the channel's loops).
    t.wakeup.wake('online');
    t.retry.afterSuccess();
    let ended = false;
    void t.retry.wait(60_000, signal).then(() => (ended = true));
    await t.clock.advance(59_999);
    expect(ended).toBe(false);
    await t.clock.advance(1);
    expect(ended).toBe(true);
  });

  it('the offline floor spaces attempt starts too', async () => {
    const t = setup(300_000);
    void t.retry.wait(1_000, new AbortController().signal);
    await t.clock.advance(1_000);
    await t.clock.advance(30_000);
    expect(t.retry.afterFailure(new CloudError('timeout', 'timed out'))).toBe(270_000);
  });

  it('a kick (work the user asked for) ends the wait; without one only time or the probe does', async () => {
    const t = setup();
    const kick = new Kick();
    const w = waiting(t, 60_000, { kick });
    await t.clock.advance(10);
    kick.kick();
    await t.clock.advance(10);
    expect(w.ended).toBe(true);
  });

  it('a wake-up with no Retry-After ends the wait within the stagger', async () => {
    const t = setup();
    const delay = t.retry.afterFailure(new CloudError('network', 'refused'));
    const w = waiting(t, delay * 100);
    await t.clock.advance(10);
    t.wakeup.wake('probe');
    await t.clock.advance(1_000);
    expect(w.ended).toBe(true);
  });

  it('a wait that runs out, or that a kick ends, keeps the backoff growing', async () => {
    const t = setup();
    t.retry.afterFailure(new CloudError('network', 'refused'));
    const delay = t.retry.afterFailure(new CloudError('network', 'refused'));
    expect(delay).toBe(2_000);
    let w = waiting(t, delay);
    await t.clock.advance(2_000);
    expect(w.ended).toBe(true);
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(4_000);
    const kick = new Kick();
    w = waiting(t, 4_000, { kick });
    await t.clock.advance(10);
    kick.kick();
    await t.clock.advance(10);
    expect(w.ended).toBe(true);
    // The step counts from the start of the attempt the kick began, 10 ms ago.
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(7_990);
  });

  it('a wake-up that came while the loop was busy with its attempt ends the next wait, and starts the backoff over', async () => {
    const t = setup(300_000);
    // The loop waited once, then its attempt hangs (a black-holed request) while the probe wakes the Wakeup.
    void t.retry.wait(1_000, new AbortController().signal);
    await t.clock.advance(1_000);
    t.wakeup.wake('probe');
    const delay = t.retry.afterFailure(new CloudError('timeout', 'timed out'));
    expect(delay).toBe(300_000);
    let w = waiting(t, delay);
    await t.clock.advance(1_000);
    expect(w.ended).toBe(true);
    t.setFloor(0);
    t.retry.attemptStarted();
    expect(t.retry.afterFailure(new CloudError('network', 'refused'))).toBe(1_000);

    // That wake is spent: the wait after the next attempt runs its course.
    w = waiting(t, 5_000);
    await t.clock.advance(4_999);
    expect(w.ended).toBe(false);
    await t.clock.advance(1);
    expect(w.ended).toBe(true);
  });

  it('a wait the probe does not end (refused credentials): a wake during it neither ends it nor the next wait', async () => {
    const t = setup();
    let w = waiting(t, 10_000, { unwoken: true });
    await t.clock.advance(1_000);
    t.wakeup.wake('probe');
    await t.clock.advance(5_000);
    expect(w.ended).toBe(false);
    await t.clock.advance(4_000);
    expect(w.ended).toBe(true);
    // The wake came during that wait and counts as seen: the next wait runs its course.
    w = waiting(t, 5_000);
    await t.clock.advance(4_999);
    expect(w.ended).toBe(false);
    await t.clock.advance(1);
    expect(w.ended).toBe(true);
  });
});
