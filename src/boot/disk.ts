import { closeSync, existsSync, openSync, renameSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

export const RESERVE_FILE = 'disk-reserve';

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
  /** Free bytes of the filesystem holding the data dir (default: statfs). Tests inject one. */
  freeBytes?: (dir: string) => number;
}

function statfsFree(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

/**
 * The data dir's disk, as the agent sees it, and a reserve that makes a start on a full disk work.
 * Opening the database in WAL mode needs a few pages (its shared-memory index, the WAL): a file of
 * `reserveBytes` zeros is kept in the data dir while there is room, deleted at start when the disk
 * is full so the start has room, and made again once twice its size is free. `full`: less free than
 * the reserve; `low`: under the outbox's watermark.
 */
export class DataDirDisk {
  private readonly path: string;
  private readonly freeOf: (dir: string) => number;
  private last: { free: number | null; state: DiskState } = { free: null, state: 'ok' };

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
    return this.release(`only ${free} bytes free`);
  }

  /** Deletes the reserve (after a write failed for want of space, or at start). */
  release(why: string): boolean {
    if (!existsSync(this.path)) return false;
    try {
      rmSync(this.path, { force: true });
    } catch (err) {
      this.opts.logger.warn({ file: this.path, err: errorMessage(err) }, 'could not delete the disk reserve');
      return false;
    }
    this.opts.logger.warn({ dataDir: this.opts.dataDir, reserveBytes: this.opts.reserveBytes }, `disk full where ${this.opts.dataDir} lives (${why}): deleted the ${this.opts.reserveBytes}-byte reserve to start`);
    return true;
  }

  /** Re-reads free space, makes the reserve again when there is room, and logs state changes. */
  check(): DiskView {
    let free = this.free();
    const { reserveBytes, minFreeBytes, dataDir, logger } = this.opts;
    if (free !== null && reserveBytes > 0 && free >= 2 * reserveBytes && !existsSync(this.path) && this.makeReserve()) free = this.free();
    const state: DiskState = free === null ? this.last.state : free < Math.max(reserveBytes, 1) ? 'full' : free < minFreeBytes ? 'low' : 'ok';
    if (state !== this.last.state) {
      const msg = `disk ${state} where ${dataDir} lives: ${free ?? '?'} bytes free (watermark ${minFreeBytes})`;
      if (state === 'ok') logger.info({ dataDir, freeBytes: free, state }, msg);
      else logger.warn({ dataDir, freeBytes: free, state }, msg);
    }
    this.last = { free, state };
    return this.view();
  }

  /** The last check's result (no I/O). */
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
      const fd = openSync(tmp, 'w', 0o600);
      try {
        const chunk = Buffer.alloc(64 * 1024);
        for (let left = this.opts.reserveBytes; left > 0; left -= chunk.length) writeSync(fd, chunk, 0, Math.min(left, chunk.length));
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.path);
      return true;
    } catch (err) {
      rmSync(tmp, { force: true });
      this.opts.logger.debug({ err: errorMessage(err) }, 'could not make the disk reserve yet');
      return false;
    }
  }
}
