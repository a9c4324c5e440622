import { abortError, type Clock } from '../util/clock.js';
import type { Random } from '../util/random.js';

export type SleepOutcome = 'elapsed' | 'woken';

/**
 * Default spread of a wake-up that says nothing of its own (a synced clock, a registration). The
 * probe's wakes say how much time they have left: see WAKE_SPREAD_MS in probe.ts.
 */
export const WAKE_STAGGER_MAX_MS = 10_000;

export interface WakeupOptions {
  clock: Clock;
  random: Random;
  /** Each woken sleeper resolves after its own uniform random delay in [0, staggerMaxMs]. */
  staggerMaxMs?: number;
}

export interface WakeRecord {
  reason: string;
  /** Wall-clock time of the wake. */
  at: number;
  /** How many sleepers it woke. */
  woken: number;
}

interface Sleeper {
  wake(delayMs: number): void;
}

/**
 * Sleeps that can be cut short when the way to the cloud is open again.
 *
 * A loop that waits out a backoff sleeps here instead of on the clock. When the connectivity probe
 * finds the cloud reachable it calls `wake()`, and every current sleeper resolves with `'woken'`,
 * each after its own random delay so that a device's loops (and a fleet of devices) do not all
 * fire at the same instant. On `'woken'` the caller should reset its backoff before its next
 * attempt: the wait it was serving belonged to an outage that has ended. On `'elapsed'` it carries
 * on as usual.
 *
 * ```ts
 * for (;;) {
 *   const outcome = await wakeup.sleep(backoff.next(), signal);
 *   if (outcome === 'woken') backoff.reset();
 *   ...try again...
 * }
 * ```
 */
export class Wakeup {
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly staggerMaxMs: number;
  private readonly sleepers = new Set<Sleeper>();
  private last: WakeRecord | null = null;
  private wakes = 0;
  /** The stagger of the latest wake, for a sleep that learns of it late (`wokenSince`). */
  private lastStaggerMs: number;

  constructor(opts: WakeupOptions) {
    this.clock = opts.clock;
    this.random = opts.random;
    this.staggerMaxMs = Math.max(0, opts.staggerMaxMs ?? WAKE_STAGGER_MAX_MS);
    this.lastStaggerMs = this.staggerMaxMs;
  }

  /** Sleepers currently waiting for their deadline or a wake (not those already woken and staggering). */
  get sleeping(): number {
    return this.sleepers.size;
  }

  /** How many times `wake()` has been called: a loop keeps it to learn of wakes it missed while busy. */
  get wakeCount(): number {
    return this.wakes;
  }

  /** The most recent wake, for status output; null before the first. */
  lastWake(): WakeRecord | null {
    return this.last;
  }

  /**
   * Resolves with `'elapsed'` after `ms` on the injected clock, or with `'woken'` after a `wake()`
   * plus its stagger delay (never later than the original deadline; `ms = Infinity` waits for a wake). Rejects with the AbortError
   * when `signal` aborts; no timer or listener is left behind in any case.
   *
   * With `wokenSince` (a `wakeCount` read earlier), a wake since then counts as a wake of this sleep,
   * staggered from now: a loop that was busy with an attempt when the probe saw the way open (a
   * request hanging on a black-holed link until its timeout) would otherwise miss the only wake-up of
   * the outage and serve out its whole backoff.
   *
   * With `pacedMs` (shorter than `ms`: the loop's own backoff, which the offline floor stretched to
   * `ms`), a wake resolves the sleep at `pacedMs` from now when that is still ahead, without its
   * stagger: the backoff had spread the fleet's attempts already, and the floor held them back only
   * while the way was closed.
   */
  sleep(ms: number, signal?: AbortSignal, opts: { wokenSince?: number; pacedMs?: number } = {}): Promise<SleepOutcome> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const deadline = this.clock.monotonic() + Math.max(0, ms);
    const paced = opts.pacedMs !== undefined && Number.isFinite(opts.pacedMs) ? this.clock.monotonic() + Math.max(0, opts.pacedMs) : undefined;
    return new Promise<SleepOutcome>((resolve, reject) => {
      let timer = new AbortController();
      let woken = false;
      let settled = false;

      const settle = (finish: () => void): void => {
        // Stryker disable next-line ConditionalExpression: a second settle only repeats idempotent steps (delete, remove, abort) and a settled promise ignores resolve/reject
        if (settled) return;
        // Stryker disable next-line BooleanLiteral: as above, settling twice changes nothing
        settled = true;
        this.sleepers.delete(sleeper);
        signal?.removeEventListener('abort', onAbort);
        timer.abort();
        finish();
      };
      // (Re)arms the single timer of this sleep; a superseded timer is aborted and its rejection ignored.
      const arm = (untilMonotonic: number): void => {
        timer.abort();
        const current = new AbortController();
        timer = current;
        this.clock.sleep(Math.max(0, untilMonotonic - this.clock.monotonic()), current.signal).then(
          () => settle(() => resolve(woken ? 'woken' : 'elapsed')),
          () => undefined,
        );
      };
      const onAbort = (): void => settle(() => reject(abortError(signal)));
      const sleeper: Sleeper = {
        wake: (delayMs) => {
          woken = true;
          // A woken sleeper is no longer "current": a second wake must not push it further out.
          this.sleepers.delete(sleeper);
          const now = this.clock.monotonic();
          const at = paced !== undefined && paced > now ? paced : now + delayMs;
          // Stryker disable next-line EqualityOperator: at the deadline the armed timer resolves 'woken' (woken is set) at the same instant
          if (at < deadline) arm(at);
        },
      };

      // Stryker disable next-line ObjectLiteral,BooleanLiteral: settle() removes the listener, so it never runs twice anyway
      signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.wokenSince !== undefined && this.wakes > opts.wokenSince) {
        if (Number.isFinite(deadline)) arm(deadline);
        sleeper.wake(this.random() * this.lastStaggerMs);
        return;
      }
      this.sleepers.add(sleeper);
      // ms = Infinity: wait for a wake or the abort only (a timer that long would overflow setTimeout).
      if (Number.isFinite(deadline)) arm(deadline);
    });
  }

  /**
   * Wakes every current sleeper, each after its own uniform random delay in [0, staggerMaxMs] (the
   * constructor's unless the wake gives its own). Returns how many.
   */
  wake(reason: string, opts: { staggerMaxMs?: number } = {}): number {
    const current = [...this.sleepers];
    this.sleepers.clear();
    this.wakes++;
    const stagger = opts.staggerMaxMs !== undefined && Number.isFinite(opts.staggerMaxMs) ? Math.max(0, opts.staggerMaxMs) : this.staggerMaxMs;
    this.lastStaggerMs = stagger;
    for (const sleeper of current) sleeper.wake(this.random() * stagger);
    this.last = { reason, at: this.clock.now(), woken: current.length };
    return current.length;
  }
}
