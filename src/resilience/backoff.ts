import type { AgentConfig, JitterStrategy } from '../config/schema.js';
import type { Clock } from '../util/clock.js';
import { AgentError } from '../util/errors.js';
import type { Random } from '../util/random.js';

/**
 * The one backoff of the agent (DESIGN.md, principle 4): exponential, jittered so a fleet coming
 * back after an outage does not arrive in step, capped, honouring `Retry-After`, and reset only after
 * the link has stayed good for a while so a flapping link keeps backing off.
 */

export type BackoffStrategy = JitterStrategy;

export interface BackoffOptions {
  /** First step of the exponential, before jitter. */
  minMs: number;
  /** Cap of every computed delay (a `Retry-After` may ask for more; see `failure`). */
  maxMs: number;
  strategy: BackoffStrategy;
  /** Growth factor per failed attempt; 2 unless told. */
  multiplier?: number;
  /** A success resets the escalation only after the link has stayed good this long; 30 s unless told. */
  resetAfterMs?: number;
  clock: Pick<Clock, 'monotonic' | 'now'>;
  random: Random;
}

export interface FailureOptions {
  /** What the server asked for (see `parseRetryAfter`): the delay will be at least this. */
  retryAfterMs?: number;
  /**
   * The failure's moment is the device's own, not one a fleet shares: a connection given up by its
   * keep-alive watchdog, timed from when that device last heard its broker. `spread` then draws even
   * the first retry of a run as it draws the later ones: the fleet is spread already, and a draw near
   * 0 would only put connects in flight through the outage that the kernel resends together at its end.
   */
  phased?: boolean;
  /**
   * The failure's moment is one a fleet shares, though its run of failures is not new: the first
   * answer after a run of transport failures (a cloud coming back meets the devices that were waiting
   * for it in the same seconds, and answers those beyond its capacity 503). `spread` draws its retry
   * over the whole step, as it draws the first retry of a run: the later draws would bring that crowd
   * back together one step later.
   */
  shared?: boolean;
}

/**
 * The shortest delay full jitter returns is min(FULL_JITTER_FLOOR_MS, minMs / 2). AWS's full jitter
 * draws from [0, base]; a draw near 0 on a link that fails instantly (ECONNREFUSED, a cached DNS
 * failure) would retry in a tight loop. The floor is not `minMs`: full jitter on the first step
 * would then always give exactly `minMs`, and a fleet that lost the cloud together would retry
 * together; at most half of `minMs` keeps a spread on every step. 100 ms is 5 % of the default first
 * step, so it bounds the retry rate to 10/s while keeping nearly all of the spread. The delay is
 * drawn uniformly from [floor, base] (not clamped), so no probability piles up at the floor.
 */
export const FULL_JITTER_FLOOR_MS = 100;

/**
 * `spread` draws each retry after the first of a run of failures from [step x (1 - SPREAD_WIDTH), step]:
 * narrow enough that a fleet's retries keep the phases the first (full-jitter) retry gave them, so a
 * cloud that returns meets about devices/step requests per second, and wide enough that devices
 * whose phases met do not stay together.
 */
export const SPREAD_WIDTH = 0.1;

/** A `Retry-After` beyond this is treated as this: a broken header must not park the agent for a year. */
export const MAX_RETRY_AFTER_MS = 24 * 60 * 60 * 1000;

export class Backoff {
  readonly minMs: number;
  readonly maxMs: number;
  readonly strategy: BackoffStrategy;
  readonly multiplier: number;
  readonly resetAfterMs: number;
  private readonly clock: Pick<Clock, 'monotonic' | 'now'>;
  private readonly random: Random;
  private failures = 0;
  /** The previous computed delay, which decorrelated jitter grows from. */
  private prevMs: number;
  private goodSince: number | undefined;
  /** Monotonic time before which a server's Retry-After asked us not to come back. */
  private holdUntil: number | undefined;

  constructor(opts: BackoffOptions) {
    const multiplier = opts.multiplier ?? 2;
    const resetAfterMs = opts.resetAfterMs ?? 30_000;
    requireOption(Number.isFinite(opts.minMs) && opts.minMs > 0, 'minMs', opts.minMs, 'a number of milliseconds above 0');
    requireOption(Number.isFinite(opts.maxMs) && opts.maxMs >= opts.minMs, 'maxMs', opts.maxMs, `a number of milliseconds >= minMs (${opts.minMs})`);
    requireOption(Number.isFinite(multiplier) && multiplier >= 1, 'multiplier', multiplier, 'a number >= 1');
    requireOption(Number.isFinite(resetAfterMs) && resetAfterMs >= 0, 'resetAfterMs', resetAfterMs, 'a number of milliseconds >= 0');
    this.minMs = opts.minMs;
    this.maxMs = opts.maxMs;
    this.strategy = opts.strategy;
    this.multiplier = multiplier;
    this.resetAfterMs = resetAfterMs;
    this.clock = opts.clock;
    this.random = opts.random;
    this.prevMs = opts.minMs;
  }

  /**
   * Failed attempts counted in the current escalation. Reads 0 once the link has been good for
   * `resetAfterMs`, even before the next failure applies the reset.
   */
  get attempt(): number {
    return this.stableLongEnough() ? 0 : this.failures;
  }

  /** Monotonic time of the first success since the last failure; undefined while failing. */
  get stableSince(): number | undefined {
    return this.goodSince;
  }

  /**
   * Records a failed attempt and returns the delay in ms before the next one. The computed delay
   * never exceeds `maxMs`; `retryAfterMs` is a lower bound that is honoured above the cap (the
   * server knows when it will take us back; retrying sooner only earns another 429), itself capped
   * at `MAX_RETRY_AFTER_MS`. A `Retry-After` does not feed the escalation: the next failure without
   * one continues from the computed delays.
   */
  failure(opts: FailureOptions = {}): number {
    if (this.stableLongEnough()) this.restart();
    this.goodSince = undefined;
    const delay = this.nextDelay(opts.phased === true, opts.shared === true);
    this.failures++;
    const retryAfter = opts.retryAfterMs;
    // Stryker disable next-line ConditionalExpression,EqualityOperator: the guards overlap (undefined is not finite) and a Retry-After of 0 holds nothing
    if (retryAfter === undefined || !Number.isFinite(retryAfter) || retryAfter <= 0) return delay;
    const hold = Math.min(retryAfter, MAX_RETRY_AFTER_MS);
    this.holdUntil = this.clock.monotonic() + hold;
    return Math.max(delay, hold);
  }

  /**
   * What is left of the latest Retry-After. `reset()` does not shorten it: a loop woken early (the
   * probe saw the network back) still waits until the server said it would take it back.
   */
  holdRemainingMs(): number {
    if (this.holdUntil === undefined) return 0;
    return Math.max(0, this.holdUntil - this.clock.monotonic());
  }

  /**
   * Marks the link good now. The escalation is not reset here: a failure within `resetAfterMs`
   * continues it. Repeated successes keep the first one's time.
   */
  success(): void {
    this.holdUntil = undefined;
    if (this.goodSince === undefined) this.goodSince = this.clock.monotonic();
  }

  /** Back to the first step at once (the connectivity probe saw the way open again). */
  reset(): void {
    this.restart();
  }

  private restart(): void {
    this.failures = 0;
    this.prevMs = this.minMs;
  }

  private stableLongEnough(): boolean {
    return this.goodSince !== undefined && this.clock.monotonic() - this.goodSince >= this.resetAfterMs;
  }

  /**
   * A delay drawn uniformly over the latest step (as full jitter draws it), without counting a failure:
   * for a failure whose moment the network chose, after its attempt had outlasted the step (a reset
   * when a proxy's backend returned, the same moment for a whole fleet).
   */
  respread(): number {
    const base = Math.min(this.maxMs, this.minMs * this.multiplier ** Math.max(0, this.failures - 1));
    return this.fullJitter(base);
  }

  private fullJitter(base: number): number {
    const floor = Math.min(FULL_JITTER_FLOOR_MS, this.minMs / 2);
    return floor + this.random() * (base - floor);
  }

  private nextDelay(phased: boolean, shared: boolean): number {
    // Bounded by maxMs, so a long outage cannot overflow to Infinity * 0 or NaN.
    const base = Math.min(this.maxMs, this.minMs * this.multiplier ** this.failures);
    switch (this.strategy) {
      case 'none':
        return base;
      case 'full':
        return this.fullJitter(base);
      case 'spread':
        // The first retry spreads a fleet that failed together over the first step; the later ones keep it spread.
        return (this.failures === 0 || shared) && !phased ? this.fullJitter(base) : base * (1 - SPREAD_WIDTH * this.random());
      case 'equal':
        return base / 2 + this.random() * (base / 2);
      case 'decorrelated': {
        const upper = this.prevMs * 3;
        const delay = Math.min(this.maxMs, this.minMs + this.random() * (upper - this.minMs));
        this.prevMs = delay;
        return delay;
      }
    }
  }
}

function requireOption(ok: boolean, name: string, value: unknown, expected: string): void {
  if (!ok) throw new AgentError('BACKOFF_OPTIONS_INVALID', `backoff option ${name}: expected ${expected}, got ${String(value)}`);
}

/** Builds the agent's backoff from `settings.offline`. */
export function backoffFromSettings(
  offline: AgentConfig['settings']['offline'],
  deps: { clock: Pick<Clock, 'monotonic' | 'now'>; random: Random },
): Backoff {
  if (offline.minBackoffSeconds > offline.maxBackoffSeconds) {
    throw new AgentError(
      'CONFIG_INVALID',
      `settings.offline.minBackoffSeconds: expected at most settings.offline.maxBackoffSeconds (${offline.maxBackoffSeconds}), got ${offline.minBackoffSeconds}`,
    );
  }
  return new Backoff({
    minMs: offline.minBackoffSeconds * 1000,
    maxMs: offline.maxBackoffSeconds * 1000,
    strategy: offline.enableJitter ? offline.jitter : 'none',
    resetAfterMs: offline.backoffResetAfterSeconds * 1000,
    clock: deps.clock,
    random: deps.random,
  });
}

/**
 * Refused credentials (a registration refused, a broker refusing the login) stay refused until someone
 * fixes them: they are tried again after half to all of this, the backoff's cap or the offline floor
 * (`offlineRetryIntervalSeconds`), whichever is longer, so a fleet with a revoked key does not knock
 * at the backoff's short cap.
 */
export function refusedRetryMaxMs(offline: AgentConfig['settings']['offline']): number {
  return Math.max(offline.maxBackoffSeconds, offline.offlineRetryIntervalSeconds) * 1000;
}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const TIME = '(\\d{2}):(\\d{2}):(\\d{2})';
// The three HTTP-date forms of RFC 9110 §5.6.7, which recipients must all accept.
const IMF_FIXDATE = new RegExp(`^[A-Za-z]{3}, (\\d{2}) ([A-Za-z]{3}) (\\d{4}) ${TIME} GMT$`);
const RFC850_DATE = new RegExp(`^[A-Za-z]{6,9}, (\\d{2})-([A-Za-z]{3})-(\\d{2}) ${TIME} GMT$`);
const ASCTIME_DATE = new RegExp(`^[A-Za-z]{3} ([A-Za-z]{3}) ([ \\d]\\d) ${TIME} (\\d{4})$`);

/**
 * A `Retry-After` header as milliseconds to wait from `nowWallMs`: delay-seconds or an HTTP-date.
 * Anything else is undefined (ignored, not guessed: `Date.parse` would read "-5" as a year). A date
 * in the past is 0; a value beyond `MAX_RETRY_AFTER_MS` is capped to it.
 */
export function parseRetryAfter(header: string | undefined, nowWallMs: number): number | undefined {
  if (header === undefined) return undefined;
  const value = header.trim();
  if (/^\d+$/.test(value)) return Math.min(Number(value) * 1000, MAX_RETRY_AFTER_MS);
  const at = parseHttpDate(value, nowWallMs);
  if (at === undefined) return undefined;
  return Math.min(Math.max(0, at - nowWallMs), MAX_RETRY_AFTER_MS);
}

function parseHttpDate(value: string, nowWallMs: number): number | undefined {
  let m = IMF_FIXDATE.exec(value);
  if (m) return utc(Number(m[3]), m[2], Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]));
  m = RFC850_DATE.exec(value);
  if (m) {
    // A two-digit year more than 50 years in the future means the past century (RFC 9110).
    const nowYear = new Date(nowWallMs).getUTCFullYear();
    let year = Math.floor(nowYear / 100) * 100 + Number(m[3]);
    if (year > nowYear + 50) year -= 100;
    return utc(year, m[2], Number(m[1]), Number(m[4]), Number(m[5]), Number(m[6]));
  }
  m = ASCTIME_DATE.exec(value);
  // Stryker disable next-line MethodExpression: Number() ignores the space of a one-digit day anyway
  if (m) return utc(Number(m[6]), m[1], Number(m[2]?.trim()), Number(m[3]), Number(m[4]), Number(m[5]));
  return undefined;
}

function utc(year: number, monthName: string | undefined, day: number, h: number, min: number, s: number): number | undefined {
  // Stryker disable next-line StringLiteral: a matched date always has a month name; the fallback only satisfies the type
  const month = MONTHS.indexOf((monthName ?? '').toLowerCase());
  // Stryker disable next-line ConditionalExpression: hour 24 rolls over into the next day, which the day check below refuses
  if (month < 0 || h > 23 || min > 59 || s > 60) return undefined;
  // A leap second (:60) is read as :59 rather than rolling over into the next minute.
  const ms = Date.UTC(year, month, day, h, min, Math.min(s, 59));
  // Rejects day 31 of a 30-day month rather than rolling over into the next.
  if (Number.isNaN(ms) || new Date(ms).getUTCDate() !== day) return undefined;
  return ms;
}

/**
 * The seed's backoff ("+0-30%" jitter), kept only so bench/ can compare it with `Backoff`. Not for
 * use in the agent: its jitter is too narrow to spread a fleet, and it never floors or resets.
 */
export function seedBackoffDelay(baseMs: number, failures: number, maxMs: number, random: Random): number {
  return Math.min(baseMs * 2 ** (failures - 1) * (1 + random() * 0.3), maxMs);
}
