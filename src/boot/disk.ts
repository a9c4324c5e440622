import { closeSync, existsSync, openSync, renameSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

export const RESERVE_FILE = 'disk-reserve';

/** Without a reserve, less than this free is full. */
const MIN_FULL_BYTES = 256 * 1024;
const RECHECK_MS = 1_000;

export type DiskState = 'ok' | 'low' | 'full';

export interface DiskView {
  state: DiskState;
  dataDir: string;
  freeBytes: number | null;
  /** The outbox's free-disk watermark (`settings.offline.minFreeDiskBytes`). */
  minFreeBytes: number;
  reserve: { bytes: number; present: boolean };
}

export interface DataDirDiskOptions {
  dataDir: string;
  /** Size of the reserve file; 0: no reserve. */
  reserveBytes: number;
  minFreeBytes: number;
  logger: Logger;
  now: () => number;
  /** Free bytes of the filesystem holding the data dir (default: statfs). Tests inject one. */
  freeBytes?: (dir: string) => number;
}

function statfsFree(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

/**
 * The data dir's disk, as the agent sees it, and a reserve that keeps room for the agent's own writes.
 * Opening the database in WAL mode, acknowledging delivered messages and keeping state all need a few
 * pages: a file of `reserveBytes` zeros is kept in the data dir while there is room, deleted whenever
 * less than its size is free (at start, or when a check finds the disk full), and made again once twice
 * its size is free. While the reserve is gone the disk is `full`: producers are refused (507, no
 * PUBACK) so the room it gave back serves the agent and the drain of its queue, not more telemetry.
 * `low`: under the outbox's watermark.
 */
export class DataDirDisk {
  private readonly path: string;
  private readonly freeOf: (dir: string) => number;
  private last: { free: number | null; state: DiskState; at: number } = { free: null, state: 'ok', at: -Infinity };
  private reserveBroken = false;

  constructor(private readonly opts: DataDirDiskOptions) {
    this.path = join(opts.dataDir, RESERVE_FILE);
    this.freeOf = opts.freeBytes ?? statfsFree;
  }

  private free(): number | null {
    try {
      return this.freeOf(this.opts.dataDir);
    } catch {
      return null;
    }
  }

  /** At start, before anything writes: gives the reserve's room back when the disk has less free. */
  releaseIfFull(): boolean {
    const free = this.free();
    if (free === null || free >= this.opts.reserveBytes || !existsSync(this.path)) return false;
    return this.release(`${free} bytes free`);
  }

  /** Deletes the reserve (the disk is full, or a write at start failed for want of space). */
  release(why: string): boolean {
    if (!existsSync(this.path)) return false;
    try {
      rmSync(this.path, { force: true });
    } catch (err) {
      this.opts.logger.warn({ file: this.path, err: errorMessage(err) }, 'could not delete the disk reserve');
      return false;
    }
    this.opts.logger.warn(
      { dataDir: this.opts.dataDir, reserveBytes: this.opts.reserveBytes },
      `disk full where ${this.opts.dataDir} lives (${why}): deleted the ${this.opts.reserveBytes}-byte reserve so the agent keeps room for its own writes; producers are refused until space returns`,
    );
    return true;
  }

  /** Re-reads free space, releases or makes the reserve, and logs state changes. */
  check(): DiskView {
    const { minFreeBytes, dataDir, logger } = this.opts;
    const reserveBytes = this.reserveBroken ? 0 : this.opts.reserveBytes;
    let free = this.free();
    if (free !== null && reserveBytes > 0) {
      const present = existsSync(this.path);
      if (present && free < reserveBytes && this.release(`${free} bytes free`)) free = this.free();
      else if (!present && free >= 2 * reserveBytes && this.makeReserve()) free = this.free();
    }
    // Read again: making the reserve may just have found it cannot be made.
    const reserve = this.reserveBroken ? 0 : reserveBytes;
    const reserveMissing = reserve > 0 && !existsSync(this.path);
    const state: DiskState =
      free === null ? this.last.state : reserveMissing || free < Math.max(reserve, MIN_FULL_BYTES) ? 'full' : free < minFreeBytes ? 'low' : 'ok';
    if (state !== this.last.state) {
      const msg = `disk ${state} where ${dataDir} lives: ${free ?? '?'} bytes free (watermark ${minFreeBytes}, reserve ${reserveBytes})`;
      if (state === 'ok') logger.info({ dataDir, freeBytes: free, state }, msg);
      else logger.warn({ dataDir, freeBytes: free, state }, msg);
    }
    this.last = { free, state, at: this.opts.now() };
    return this.view();
  }

  /**
   * Why a producer's message must be refused now, or undefined. Reads free space again when the last
   * reading is older than a second, so space that returns is seen without waiting for the loop.
   */
  refusal(): string | undefined {
    if (this.opts.now() - this.last.at >= RECHECK_MS) this.check();
    if (this.last.state !== 'full') return undefined;
    const free = this.last.free === null ? 'unknown' : `${this.last.free} bytes`;
    return `the disk holding the data dir ${this.opts.dataDir} is full (${free} free; the agent keeps ${this.opts.reserveBytes} bytes for its own writes and the drain of its queue): nothing new is queued until space is freed there`;
  }

  /** The last check's result (no I/O but a stat of the reserve). */
  view(): DiskView {
    return {
      state: this.last.state,
      dataDir: this.opts.dataDir,
      freeBytes: this.last.free,
      minFreeBytes: this.opts.minFreeBytes,
      reserve: { bytes: this.opts.reserveBytes, present: existsSync(this.path) },
    };
  }

  /** Zeros, written (not a sparse file): the blocks must really be taken to be given back later. */
  private makeReserve(): boolean {
    // Written under another name and renamed: a half-written reserve never passes for a whole one.
    const tmp = `${this.path}.tmp`;
    try {
      // 'wx': never through a link or a file someone left under that name.
      rmSync(tmp, { force: true });
      const fd = openSync(tmp, 'wx', 0o600);
      try {
        const chunk = Buffer.alloc(64 * 1024);
        for (let left = this.opts.reserveBytes; left > 0; left -= chunk.length) writeSync(fd, chunk, 0, Math.min(left, chunk.length));
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.path);
      return true;
    } catch (err) {
      try {
        rmSync(tmp, { force: true });
      } catch {
        // nothing was made
      }
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOSPC' && code !== 'EDQUOT') {
        // Not for want of space (a read-only or odd filesystem): without a reserve, not "full" forever.
        this.reserveBroken = true;
        this.opts.logger.warn({ file: this.path, err: errorMessage(err) }, `cannot make the disk reserve (${errorMessage(err)}); running without one`);
      }
      return false;
    }
  }
}
