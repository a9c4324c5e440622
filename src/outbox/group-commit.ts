import type { EnqueueResult } from './types.js';

/** An enqueue (one message) or enqueueMany (several, all or none) waiting for the next commit. */
export interface PendingCall<M> {
  messages: M[];
  resolve: (results: EnqueueResult[]) => void;
  reject: (err: Error) => void;
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
  /** The longest a batch waits for more enqueues after its first one. */
  windowMs: number;
  /** A batch holding this many messages is committed at once. */
  maxBatch: number;
  /** True while the connection is inside a transaction: a commit now would be a savepoint of it. */
  inTransaction: () => boolean;
  /** Writes `batch` in one transaction and settles every call of it. */
  commit: (batch: PendingCall<M>[], messages: number) => void;
  timers?: GroupCommitTimers;
}

/**
 * Group commit: enqueues are not written one by one, they join a pending batch that is written in
 * one transaction (one fsync) when the batch has waited `windowMs` since its first enqueue, or holds
 * `maxBatch` messages, or (checked once the enqueues of an event-loop turn are in) has as many calls
 * as the previous batch had: producers that await each enqueue come back together after a commit,
 * and holding them for the rest of the window would only idle them. That includes a lone producer
 * (a previous batch of one): an app that waits for each acknowledgement pays the fsync, not the
 * window on top of it. Batches still form by themselves under load: a commit blocks the event loop
 * for its fsync, and what arrives meanwhile is read in the next turn, together.
 */
export class GroupCommit<M> {
  private pending: PendingCall<M>[] = [];
  private pendingMessages = 0;
  private cancelIdle: (() => void) | undefined;
  private cancelWindow: (() => void) | undefined;
  private commitQueued = false;
  private lastBatchCalls = 0;
  private readonly windowMs: number;
  private readonly maxBatch: number;
  private readonly timers: GroupCommitTimers;
  private readonly window: Schedule;

  constructor(private readonly o: GroupCommitOptions<M>) {
    this.windowMs = o.windowMs;
    this.maxBatch = Math.max(1, o.maxBatch);
    this.timers = o.timers ?? realTimers;
    this.window = this.timers.window(this.windowMs);
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
    this.cancelWindow ??= this.window(this.onWindow);
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
    this.lastBatchCalls = batch.length;
    this.o.commit(batch, messages);
  }

  /**
   * Once the enqueues of this event-loop turn are in: commit before the window ends when the batch
   * already has as many calls as the previous one (one, for a lone producer). Fewer calls than last
   * time (producers spread over time) wait for the window and share its commit.
   */
  private readonly onIdle = (): void => {
    this.cancelIdle = undefined;
    // Stryker disable next-line ConditionalExpression: equivalent: flush() returns at once on an empty batch
    if (this.pending.length === 0) return;
    if (this.windowMs === 0 || this.pending.length >= this.lastBatchCalls) this.flush();
  };

  private readonly onWindow = (): void => {
    this.cancelWindow = undefined;
    this.flush();
  };
}
