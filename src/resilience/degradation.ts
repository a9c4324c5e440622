import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { TypedEmitter } from '../util/typed-emitter.js';

export type ConnectionStatus = 'online' | 'degraded' | 'offline';

export interface StatusChange {
  from: string;
  to: string;
  at: number;
}

/**
 * The little of the connection monitor that the resilience parts need. The monitor is
 * structurally compatible; tests drive an EventEmitter instead.
 */
export interface StatusSource {
  status(): ConnectionStatus;
  on(event: 'status', fn: (e: StatusChange) => void): unknown;
  off(event: 'status', fn: (e: StatusChange) => void): unknown;
}

/**
 * A part that can stop its cloud-dependent work during a long outage (a job poller, shadow sync)
 * and start it again. pause() and resume() should be idempotent and return promptly: a call that
 * has not settled after `callTimeoutMs` counts as failed and the controller moves on.
 */
export interface Degradable {
  name: string;
  pause(): void | Promise<void>;
  resume(): void | Promise<void>;
}

export type DegradationMode = 'normal' | 'degraded';

export interface ModeEvent {
  from: DegradationMode;
  to: DegradationMode;
  /** Wall-clock time of the change. */
  at: number;
  reason: string;
}

export interface FeatureState {
  name: string;
  order: number;
  /** The controller has asked the feature to pause and not yet to resume (also when pause() failed). */
  paused: boolean;
  /** The message of the last pause/resume failure, if the last call failed. */
  error?: string;
}

export interface DegradationControllerOptions {
  status: StatusSource;
  clock: Clock;
  random: Random;
  logger: Logger;
  /** settings.offline.enableGracefulDegradation; when false nothing is ever paused. */
  enabled: boolean;
  /** settings.offline.offlineThresholdSeconds * 1000. */
  thresholdMs: number;
  /** Each paused feature resumes after its own uniform random delay in [0, resumeStaggerMaxMs]. */
  resumeStaggerMaxMs?: number;
  /** Longest wait for one pause()/resume() call before it counts as failed. */
  callTimeoutMs?: number;
}

interface Entry {
  feature: Degradable;
  order: number;
  seq: number;
  paused: boolean;
  /** Position in the pause sequence; resumes go in decreasing pauseSeq. */
  pauseSeq: number;
  error?: string;
}

interface Failure {
  name: string;
  error: string;
}

/**
 * Graceful degradation: after the connection has been offline continuously for `thresholdMs`,
 * registered features are paused (lower `order` first) and the mode becomes `'degraded'`. When the
 * connection is back (any status but offline), each paused feature is resumed in reverse order of
 * pausing, each after its own random delay so a fleet coming back does not restart its cloud work
 * in step; then the mode is `'normal'` again. Going offline during the resumes cancels the rest
 * and re-arms the threshold.
 *
 * The threshold counts from when this controller saw the status go offline (or from `start()` if
 * it was already offline): it needs no shared notion of time with the monitor.
 */
export interface DegradationEvents {
  mode: ModeEvent;
}

export class DegradationController extends TypedEmitter<DegradationEvents> {
  private readonly status: StatusSource;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly logger: Logger;
  private readonly enabled: boolean;
  private readonly thresholdMs: number;
  private readonly resumeStaggerMaxMs: number;
  private readonly callTimeoutMs: number;

  private readonly entries: Entry[] = [];
  private seq = 0;
  private pauseSeq = 0;
  private currentMode: DegradationMode = 'normal';
  private modeSince: number;
  /** Why the mode last changed; null before any change. */
  private lastReason: string | null = null;
  private offline = false;
  /** Monotonic time the current offline stretch was first seen. */
  private offlineAt = 0;
  private started = false;
  /** Cuts the loop's current wait short; replaced by each wait. */
  private kick: () => void = () => undefined;
  /** Names resumed (and resume failures) since the mode last became degraded, for the log line. */
  private resumedInEpisode = new Set<string>();
  private resumeFailures: Failure[] = [];

  constructor(opts: DegradationControllerOptions) {
    super();
    this.status = opts.status;
    this.clock = opts.clock;
    this.random = opts.random;
    this.logger = opts.logger;
    this.enabled = opts.enabled;
    this.thresholdMs = Math.max(0, opts.thresholdMs);
    this.resumeStaggerMaxMs = Math.max(0, opts.resumeStaggerMaxMs ?? 10_000);
    this.callTimeoutMs = Math.max(1, opts.callTimeoutMs ?? 30_000);
    this.modeSince = this.clock.now();
  }

  /**
   * Registers a feature; lower `order` pauses first (equal orders in registration order). A feature
   * registered while degraded and offline is paused at once. Returns a function that unregisters it
   * (without resuming it).
   */
  register(feature: Degradable, opts: { order: number }): () => void {
    // Stryker disable next-line ConditionalExpression: the same object has the same name, which the second test catches
    if (this.entries.some((e) => e.feature === feature || e.feature.name === feature.name)) {
      throw new AgentError('DEGRADABLE_DUPLICATE', `a degradable feature named "${feature.name}" is already registered`);
    }
    // Stryker disable next-line UnaryOperator: pauseSeq is read only for paused entries, and pausing sets it first
    const entry: Entry = { feature, order: opts.order, seq: this.seq++, paused: false, pauseSeq: -1 };
    this.entries.push(entry);
    // Stryker disable next-line ArithmeticOperator: the list is sorted at every push, so a tie is only compared newest-first, which both order after
    this.entries.sort((a, b) => a.order - b.order || a.seq - b.seq);
    this.kick();
    return () => {
      const i = this.entries.indexOf(entry);
      if (i >= 0) this.entries.splice(i, 1);
    };
  }

  mode(): DegradationMode {
    return this.currentMode;
  }

  /** Why the current mode began ("offline for 312 s (threshold 300 s)"); null before any change. */
  reason(): string | null {
    return this.lastReason;
  }

  /** Wall-clock time the current mode began (construction time before any change). */
  since(): number {
    return this.modeSince;
  }

  features(): FeatureState[] {
    return this.entries.map((e) => ({
      name: e.feature.name,
      order: e.order,
      paused: e.paused,
      ...(e.error !== undefined ? { error: e.error } : {}),
    }));
  }

  /**
   * Follows the status source until `signal` aborts; then every timer is cleared and the listener
   * removed (paused features stay paused: the agent is shutting down). The promise resolves once
   * stopped and never rejects.
   */
  async start(signal: AbortSignal): Promise<void> {
    if (this.started) throw new AgentError('ALREADY_STARTED', 'the degradation controller was already started');
    this.started = true;
    if (!this.enabled || signal.aborted) return;

    const onStatus = (e: StatusChange): void => this.setOffline(e.to === 'offline');
    this.status.on('status', onStatus);
    this.setOffline(this.status.status() === 'offline');
    try {
      await this.loop(signal);
    } finally {
      this.status.off('status', onStatus);
    }
  }

  private setOffline(offline: boolean): void {
    if (offline && !this.offline) this.offlineAt = this.clock.monotonic();
    this.offline = offline;
    this.kick();
  }

  private async loop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      if (this.offline) {
        const unpaused = this.entries.some((e) => !e.paused);
        if (this.currentMode === 'degraded' && !unpaused) {
          await this.waitForChange(null, signal);
          continue;
        }
        const remaining = this.offlineAt + this.thresholdMs - this.clock.monotonic();
        if (remaining > 0) {
          await this.waitForChange(remaining, signal);
          continue;
        }
        await this.degrade(signal);
      } else if (
        // Stryker disable next-line MethodExpression,ArrowFunction: a paused feature implies degraded mode (only degrade() pauses, and it sets the mode), so the second test never decides
        this.currentMode === 'degraded' || this.entries.some((e) => e.paused)
      ) {
        await this.recover(signal);
      } else {
        await this.waitForChange(null, signal);
      }
    }
  }

  /** Pauses every unpaused feature in order; stops early when the connection is back. */
  private async degrade(signal: AbortSignal): Promise<void> {
    const paused: string[] = [];
    const failed: Failure[] = [];
    for (const entry of this.entries.filter((e) => !e.paused)) {
      if (signal.aborted || !this.offline) break;
      if (!this.entries.includes(entry)) continue;
      entry.paused = true;
      entry.pauseSeq = this.pauseSeq++;
      const error = await this.call(entry, 'pause');
      if (error === undefined) {
        delete entry.error;
        paused.push(entry.feature.name);
      } else {
        entry.error = error;
        failed.push({ name: entry.feature.name, error });
      }
    }
    if (signal.aborted) return;
    const offlineFor = Math.round((this.clock.monotonic() - this.offlineAt) / 1000);
    if (this.currentMode === 'normal') {
      this.resumedInEpisode = new Set();
      this.resumeFailures = [];
      this.changeMode('degraded', `offline for ${offlineFor} s (threshold ${this.thresholdMs / 1000} s)`, { paused, failed });
    } else {
      // Re-pausing after an interrupted recovery: the mode does not change, so no info line.
      this.logger.debug({ paused, failed }, 'offline again while resuming; features paused again');
    }
  }

  /**
   * Resumes the paused features in reverse order of pausing. Each gets its own random delay in
   * [0, resumeStaggerMaxMs] from now; the delays are sorted so the reverse order holds. Going
   * offline again cancels the remaining resumes (the loop then re-arms the threshold).
   */
  private async recover(signal: AbortSignal): Promise<void> {
    const queue = this.entries.filter((e) => e.paused).sort((a, b) => b.pauseSeq - a.pauseSeq);
    const delays = queue.map(() => this.random() * this.resumeStaggerMaxMs).sort((a, b) => a - b);
    const start = this.clock.monotonic();
    for (const [i, entry] of queue.entries()) {
      const due = start + (delays[i] ?? 0);
      for (let now = this.clock.monotonic(); now < due && !signal.aborted && !this.offline; now = this.clock.monotonic()) {
        await this.waitForChange(due - now, signal);
      }
      if (signal.aborted || this.offline) return;
      if (!this.entries.includes(entry)) continue;
      const error = await this.call(entry, 'resume');
      entry.paused = false;
      this.resumedInEpisode.add(entry.feature.name);
      if (error === undefined) {
        delete entry.error;
      } else {
        entry.error = error;
        this.resumeFailures.push({ name: entry.feature.name, error });
      }
    }
    if (signal.aborted || this.offline || this.currentMode === 'normal') return;
    this.changeMode('normal', `connection back (${this.status.status()})`, {
      resumed: [...this.resumedInEpisode],
      failed: this.resumeFailures,
    });
  }

  /** Calls pause()/resume(); returns the failure message, or undefined on success. Never throws. */
  private async call(entry: Entry, op: 'pause' | 'resume'): Promise<string | undefined> {
    const timer = new AbortController();
    try {
      return await Promise.race([
        Promise.resolve()
          .then(() => entry.feature[op]())
          .then(
            () => undefined,
            (err: unknown) => errorMessage(err),
          ),
        this.clock.sleep(this.callTimeoutMs, timer.signal).then(
          () => `${op}() did not finish within ${this.callTimeoutMs / 1000} s`,
          () => undefined,
        ),
      ]);
    } finally {
      timer.abort();
    }
  }

  /** Waits `ms` (null: indefinitely) or until the status changes, a feature registers, or `signal` aborts. */
  private async waitForChange(ms: number | null, signal: AbortSignal): Promise<void> {
    // Stryker disable next-line ConditionalExpression: every caller checks the signal just before, with no await between
    if (signal.aborted) return;
    const wait = new AbortController();
    const stop = (): void => wait.abort();
    this.kick = stop;
    // Stryker disable next-line ObjectLiteral,BooleanLiteral: the finally block removes it, and an AbortSignal fires once
    signal.addEventListener('abort', stop, { once: true });
    try {
      if (ms === null) {
        // Stryker disable next-line ObjectLiteral,BooleanLiteral: an AbortSignal fires 'abort' once
        await new Promise<void>((resolve) => wait.signal.addEventListener('abort', () => resolve(), { once: true }));
      } else {
        await this.clock.sleep(ms, wait.signal).catch(() => undefined);
      }
    } finally {
      stop();
      signal.removeEventListener('abort', stop);
      // Stryker disable next-line ConditionalExpression,EqualityOperator: waits never overlap, so kick is this wait's stop, and a stale stop aborts a finished wait: no effect either way
      if (this.kick === stop) this.kick = () => undefined;
    }
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.logger.warn({ err: errorMessage(err) }, `a ${event} listener threw`);
  }

  private changeMode(to: DegradationMode, reason: string, details: Record<string, unknown>): void {
    const from = this.currentMode;
    const at = this.clock.now();
    this.currentMode = to;
    this.modeSince = at;
    this.lastReason = reason;
    const msg = to === 'degraded' ? 'entering degraded mode: cloud-dependent features paused' : 'leaving degraded mode: features resumed';
    this.logger.info({ mode: to, from, reason, ...details }, msg);
    const event: ModeEvent = { from, to, at, reason };
    this.emit('mode', event);
  }
}
