import type { EnqueueResult } from './types.js';

/** An enqueue (one message) or enqueueMany (several, all or none) waiting for the next commit. */
export interface PendingCall<M> {
  messages: M[];
  resolve: (results: EnqueueResult[]) => void;
  reject: (err: Error) => void;
  /** Runs in the commit's transaction once the call was admitted (its writes commit or roll back with the messages). */
  alongside?: () => void;
}

/** Runs `fn` later; the returned function cancels it. */
type Schedule = (fn: () => void) => () => void;

/**
 * When the pending batch is looked at: `idle` once the current event-loop turn's work is done,
 * `window(ms)` after that long. Real timers by default. Not the injected Clock: its only timer is
 * `sleep`, and on a FakeClock an enqueue would then wait for a test to advance time.
 */
export interface GroupCommitTimers {
  idle: Schedule;
  window: (ms: number) => Schedule;
}

export const realTimers: GroupCommitTimers = {
  idle: (fn) => {
    const t = setImmediate(fn);
    return () => clearImmediate(t);
  },
  window: (ms) => (fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

export interface GroupCommitOptions<M> {
  /** The longest a batch is held (see `hold`). */
  windowMs: number;
  /** A batch holding this many messages is committed at once. */
  maxBatch: number;
  /** True while the connection is inside a transaction: a commit now would be a savepoint of it. */
  inTransaction: () => boolean;
  /** Writes `batch` in one transaction and settles every call of it. */
  commit: (batch: PendingCall<M>[], messages: number) => void;
  /**
   * True while committing now would gain nothing: the commits are made durable by an fsync of
   * their own (WalSync), one is under way, and a commit now would only wait for the next one. The
   * batch is then held, still growing, until `release()` (that fsync has ended), the window or
   * `maxBatch`. Default: never.
   */
  hold?: () => boolean;
  timers?: GroupCommitTimers;
}

/**
 * Group commit: enqueues are not written one by one, they join a pending batch that is written in
 * one transaction. A batch commits once the enqueues of its event-loop turn are in, unless `hold`
 * says an fsync is under way: then it waits for that fsync to end (`release`) and is written just
 * before the next one starts, which covers it. So a lone producer that awaits each acknowledgement
 * pays one commit and one fsync, never a wait on top; under load, everything that arrives during
 * an fsync shares the next one. A batch also commits at once when it holds `maxBatch` messages, and
 * after `windowMs` of holding (a slow disk does not hold the batch for the whole of its fsync: what
 * is committed meanwhile is only waiting for the sync, not for the commit's CPU).
 */
export class GroupCommit<M> {
  private pending: PendingCall<M>[] = [];
  private pendingMessages = 0;
  private cancelIdle: (() => void) | undefined;
  private cancelWindow: (() => void) | undefined;
  private commitQueued = false;
  private readonly maxBatch: number;
  private readonly timers: GroupCommitTimers;
  private readonly window: Schedule;

  constructor(private readonly o: GroupCommitOptions<M>) {
    this.maxBatch = Math.max(1, o.maxBatch);
    this.timers = o.timers ?? realTimers;
    this.window = this.timers.window(o.windowMs);
  }

  /** Messages waiting for the next commit. */
  get messages(): number {
    return this.pendingMessages;
  }

  /** The messages waiting for the next commit. */
  *queued(): Generator<M> {
    for (const call of this.pending) yield* call.messages;
  }

  add(call: PendingCall<M>): void {
    this.pending.push(call);
    this.pendingMessages += call.messages.length;
    if (this.pendingMessages >= this.maxBatch) {
      // Full batch: commit now, unless called inside someone's transaction on this connection (the
      // commit would become a savepoint of theirs and resolve before it is durable).
      if (!this.o.inTransaction()) this.flush();
      // Stryker disable next-line ConditionalExpression,BooleanLiteral: equivalent: a second queued flush finds the batch taken and returns
      else if (!this.commitQueued) {
        // Stryker disable next-line BooleanLiteral: equivalent: as above
        this.commitQueued = true;
        queueMicrotask(() => this.flush());
      }
      return;
    }
    this.cancelIdle ??= this.timers.idle(this.onIdle);
  }

  /** The fsync `hold` waited for has ended: commit what was held, so the next one covers it. */
  release(): void {
    if (this.pending.length > 0) this.flush();
  }

  /** Commits what is pending now. */
  flush(): void {
    this.commitQueued = false;
    this.cancelIdle?.();
    this.cancelWindow?.();
    this.cancelIdle = undefined;
    this.cancelWindow = undefined;
    const batch = this.pending;
    const messages = this.pendingMessages;
    this.pending = [];
    this.pendingMessages = 0;
    if (batch.length === 0) return;
    this.o.commit(batch, messages);
  }

  /** The enqueues of this event-loop turn are in: commit them, unless held (see `hold`). */
  private readonly onIdle = (): void => {
    this.cancelIdle = undefined;
    if (this.o.hold?.() !== true) this.flush();
    else this.cancelWindow ??= this.window(this.onWindow);
  };

  private readonly onWindow = (): void => {
    this.cancelWindow = undefined;
    this.flush();
  };
}
