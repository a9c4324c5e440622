import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { readPendingSalvage } from '../store/quarantine.js';
import { LOAD_LANES } from './outbox-sql.js';

/** Below this (database and WAL together) the outbox's recovery reads little: no warm-up. */
export const WARM_ABOVE_BYTES = 16 * 1_048_576;

/**
 * Runs the outbox's recovery query (`LOAD_LANES`) on a worker thread, on a read-only connection,
 * and throws the answer away: the pages of the `outbox_lane` index it reads are then in the OS's
 * page cache when the outbox reads them at open. Started while the agent's modules load, it moves a
 * cold start's biggest read with a backlog (about 30 MB for 1M messages, after a power cut) off the
 * path to ready; the recovery itself is unchanged and still reads the database as it is then.
 *
 * Read-only, so it never checkpoints, writes or removes a file (a connection that closes last
 * would otherwise fold the WAL into the database before the start has checked it). Any failure
 * (no file, a WAL that needs recovery, a damaged file) only means no warm-up.
 */
export class CacheWarmer {
  /** Resolves once the warm-up is over (it never fails). */
  readonly done: Promise<void>;
  /** Whether a worker was started. */
  readonly started: boolean;

  constructor(dbPath: string, minBytes = WARM_ABOVE_BYTES) {
    // A file waiting for its salvage is not opened as it is: nothing of it will be read at open.
    this.started = sizeOf(dbPath) + sizeOf(`${dbPath}-wal`) >= minBytes && readPendingSalvage(dbPath) === undefined;
    if (!this.started) {
      this.done = Promise.resolve();
      return;
    }
    const worker = new Worker(SOURCE, {
      eval: true,
      // Stryker disable next-line ObjectLiteral: memory bounds only; nothing a test can see.
      resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16, stackSizeMb: 1 },
      workerData: { path: dbPath, sqlite: createRequire(import.meta.url).resolve('better-sqlite3'), sql: LOAD_LANES },
    });
    worker.unref();
    this.done = new Promise<void>((resolve) => {
      worker.once('exit', () => resolve());
      worker.once('error', () => resolve());
    });
  }
}

function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

const SOURCE = `
const { workerData } = require('node:worker_threads');
const { path, sqlite, sql } = workerData;
let db;
try {
  db = new (require(sqlite))(path, { readonly: true, fileMustExist: true });
  db.prepare(sql).all();
} catch {
  // no warm-up: the start reads what it needs itself
} finally {
  try { if (db) db.close(); } catch {}
}
`;
