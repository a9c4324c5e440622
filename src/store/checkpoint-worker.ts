/**
 * The checkpoint worker of `WalCheckpointer`, as CommonJS source: it runs from `src/` under the test
 * runner and from `dist/` alike, with better-sqlite3 resolved by the main thread. It never throws
 * out: `DONE` is set on every way out, after its connection is closed.
 *
 * It sleeps on a shared word. Every `pollMs` (up to `idlePollMs` while the WAL does not move) it
 * reads the wal-index header (see wal-index.ts: mxFrame at byte 16, nBackfill at byte 96) and runs
 * `PRAGMA wal_checkpoint(PASSIVE)` once the frames not yet in the database reach `threshold`. After
 * `idleExitMs` without a checkpoint to run it sets `IDLE` and ends: the main thread watches the WAL
 * again and starts a new worker when it is needed (an idle device does not keep a thread's isolate).
 */

// Slots of the shared Int32Array.
export const STOP = 0;
export const DONE = 1;
export const CHECKPOINTS = 2;
export const PAGES = 3;
export const FAILURES = 4;
/** Set by a worker that ended because it had nothing to do (not a failure). */
export const IDLE = 5;
export const SLOTS = 6;

export interface CheckpointWorkerData {
  path: string;
  sqlite: string;
  threshold: number;
  pollMs: number;
  idlePollMs: number;
  idleExitMs: number;
  little: boolean;
  ctl: SharedArrayBuffer;
}

export const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const { path, sqlite, threshold, pollMs, idlePollMs, idleExitMs, little, ctl } = workerData;
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
  let lastWork = Date.now();
  while (Atomics.load(c, ${STOP}) === 0) {
    Atomics.wait(c, ${STOP}, 0, wait);
    if (Atomics.load(c, ${STOP}) !== 0) break;
    try {
      const [frames, backfilled] = walIndex();
      // A WAL that did not move is looked at half as often each time, down to idlePollMs; any write brings pollMs back.
      wait = frames === seen ? Math.min(wait * 2, idlePollMs) : pollMs;
      seen = frames;
      if (frames - backfilled < threshold) {
        if (Date.now() - lastWork >= idleExitMs) {
          Atomics.store(c, ${IDLE}, 1);
          break;
        }
        continue;
      }
      const [r] = checkpoint.all();
      lastWork = Date.now();
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
