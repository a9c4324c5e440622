import type { Database } from 'better-sqlite3';
import { createRequire } from 'node:module';
import { endianness } from 'node:os';
import { Worker } from 'node:worker_threads';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { CHECKPOINTS, DONE, FAILURES, IDLE, PAGES, SLOTS, STOP, WORKER_SOURCE, type CheckpointWorkerData } from './checkpoint-worker.js';
import { WalIndexReader } from './wal-index.js';

/**
 * Checkpoints the database's WAL from a worker thread, so that copying WAL pages back into the
 * database, and the two fsyncs that go with it, never stall the event loop. SQLite's automatic
 * checkpoint runs inside whichever COMMIT pushes the WAL past 1000 pages: about a third of the CPU
 * of acknowledging a drained batch here, and on an SD card tens of milliseconds of a blocked agent.
 *
 * The worker (checkpoint-worker.ts) has its own connection to the file and runs only while there is
 * work: the main thread watches the WAL's wal-index header (a 100-byte read every `pollMs`, up to
 * `idlePollMs` while the WAL does not move) and starts the worker once `thresholdPages` frames are
 * not yet in the database; the worker ends by itself after `idleExitMs` without a checkpoint to run.
 * An idle device so keeps no second isolate (about 10 MiB of RSS). A passive checkpoint takes no
 * lock that writers or readers wait on. The main connection keeps SQLite's automatic checkpoint as a
 * safety net at `SAFETY_FACTOR` times the threshold (a burst outran the worker, or its start), and at
 * the threshold itself should the worker fail.
 *
 * `close` stops the worker and waits (synchronously, a few ms) until it has closed its connection,
 * so the store can then fold the WAL back and close cleanly.
 */

export interface CheckpointerOptions {
  /** The database file (its WAL is `<path>-wal`, the wal-index `<path>-shm`). */
  path: string;
  /** Frames in the WAL not yet in the database that start a checkpoint. Default 1000 (SQLite's own). */
  thresholdPages?: number;
  /** Default 100 ms: how often a WAL that is being written is looked at. */
  pollMs?: number;
  /**
   * Default 1,600 ms: the longest wait between looks at a WAL that stopped moving (each look that
   * finds it unchanged doubles the wait). A burst after a quiet spell is seen within this; the main
   * connection's safety net still checkpoints a WAL that grew to SAFETY_FACTOR times the threshold.
   */
  idlePollMs?: number;
  /** Default 30 s: a worker that had no checkpoint to run for this long ends (a new one starts when needed). */
  idleExitMs?: number;
  logger: Logger;
}

/** watching: no worker, the WAL is looked at; running: a worker is up; failed: checkpoints are inline for good. */
export type CheckpointerState = 'watching' | 'running' | 'failed' | 'closed';

export interface CheckpointerStats {
  state: CheckpointerState;
  /** Workers started so far. */
  starts: number;
  checkpoints: number;
  /** WAL frames copied into the database by the workers. */
  pagesCopied: number;
  failures: number;
  lastError: string | null;
}

/** The main connection's own automatic checkpoint, while the worker runs, at this many times the threshold. */
export const SAFETY_FACTOR = 4;
const DEFAULT_THRESHOLD_PAGES = 1000;
/** Longest `close` waits for the worker to let go of the database. */
const CLOSE_WAIT_MS = 5_000;

export class WalCheckpointer {
  private worker: Worker | undefined;
  // Counters add up over every worker; STOP, DONE and IDLE are reset for each.
  private readonly ctl = new Int32Array(new SharedArrayBuffer(SLOTS * 4));
  private readonly threshold: number;
  private readonly pollMs: number;
  private readonly idlePollMs: number;
  private readonly walIndex: WalIndexReader;
  private state: CheckpointerState = 'watching';
  private starts = 0;
  private lastError: string | null = null;
  private timer: NodeJS.Timeout | undefined;
  private wait: number;
  private seen = -1;

  /** Moves the main connection's automatic checkpoint to the safety net and starts watching the WAL. */
  constructor(
    private readonly db: Database,
    private readonly opts: CheckpointerOptions,
  ) {
    this.threshold = opts.thresholdPages ?? DEFAULT_THRESHOLD_PAGES;
    this.pollMs = opts.pollMs ?? 100;
    this.idlePollMs = Math.max(this.pollMs, opts.idlePollMs ?? 1_600);
    this.wait = this.pollMs;
    this.walIndex = new WalIndexReader(`${opts.path}-shm`);
    db.pragma(`wal_autocheckpoint = ${this.threshold * SAFETY_FACTOR}`);
    this.look();
  }

  /** WAL frames that start a background checkpoint: what the WAL is expected to grow to. */
  get thresholdPages(): number {
    return this.threshold;
  }

  stats(): CheckpointerStats {
    return {
      state: this.state,
      starts: this.starts,
      checkpoints: Atomics.load(this.ctl, CHECKPOINTS),
      pagesCopied: Atomics.load(this.ctl, PAGES),
      failures: Atomics.load(this.ctl, FAILURES),
      lastError: this.lastError,
    };
  }

  /** Stops the worker and waits until it has closed its connection (at most CLOSE_WAIT_MS). */
  close(): void {
    // A second close finds nothing left to stop.
    this.state = 'closed';
    this.stopWorker();
  }

  /** One look at the WAL from the main thread: starts the worker when a checkpoint is due. */
  private look(): void {
    this.timer = undefined;
    let pending: number;
    try {
      const { frames, backfilled } = this.walIndex.pending();
      this.wait = frames === this.seen ? Math.min(this.wait * 2, this.idlePollMs) : this.pollMs;
      this.seen = frames;
      pending = frames - backfilled;
    } catch (err) {
      this.fallBack(`the WAL index could not be read: ${errorMessage(err)}`);
      return;
    }
    if (pending >= this.threshold) this.startWorker();
    // Never keeps the process alive by itself.
    else this.timer = setTimeout(() => this.look(), this.wait).unref();
  }

  private startWorker(): void {
    for (const slot of [STOP, DONE, IDLE]) Atomics.store(this.ctl, slot, 0);
    this.state = 'running';
    this.starts++;
    const data: CheckpointWorkerData = {
      path: this.opts.path,
      sqlite: createRequire(import.meta.url).resolve('better-sqlite3'),
      threshold: this.threshold,
      pollMs: this.pollMs,
      idlePollMs: this.idlePollMs,
      idleExitMs: this.opts.idleExitMs ?? 30_000,
      little: endianness() === 'LE',
      ctl: this.ctl.buffer as SharedArrayBuffer,
    };
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      // It allocates almost nothing: small heaps keep the thread's memory to a few MiB.
      // Stryker disable next-line ObjectLiteral: memory bounds only; nothing a test can see.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16, stackSizeMb: 1 },
      workerData: data,
    });
    this.worker = worker;
    // Never keeps the process alive by itself; close() ends it.
    worker.unref();
    worker.on('message', (m: { error?: string; fatal?: string }) => {
      this.lastError = m.fatal ?? m.error ?? null;
      if (m.fatal) this.fallBack(`the checkpoint worker could not start: ${m.fatal}`);
      else this.opts.logger.warn({ err: m.error }, `store: a background WAL checkpoint failed: ${String(m.error)}`);
    });
    worker.on('error', (err) => this.fallBack(`the checkpoint worker failed: ${errorMessage(err)}`));
    // Only one worker at a time: a new one starts from a look, after this one's exit.
    worker.on('exit', () => this.onExit());
  }

  private onExit(): void {
    this.worker = undefined;
    if (this.state !== 'running') return;
    if (Atomics.load(this.ctl, IDLE) !== 1) {
      this.fallBack('the checkpoint worker exited');
      return;
    }
    // Ended for want of work: watch the WAL again from the main thread.
    this.state = 'watching';
    this.wait = this.pollMs;
    this.look();
  }

  /** Ends the watching and tells a worker, if any, to stop; does not wait for it. */
  private halt(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.walIndex.close();
    Atomics.store(this.ctl, STOP, 1);
    Atomics.notify(this.ctl, STOP);
  }

  private stopWorker(): void {
    this.halt();
    const worker = this.worker;
    if (!worker) return;
    if (Atomics.wait(this.ctl, DONE, 0, CLOSE_WAIT_MS) === 'timed-out') {
      this.opts.logger.warn(`store: the checkpoint worker did not stop within ${CLOSE_WAIT_MS} ms`);
      void worker.terminate();
    }
  }

  /** Background checkpoints are over: SQLite's automatic checkpoint on the main connection takes over. */
  private fallBack(why: string): void {
    if (this.state === 'failed' || this.state === 'closed') return;
    this.state = 'failed';
    this.lastError = why;
    // Stops the worker without waiting: it may be the one failing.
    this.halt();
    try {
      this.db.pragma(`wal_autocheckpoint = ${this.threshold}`);
    } catch {
      // The store is closing: nothing to fall back to.
    }
    this.opts.logger.warn(`store: ${why}; checkpointing the WAL inline from now on`);
  }
}
