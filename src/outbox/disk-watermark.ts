import type { Database } from 'better-sqlite3';
import { statSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { fmtBytes } from './limits.js';
import { OutboxError } from './types.js';

/** SQLITE_FULL, or an I/O error that says ENOSPC. */
export function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_FULL' || /ENOSPC|database or disk is full/i.test(errorMessage(err));
}

export function statfsFree(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

export interface DiskWatermarkOptions {
  db: Pick<Database, 'pragma'>;
  /** The database file: the filesystem of its directory is watched, `<path>-wal` is its WAL. */
  path: string;
  clock: Pick<Clock, 'monotonic'>;
  logger: Logger;
  pageSize: number;
  /** Bytes the WAL grows to before SQLite checkpoints it. */
  walBudget: number;
  /** The watermark (default 64 MiB; 0 disables). */
  minFreeBytes?: number;
  /** Re-check free space at most this often (default 5 s) ... */
  checkIntervalMs?: number;
  /** ... or after this many payload bytes were written (default 1 MiB), whichever first. */
  checkEveryBytes?: number;
  /** Free bytes of the filesystem holding `dir` (default: statfs). Tests inject one. */
  freeBytes?: (dir: string) => number;
}

/**
 * The free-disk watermark: below `minFreeBytes` the outbox stops growing (`low`), and leaves that
 * state only with a quarter of the watermark to spare. While low, and whenever the filesystem could
 * not hold twice the WAL's checkpoint size (`tight`), the WAL is truncated after every write so that
 * it cannot run the disk out of space.
 */
export class DiskWatermark {
  readonly dir: string;
  readonly minFreeBytes: number;
  private readonly walPath: string;
  private readonly checkIntervalMs: number;
  private readonly checkEveryBytes: number;
  private readonly freeBytesOf: (dir: string) => number;
  private d = { free: null as number | null, checkedAt: -Infinity, bytesSince: 0, low: false, tight: false };
  private errorLogged = false;

  constructor(private readonly o: DiskWatermarkOptions) {
    this.dir = dirname(o.path);
    this.walPath = `${o.path}-wal`;
    this.minFreeBytes = o.minFreeBytes ?? 64 * 1_048_576;
    this.checkIntervalMs = o.checkIntervalMs ?? 5_000;
    this.checkEveryBytes = o.checkEveryBytes ?? 1_048_576;
    this.freeBytesOf = o.freeBytes ?? statfsFree;
  }

  /** Free bytes at the last reading (null before the first). */
  get free(): number | null {
    return this.d.free;
  }

  /** Below the watermark, counting what was written since the last reading. */
  get low(): boolean {
    if (this.minFreeBytes <= 0) return false;
    const d = this.d;
    return d.low || (d.free !== null && d.free - d.bytesSince < this.minFreeBytes);
  }

  /** `bytes` more are on disk (they count against free space until the next reading). */
  noteWritten(bytes: number): void {
    this.d.bytesSince += bytes;
  }

  /**
   * Re-reads free space when due. What the queue can still grow into is the filesystem's free
   * bytes, plus SQLite's free pages (reused before the file grows), plus the WAL: it is a buffer
   * that a checkpoint rewinds, not data, and counting it as used would make the reading swing by
   * the WAL's size from one check to the next. The WAL does need room to grow to its checkpoint
   * size (wal_autocheckpoint pages, about 4 MiB): when the filesystem cannot give it twice that,
   * the disk is `tight` and the WAL is truncated after every write, as it is while `low`.
   */
  check(): void {
    if (this.minFreeBytes <= 0) return;
    const now = this.o.clock.monotonic();
    const d = this.d;
    if (!d.low && !d.tight && now - d.checkedAt < this.checkIntervalMs && d.bytesSince < this.checkEveryBytes) return;
    let fsFree: number;
    let wal: number;
    let freePages: number;
    try {
      fsFree = this.freeBytesOf(this.dir);
      wal = this.walBytes();
      freePages = this.o.db.pragma('freelist_count', { simple: true }) as number;
    } catch (err) {
      if (!this.errorLogged) this.o.logger.warn({ dir: this.dir, err: errorMessage(err) }, 'outbox: cannot read free disk space; the watermark is not enforced');
      this.errorLogged = true;
      return;
    }
    const free = fsFree + wal + freePages * this.o.pageSize;
    const wasLow = d.low;
    // Hysteresis: a queue held at the watermark reads a little above or below it from one check to
    // the next; it leaves the low state only with a quarter of the watermark (at most 16 MiB) to spare.
    const leaveAt = this.minFreeBytes + Math.min(this.minFreeBytes / 4, 16 * 1_048_576);
    const low = free < this.minFreeBytes || (wasLow && free < leaveAt);
    this.d = { free, checkedAt: now, bytesSince: 0, low, tight: fsFree + wal < 2 * this.o.walBudget };
    if (low && !wasLow) {
      this.o.logger.warn(
        { dir: this.dir, freeBytes: free, minFreeBytes: this.minFreeBytes },
        `disk space low (${fmtBytes(free)} free, watermark ${fmtBytes(this.minFreeBytes)}): the outbox stops growing; new messages are refused unless older ones of a channel whose onLimit.disk is "drop-oldest" can make room`,
      );
    } else if (!low && wasLow) {
      this.o.logger.info({ dir: this.dir, freeBytes: free }, `disk space back above the watermark (${fmtBytes(free)} free): the outbox grows again`);
    }
  }

  /**
   * While disk is low or tight, the WAL is folded back and truncated after every write, so it
   * never holds more than one transaction's pages and cannot run the filesystem out of space.
   */
  afterWrite(): void {
    if (this.d.tight || this.low) this.reclaimWal();
  }

  /** Checkpoints and truncates the WAL; true when it freed something. Never throws. */
  reclaimWal(): boolean {
    const size = this.walBytes();
    try {
      this.o.db.pragma('wal_checkpoint(TRUNCATE)');
    } catch (err) {
      this.o.logger.debug({ err: errorMessage(err) }, 'outbox: WAL checkpoint failed');
      return false;
    }
    this.d.checkedAt = -Infinity;
    return size > 0 && this.walBytes() < size;
  }

  /** A write hit a full disk (`err`): the disk is low until a reading says otherwise. The error for the caller. */
  full(err: unknown, what: string): OutboxError {
    this.d.low = true;
    this.d.checkedAt = -Infinity;
    let free = '';
    try {
      free = `, ${fmtBytes(this.freeBytesOf(this.dir))} free`;
    } catch {
      // the message goes without the number
    }
    const code = (err as { code?: unknown }).code;
    return new OutboxError(
      'OUTBOX_DISK_FULL',
      `${what} failed: the disk holding ${this.dir} is full (${String(code ?? 'ENOSPC')}${free}); the write was rolled back and nothing queued before was lost; it is accepted again once space is freed`,
      { cause: err },
    );
  }

  private walBytes(): number {
    try {
      return statSync(this.walPath).size;
    } catch {
      return 0;
    }
  }
}
