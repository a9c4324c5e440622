import type { Clock } from '../util/clock.js';
import { Kick, type WaitResult, type WakeableSleep } from '../util/kick.js';
import type { Backoff } from './backoff.js';
import { CloudError } from './cloud-error.js';
import { failureKind } from './outcome.js';
import type { FailureKind } from './connection-monitor.js';

/** What the policy needs of a backoff: the project's `Backoff` (the fleet benchmark adapts the seed's formula). */
export type RetryBackoff = Pick<Backoff, 'failure' | 'success' | 'reset' | 'holdRemainingMs' | 'respread'>;

export interface RetryPolicyOptions {
  backoff: RetryBackoff;
  /** Wakeable by the connectivity probe. */
  sleeper: WakeableSleep;
  clock: Pick<Clock, 'sleep' | 'monotonic'>;
  /**
   * A lower bound on the delay after a failure, read at each failure. The agent returns
   * `offlineRetryIntervalSeconds` while the device is offline for want of a connection and the
   * connectivity probe watches the way back: the probe's handshakes bring the loop back within
   * seconds, so the loop's own requests would only be load on a cloud that is coming back.
   */
  floorMs?: () => number;
}

/**
 * How a cloud loop waits between attempts: the one backoff, a server's Retry-After, the offline
 * floor, and what to do when the probe wakes it. Every loop that talks to the cloud uses one.
 */
export class RetryPolicy {
  /** The sleeper's wakeCount when the latest wait ended: a wake after it came while the loop was busy. */
  private seenWakes: number | undefined;
  /** Monotonic time the current attempt started (its wait ended); unknown after a success. */
  private attemptFrom: number | undefined;
  /** The kind of the latest failure since the latest success. */
  private lastKind: FailureKind | undefined;
  /** Monotonic time the backoff alone would have ended the current wait, when the offline floor stretched it. */
  private pacedUntil: number | undefined;

  constructor(private readonly o: RetryPolicyOptions) {
    this.seenWakes = o.sleeper.wakeCount;
  }

  /**
   * The delay before the next attempt after `err`. The backoff (and the offline floor) spaces the
   * starts of attempts: an attempt that hung (a black-holed link) has served that much of its wait,
   * so a loop is never further than the backoff's cap behind a cloud that came back meanwhile, and a
   * fleet keeps the phases its attempts had. An attempt that outlasted its step: after a timeout
   * (`err` a timeout, or `timedOut`: its moment is its own) the next goes at once; after anything else
   * (a reset when a proxy's backend came back: the same moment for a whole fleet) it is drawn over the
   * whole step from now. A Retry-After counts from now. When the offline floor stretches the wait, the
   * backoff's own end of it is kept: a wake ends the wait there if it is still ahead (see `wait`).
   */
  afterFailure(err: unknown, opts: { timedOut?: boolean; phased?: boolean } = {}): number {
    const e = err instanceof CloudError ? err : undefined;
    // The first answer after the way was closed: the cloud is back, and meets every device that waited for it at once.
    const kind = failureKind(err);
    const shared = this.lastKind === 'transport' && kind === 'answer';
    this.lastKind = kind;
    const failure = {
      ...(e?.retryAfterMs !== undefined ? { retryAfterMs: e.retryAfterMs } : {}),
      ...(opts.phased ? { phased: true } : {}),
      ...(shared ? { shared: true } : {}),
    };
    const paced = this.o.backoff.failure(failure);
    const step = Math.max(paced, this.o.floorMs?.() ?? 0);
    const timedOut = opts.timedOut ?? e?.kind === 'timeout';
    const delay = this.fromAttemptStart(step, timedOut);
    this.pacedUntil = step > paced ? this.o.clock.monotonic() + this.fromAttemptStart(paced, timedOut) : undefined;
    return delay;
  }

  /** What is left of `step` after the time the attempt took; past it, at once after a timeout, else respread. */
  private fromAttemptStart(step: number, timedOut: boolean): number {
    if (this.attemptFrom === undefined) return step;
    const spent = Math.max(0, this.o.clock.monotonic() - this.attemptFrom);
    const hold = this.o.backoff.holdRemainingMs();
    if (step > spent) return Math.max(step - spent, hold);
    return Math.max(timedOut ? 0 : this.o.backoff.respread(), hold);
  }

  /**
   * The attempt got through. Wakes meanwhile count as seen: the way is proven open, and a wake it set
   * off itself (the channel back online wakes the channel's loops) must not cut the wait that follows
   * a success short into a request more.
   */
  afterSuccess(): void {
    this.o.backoff.success();
    this.lastKind = undefined;
    this.attemptFrom = undefined;
    this.pacedUntil = undefined;
    this.seenWakes = this.o.sleeper.wakeCount;
  }

  /** Where a wake ends the current wait if it is still ahead (see `wait`); undefined when any wake ends it after its stagger. */
  get pacedUntilMs(): number | undefined {
    return this.pacedUntil;
  }

  /** An attempt starts now (the loop's wait ended; `wait` and `waitUnwoken` call it themselves). */
  attemptStarted(): void {
    this.attemptFrom = this.o.clock.monotonic();
  }

  /**
   * The probe saw the way open: start again from the first step. Returns how long to wait still,
   * because a server's Retry-After is honoured even then.
   */
  afterWake(): number {
    this.o.backoff.reset();
    return this.o.backoff.holdRemainingMs();
  }

  /**
   * Waits `delayMs` on the clock alone: the probe's wake does not end it (refused credentials, which
   * a network that is open again cannot fix). Wakes meanwhile count as seen.
   */
  async waitUnwoken(delayMs: number, signal: AbortSignal): Promise<void> {
    try {
      await this.o.clock.sleep(delayMs, signal);
    } finally {
      this.seenWakes = this.o.sleeper.wakeCount;
      this.attemptStarted();
    }
  }

  /**
   * Waits `delayMs` after a failure. A `kick` (new work the user asked for) may end the wait; new
   * state alone must not, or every change during an outage would become a request. When the probe
   * wakes the loop, the backoff starts over, after what is left of a Retry-After. A wake that came
   * while the loop was busy with its attempt (since the previous wait ended) wakes this wait. A wake
   * of a wait the offline floor stretched ends it where the backoff alone would have, if that is still
   * ahead (the way was closed when the loop failed, so its backoff had not run out), else after the
   * wake's stagger. Says how the wait ended.
   */
  async wait(delayMs: number, signal: AbortSignal, kick?: Kick): Promise<WaitResult> {
    const since = this.seenWakes;
    const pacedMs = this.pacedUntil === undefined ? undefined : this.pacedUntil - this.o.clock.monotonic();
    try {
      // Without a kick, kickable cannot matter: nobody holds the fresh Kick. ('false' is killed by retry.test.)
      // Stryker disable next-line ObjectLiteral,ConditionalExpression: equivalent when no kick is given, see above
      const r = await (kick ?? new Kick()).wait(delayMs, signal, this.o.sleeper, {
        kickable: kick !== undefined,
        ...(since !== undefined ? { wokenSince: since } : {}),
        ...(pacedMs !== undefined ? { pacedMs } : {}),
      });
      if (r !== 'woken') return r;
      const hold = this.afterWake();
      // Stryker disable next-line ConditionalExpression,EqualityOperator: sleeping 0 ms is not sleeping
      if (hold > 0) await this.o.clock.sleep(hold, signal).catch(() => undefined);
      return r;
    } finally {
      this.seenWakes = this.o.sleeper.wakeCount;
      this.attemptStarted();
    }
  }
}
