import type { Clock } from '../util/clock.js';

export interface LoopShareOptions {
  clock: Pick<Clock, 'monotonic' | 'sleep'>;
  /** True while a delivery is under way: the outbox has messages leased to a sink (`Outbox.leased > 0`). */
  draining: () => boolean;
  /** Longest pause owed at once, ms: a very long turn (a commit on a stalled disk) does not stop producers for longer. */
  maxPauseMs?: number;
  /** `settings.offline.shareLoopWithDrain`: false never pauses (producers take what they can). */
  enabled?: boolean;
}

const noop = (): void => undefined;

/**
 * A pause is this many times the turn it follows. 1 would split the loop evenly if every cost of
 * ingest were measured, but some are not (garbage collection of what it allocated, writing the
 * PUBACKs, parsing the POSTs' headers, the sockets' reads) and fall on the drain's side: with 1,
 * bench:fairness measured 0.50-0.60 of the drain's solo rate, with 1.5 0.60-0.68 (docs/performance.md).
 */
const PAUSE_RATIO = 1.5;

/** What the share did so far (`GET /v2/queue`'s `ingestShare`): why local intake is slower while a drain runs. */
export interface LoopShareStats {
  enabled: boolean;
  /** Pauses begun since the start. */
  pauses: number;
  /** Time local ingest spent paused, ms. */
  pausedMs: number;
  paused: boolean;
}

/**
 * Ingest and delivery share one event loop and one database. Under a flood of local producers the
 * loop is always busy with their packets and commits, and the flusher's callbacks (read a batch, send
 * it, commit the ack) wait behind them: delivery fell to a few percent of its rate alone. The rule
 * here: while a drain is under way (the outbox has messages leased to a sink), every ingest turn
 * (the synchronous work of taking messages in, measured by `begin`/`spent`) is followed by a pause
 * 1.5 times as long as that turn took, during which the local broker reads nothing from its clients and
 * `POST /v2/telemetry` bodies wait unread. Ingest then gets less than half the loop while a drain runs,
 * and nothing is dropped: TCP holds the producers back, and a PUBACK or a 202 still means "on disk".
 * With nothing draining there is no pause, so a producer alone loses nothing.
 */
export class LoopShare {
  private readonly maxPauseMs: number;
  private readonly enabled: boolean;
  /** Monotonic ms until which ingest is paused. */
  private until = 0;
  /** The pause under way (its sleep's controller); undefined while ingest may run. */
  private pausing: AbortController | undefined;
  private waiters: (() => void)[] = [];
  /** Start of the turn being measured: turns that begin inside it are part of it, counted once. */
  private turnStart: number | undefined;
  private stopped = false;
  private pauses = 0;
  private pausedMs = 0;

  constructor(private readonly o: LoopShareOptions) {
    this.maxPauseMs = o.maxPauseMs ?? 1_000;
    this.enabled = o.enabled ?? true;
  }

  /** True while ingest waits. */
  get paused(): boolean {
    return this.pausing !== undefined;
  }

  /** Starts measuring an ingest turn; call the function returned when it ends. */
  begin(): () => void {
    if (this.turnStart !== undefined || !this.enabled || this.stopped) return noop;
    const t0 = (this.turnStart = this.o.clock.monotonic());
    return () => {
      if (this.turnStart !== t0) return;
      this.turnStart = undefined;
      this.spent(this.o.clock.monotonic() - t0);
    };
  }

  /** An ingest turn of `ms` measured elsewhere (an outbox commit). Inside a measured turn it is already counted. */
  spent(ms: number): void {
    if (this.turnStart !== undefined || !this.enabled || this.stopped || !(ms > 0) || !this.o.draining()) return;
    const now = this.o.clock.monotonic();
    // A turn run during a pause (the commit of what was read before it) used that much of the pause:
    // the loop is owed that time back on top of the turn's own pause.
    const owed = (this.pausing ? 2 * ms : ms) * PAUSE_RATIO;
    this.until = Math.min(Math.max(this.until, now) + owed, now + this.maxPauseMs);
    if (!this.pausing) void this.pause();
  }

  /** Resolves when ingest may go on; undefined (nothing to await) when it may now. */
  ready(): Promise<void> | undefined {
    if (!this.pausing) return undefined;
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Runs `fn` once ingest may go on (at once when it may now). */
  whenReady(fn: () => void): void {
    if (this.pausing) this.waiters.push(fn);
    else fn();
  }

  stats(): LoopShareStats {
    return { enabled: this.enabled, pauses: this.pauses, pausedMs: Math.round(this.pausedMs), paused: this.paused };
  }

  /** Ends any pause (its waiters go on) and never pauses again. */
  stop(): void {
    this.stopped = true;
    this.pausing?.abort();
  }

  private async pause(): Promise<void> {
    const ac = (this.pausing = new AbortController());
    const t0 = this.o.clock.monotonic();
    this.pauses++;
    try {
      // Turns measured during the pause (a commit of what was read before it) extend it.
      for (let left = this.until - this.o.clock.monotonic(); left > 0; left = this.until - this.o.clock.monotonic()) {
        await this.o.clock.sleep(left, ac.signal);
      }
    } catch {
      // Aborted by stop(): the waiters go on below.
    } finally {
      this.pausedMs += this.o.clock.monotonic() - t0;
      this.pausing = undefined;
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }
}
