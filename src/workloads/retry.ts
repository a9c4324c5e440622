import { Backoff, type BackoffStrategy } from '../resilience/backoff.js';
import type { Clock } from '../util/clock.js';
import type { Random } from '../util/random.js';

/**
 * The retry manager: CrashLoopBackOff for services that keep exiting, and a backoff per image for
 * pulls that fail. Both are the project's one `Backoff`; this only keeps one per key, remembers when
 * the next attempt is due and why the last one failed, and never counts one exit twice.
 */

/** The steps of one escalation (restarts after crashes, image pulls); the cloud loops' is `RetryPolicy`. */
export interface RestartBackoffSpec {
  minMs: number;
  maxMs: number;
  /** A success resets the escalation only after it lasted this long. */
  resetAfterMs: number;
  strategy: BackoffStrategy;
}

/**
 * The kubelet's numbers: 10 s doubling to 5 min, reset after 10 min running. No jitter: restarting
 * a local service costs no one else anything, and people reading the state expect the kubelet's steps.
 */
export const CRASH_BACKOFF: Readonly<RestartBackoffSpec> = Object.freeze({ minMs: 10_000, maxMs: 300_000, resetAfterMs: 600_000, strategy: 'none' });

/**
 * Pulls reach a registry, often the fleet's own: equal jitter keeps at least half of each step and
 * spreads a fleet that lost the registry together.
 */
export const PULL_BACKOFF: Readonly<RestartBackoffSpec> = Object.freeze({ minMs: 10_000, maxMs: 300_000, resetAfterMs: 0, strategy: 'equal' });

export interface RetryView {
  /** Failures counted in the current escalation. */
  failures: number;
  lastError: string | null;
  /** Epoch ms of the next attempt, while one is pending. */
  nextRetryAt: number | null;
}

interface Entry {
  backoff: Backoff;
  /** Monotonic time the next attempt is due; undefined when none is pending. */
  dueAt: number | undefined;
  /** The same as wall-clock epoch ms, fixed when the failure is recorded (for reports). */
  dueWall: number | null;
  lastError: string | null;
  /** The last failure counted (an exit key), so observing the same exit again counts nothing. */
  lastEventKey: string | undefined;
}

export class RetryTracker {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly policy: Readonly<RestartBackoffSpec>,
    private readonly deps: { clock: Pick<Clock, 'monotonic' | 'now'>; random: Random },
  ) {}

  /**
   * Records a failure and returns the delay before the next attempt. With `eventKey`, a failure
   * already counted under that key changes nothing (returns undefined).
   */
  fail(key: string, error: string, eventKey?: string): number | undefined {
    let e = this.entries.get(key);
    if (e && eventKey !== undefined && e.lastEventKey === eventKey) return undefined;
    if (!e) {
      e = this.newEntry();
      this.entries.set(key, e);
    }
    const delay = e.backoff.failure();
    e.dueAt = this.deps.clock.monotonic() + delay;
    e.dueWall = Math.round(this.deps.clock.now() + delay);
    e.lastError = error;
    if (eventKey !== undefined) e.lastEventKey = eventKey;
    return delay;
  }

  /** Marks an exit as seen without counting it (one that happened while the agent was not running). */
  acknowledge(key: string, eventKey: string): void {
    const e = this.entries.get(key);
    if (e) e.lastEventKey = eventKey;
    else this.entries.set(key, { ...this.newEntry(), lastEventKey: eventKey });
  }

  private newEntry(): Entry {
    return { backoff: new Backoff({ ...this.policy, clock: this.deps.clock, random: this.deps.random }), dueAt: undefined, dueWall: null, lastError: null, lastEventKey: undefined };
  }

  hasSeen(key: string, eventKey: string): boolean {
    return this.entries.get(key)?.lastEventKey === eventKey;
  }

  /**
   * The attempt worked (the service started, the image arrived): nothing pending; the escalation
   * resets once the success has lasted `resetAfterMs`. Creates the entry, so `known` tells later
   * that this agent has started the key before.
   */
  succeed(key: string): void {
    let e = this.entries.get(key);
    if (!e) {
      e = this.newEntry();
      this.entries.set(key, e);
    }
    e.backoff.success();
    e.dueAt = undefined;
    e.dueWall = null;
  }

  /** Whether anything was recorded for the key since the agent started (or the key was forgotten). */
  known(key: string): boolean {
    return this.entries.has(key);
  }

  /** True while a retry is pending and not yet due. */
  waiting(key: string): boolean {
    const due = this.entries.get(key)?.dueAt;
    return due !== undefined && this.deps.clock.monotonic() < due;
  }

  /** True when a retry is pending (due or not). */
  pending(key: string): boolean {
    return this.entries.get(key)?.dueAt !== undefined;
  }

  view(key: string): RetryView {
    const e = this.entries.get(key);
    if (!e) return { failures: 0, lastError: null, nextRetryAt: null };
    return { failures: e.backoff.attempt, lastError: e.lastError, nextRetryAt: e.dueAt === undefined ? null : e.dueWall };
  }

  /** Forgets a key (the service left the target, or its configuration changed: a new config starts afresh). */
  forget(key: string): void {
    this.entries.delete(key);
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  /** Monotonic time of the earliest pending retry, if any. */
  nextDue(): number | undefined {
    let best: number | undefined;
    for (const e of this.entries.values()) if (e.dueAt !== undefined && (best === undefined || e.dueAt < best)) best = e.dueAt;
    return best;
  }
}

export interface RetryManagerOptions {
  crash?: Partial<RestartBackoffSpec>;
  pull?: Partial<RestartBackoffSpec>;
  clock: Pick<Clock, 'monotonic' | 'now'>;
  random: Random;
}

/** The two trackers the reconciler uses: per service (crash loops) and per image (pulls). */
export class RetryManager {
  readonly crash: RetryTracker;
  readonly pull: RetryTracker;

  constructor(opts: RetryManagerOptions) {
    const deps = { clock: opts.clock, random: opts.random };
    this.crash = new RetryTracker({ ...CRASH_BACKOFF, ...opts.crash }, deps);
    this.pull = new RetryTracker({ ...PULL_BACKOFF, ...opts.pull }, deps);
  }

  nextDue(): number | undefined {
    const a = this.crash.nextDue();
    const b = this.pull.nextDue();
    if (a === undefined) return b;
    if (b === undefined) return a;
    return Math.min(a, b);
  }
}
