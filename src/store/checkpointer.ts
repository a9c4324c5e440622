import type { Database } from 'better-sqlite3';
import { createRequire } from 'node:module';
import { endianness } from 'node:os';
import { Worker } from 'node:worker_threads';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

/**
 * Checkpoints the database's WAL from a worker thread, so that copying WAL pages back into the
 * database, and the two fsyncs that go with it, never stall the event loop. SQLite's automatic
 * checkpoint runs inside whichever COMMIT pushes the WAL past 1000 pages: about a third of the CPU
 * of acknowledging a drained batch here, and on an SD card tens of milliseconds of a blocked agent.
 *
 * The worker has its own connection to the file and sleeps on a shared word. Every `pollMs` (up to
 * `idlePollMs` while the WAL does not move) it reads how many WAL frames are not yet in the
 * database (the wal-index header in the `-shm` file, https://www.sqlite.org/walformat.html: mxFrame
 * at byte 16, nBackfill at byte 96, host byte order)
 * and runs `PRAGMA wal_checkpoint(PASSIVE)` once that reaches `thresholdPages`. A passive checkpoint
 * takes no lock that writers or readers wait on. The main connection keeps SQLite's automatic
 * checkpoint as a safety net at `SAFETY_FACTOR` times the threshold (the worker fell behind a burst),
 * and at the threshold itself again should the worker fail.
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
   * finds it unchanged doubles the wait), so an idle agent's worker wakes about once a second
   * instead of ten times. A burst after a quiet spell is seen within this; the main connection's
   * safety net still checkpoints a WAL that grew to SAFETY_FACTOR times the threshold before that.
   */
  idlePollMs?: number;
  logger: Logger;
}

export interface CheckpointerStats {
  running: boolean;
  checkpoints: number;
  /** WAL frames copied into the database by the worker. */
  pagesCopied: number;
  failures: number;
  lastError: string | null;
}

/** The main connection's own automatic checkpoint, while the worker runs, at this many times the threshold. */
export const SAFETY_FACTOR = 4;
const DEFAULT_THRESHOLD_PAGES = 1000;
/** Longest `close` waits for the worker to let go of the database. */
const CLOSE_WAIT_MS = 5_000;

// Slots of the shared Int32Array.
const STOP = 0;
const DONE = 1;
const CHECKPOINTS = 2;
const PAGES = 3;
const FAILURES = 4;

/**
 * The worker, as CommonJS source: it runs from `src/` under the test runner and from `dist/` alike,
 * with better-sqlite3 resolved by the main thread. It never throws out: `DONE` is set on every way out.
 */
const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const { path, sqlite, threshold, pollMs, idlePollMs, little, ctl } = workerData;
const c = new Int32Array(ctl);
let db, shm;
try {
  const Database = require(sqlite);
  db = new Database(path, { fileMustExist: true });
  db.pragma('busy_timeout = 1000');
  const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
  const header = Buffer.alloc(100);
  const read32 = (o) => (little ? header.readUInt32LE(o) : header.readUInt32BE(o));
  // [frames in the WAL, frames of it already in the database]
  const walIndex = () => {
    if (shm === undefined) shm = fs.openSync(path + '-shm', 'r');
    if (fs.readSync(shm, header, 0, 100, 0) < 100) return [0, 0];
    return [read32(16), read32(96)];
  };
  let wait = pollMs;
  let seen = -1;
  while (Atomics.load(c, ${STOP}) === 0) {
    Atomics.wait(c, ${STOP}, 0, wait);
    if (Atomics.load(c, ${STOP}) !== 0) break;
    try {
      const [frames, backfilled] = walIndex();
      // A WAL that did not move is looked at half as often each time, down to idlePollMs; any write brings pollMs back.
      wait = frames === seen ? Math.min(wait * 2, idlePollMs) : pollMs;
      seen = frames;
      if (frames - backfilled < threshold) continue;
      const [r] = checkpoint.all();
      Atomics.add(c, ${CHECKPOINTS}, 1);
      Atomics.add(c, ${PAGES}, Math.max(0, r.checkpointed - backfilled));
    } catch (err) {
      Atomics.add(c, ${FAILURES}, 1);
      parentPort.postMessage({ error: String(err && err.message || err) });
    }
  }
} catch (err) {
  parentPort.postMessage({ fatal: path + ': ' + String(err && err.message || err) });
} finally {
  try { if (shm !== undefined) fs.closeSync(shm); } catch {}
  try { if (db) db.close(); } catch {}
  Atomics.store(c, ${DONE}, 1);
  Atomics.notify(c, ${DONE});
}
`;

export class WalCheckpointer {
  private readonly worker: Worker;
  private readonly ctl = new Int32Array(new SharedArrayBuffer(5 * 4));
  private readonly threshold: number;
  private running = true;
  private lastError: string | null = null;

  /** Starts the worker and moves the main connection's automatic checkpoint to the safety net. */
  constructor(
    private readonly db: Database,
    private readonly opts: CheckpointerOptions,
  ) {
    this.threshold = opts.thresholdPages ?? DEFAULT_THRESHOLD_PAGES;
    db.pragma(`wal_autocheckpoint = ${this.threshold * SAFETY_FACTOR}`);
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      // It allocates almost nothing: small heaps keep the thread's memory to a few MiB.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16, stackSizeMb: 1 },
      workerData: {
        path: opts.path,
        sqlite: createRequire(import.meta.url).resolve('better-sqlite3'),
        threshold: this.threshold,
        pollMs: opts.pollMs ?? 100,
        idlePollMs: Math.max(opts.pollMs ?? 100, opts.idlePollMs ?? 1_600),
        little: endianness() === 'LE',
        ctl: this.ctl.buffer,
      },
    });
    // Never keeps the process alive by itself; close() ends it.
    this.worker.unref();
    this.worker.on('message', (m: { error?: string; fatal?: string }) => {
      this.lastError = m.fatal ?? m.error ?? null;
      if (m.fatal) this.fallBack(`the checkpoint worker could not start: ${m.fatal}`);
      else opts.logger.warn({ err: m.error }, `store: a background WAL checkpoint failed: ${String(m.error)}`);
    });
    this.worker.on('error', (err) => this.fallBack(`the checkpoint worker failed: ${errorMessage(err)}`));
    this.worker.on('exit', () => {
      if (this.running) this.fallBack('the checkpoint worker exited');
    });
  }

  /** WAL frames that start a background checkpoint: what the WAL is expected to grow to. */
  get thresholdPages(): number {
    return this.threshold;
  }

  stats(): CheckpointerStats {
    return {
      running: this.running,
      checkpoints: Atomics.load(this.ctl, CHECKPOINTS),
      pagesCopied: Atomics.load(this.ctl, PAGES),
      failures: Atomics.load(this.ctl, FAILURES),
      lastError: this.lastError,
    };
  }

  /** Stops the worker and waits until it has closed its connection (at most CLOSE_WAIT_MS). */
  close(): void {
    if (!this.running) return;
    this.running = false;
    Atomics.store(this.ctl, STOP, 1);
    Atomics.notify(this.ctl, STOP);
    if (Atomics.wait(this.ctl, DONE, 0, CLOSE_WAIT_MS) === 'timed-out') {
      this.opts.logger.warn(`store: the checkpoint worker did not stop within ${CLOSE_WAIT_MS} ms`);
      void this.worker.terminate();
    }
  }

  /** The worker is gone: SQLite's automatic checkpoint on the main connection takes over. */
  private fallBack(why: string): void {
    if (!this.running) return;
    this.running = false;
    this.lastError = why;
    Atomics.store(this.ctl, STOP, 1);
    Atomics.notify(this.ctl, STOP);
    try {
      if (this.db.open) this.db.pragma(`wal_autocheckpoint = ${this.threshold}`);
    } catch {
      // The store is closing: nothing to fall back to.
    }
    this.opts.logger.warn(`store: ${why}; checkpointing the WAL inline from now on`);
  }
}
