import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DiskWatermark, isDiskFull } from '../../src/outbox/disk-watermark.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/** The disk watermark alone, on a fake filesystem reading and a fake database: when it reads, low and tight, hysteresis, the WAL. */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

const MiB = 1_048_576;

function watermark(o: { minFreeBytes?: number; freelist?: number; walBudget?: number; checkpointFails?: boolean } = {}) {
  const dir = dirs.make();
  const path = join(dir, 'agent.db');
  const clock = new FakeClock();
  const { logger, records } = captureLogger();
  const logged = async (re: RegExp): Promise<unknown[]> => {
    await new Promise((r) => setImmediate(r));
    return records().filter((l) => re.test(String(l.msg))).map((l) => l.level);
  };
  const fs = { free: 100 * MiB, reads: 0, fail: false };
  const pragmas: string[] = [];
  const db = {
    pragma: (sql: string) => {
      pragmas.push(sql);
      if (sql === 'wal_checkpoint(TRUNCATE)' && o.checkpointFails) throw new Error('database table is locked');
      if (sql === 'wal_checkpoint(TRUNCATE)') writeFileSync(`${path}-wal`, '');
      return o.freelist ?? 0;
    },
  } as never;
  const disk = new DiskWatermark({
    db,
    path,
    clock,
    logger,
    pageSize: 4096,
    walBudget: o.walBudget ?? MiB,
    minFreeBytes: o.minFreeBytes ?? 64 * MiB,
    checkIntervalMs: 5_000,
    checkEveryBytes: MiB,
    freeBytes: (d) => {
      expect(d).toBe(dir);
      fs.reads++;
      if (fs.fail) throw new Error('EIO');
      return fs.free;
    },
  });
  return { disk, fs, clock, logged, pragmas, path, dir, records };
}

describe('disk watermark', () => {
  it('reads free space at most every interval or every MiB written, whichever first', async () => {
    const { disk, fs, clock } = watermark();
    disk.check();
    expect(fs.reads).toBe(1);
    expect(disk.free).toBe(100 * MiB);
    disk.check();
    expect(fs.reads).toBe(1);
    disk.noteWritten(MiB);
    disk.check();
    expect(fs.reads).toBe(2);
    await clock.advance(5_000);
    disk.check();
    expect(fs.reads).toBe(3);
  });

  it('counts SQLite free pages and the WAL as room, and what was written since the reading as used', () => {
    const { disk, fs, path } = watermark({ freelist: 10 });
    writeFileSync(`${path}-wal`, Buffer.alloc(1000));
    fs.free = 64 * MiB - 2000;
    disk.check();
    expect(disk.free).toBe(64 * MiB - 1000 + 10 * 4096);
    expect(disk.low).toBe(false);
    disk.noteWritten(50_000);
    expect(disk.low).toBe(true);
  });

  it('goes low under the watermark and back only with a quarter of it to spare, logging each change once', async () => {
    const { disk, fs, clock, logged } = watermark({ minFreeBytes: 8 * MiB });
    fs.free = 7 * MiB;
    disk.check();
    expect(disk.low).toBe(true);
    fs.free = 9 * MiB; // above, but not by a quarter: still low (read at every check while low)
    disk.check();
    expect(disk.low).toBe(true);
    fs.free = 10 * MiB;
    disk.check();
    expect(disk.low).toBe(false);
    await clock.advance(5_000);
    disk.check();
    expect(await logged(/disk space/)).toEqual([40, 30]);
  });

  it('is never low with a watermark of 0, and warns once when it cannot read', async () => {
    const off = watermark({ minFreeBytes: 0 });
    off.fs.free = 0;
    off.disk.check();
    expect(off.fs.reads).toBe(0);
    expect(off.disk.low).toBe(false);
    const { disk, fs, logged } = watermark();
    fs.fail = true;
    disk.check();
    disk.check();
    expect(fs.reads).toBe(2);
    expect(await logged(/cannot read free disk space/)).toHaveLength(1);
    expect(disk.low).toBe(false);
  });

  it('truncates the WAL after each write while low or tight, and says whether a reclaim freed anything', () => {
    const { disk, pragmas, path } = watermark({ walBudget: 60 * MiB });
    disk.check(); // 100 MiB free: not low, but less than twice the WAL budget: tight
    disk.afterWrite();
    expect(pragmas.filter((p) => p === 'wal_checkpoint(TRUNCATE)')).toHaveLength(1);
    writeFileSync(`${path}-wal`, Buffer.alloc(100));
    expect(disk.reclaimWal()).toBe(true);
    expect(disk.reclaimWal()).toBe(false); // nothing left to free
    const roomy = watermark();
    roomy.fs.free = 1_000 * MiB;
    roomy.disk.check();
    roomy.disk.afterWrite();
    expect(roomy.pragmas).not.toContain('wal_checkpoint(TRUNCATE)');
  });

  it('a checkpoint that fails frees nothing, says why at debug level, and does not force a new reading', () => {
    const { disk, fs, path, records } = watermark({ checkpointFails: true });
    disk.check();
    writeFileSync(`${path}-wal`, Buffer.alloc(100));
    expect(disk.reclaimWal()).toBe(false);
    expect(records().filter((l) => l.msg === 'outbox: WAL checkpoint failed')).toEqual([expect.objectContaining({ level: 20, err: 'database table is locked' })]);
    disk.check();
    expect(fs.reads).toBe(1);
  });

  it("knows a full disk by SQLite's code whatever the message says", () => {
    expect(isDiskFull(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_FULL' }))).toBe(true);
    expect(isDiskFull(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR' }))).toBe(false);
  });

  it('turns a full-disk write error into OUTBOX_DISK_FULL and reads again at the next check', () => {
    const { disk, fs, dir } = watermark();
    disk.check();
    const err = Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    expect(isDiskFull(err)).toBe(true);
    expect(isDiskFull(new Error('write ENOSPC'))).toBe(true);
    expect(isDiskFull(new Error('busy'))).toBe(false);
    const e = disk.full(err, 'writing 3 message(s)');
    expect(e.code).toBe('OUTBOX_DISK_FULL');
    expect(e.message).toContain(`writing 3 message(s) failed: the disk holding ${dir} is full (SQLITE_FULL, 100.0 MiB free)`);
    expect(disk.low).toBe(true);
    disk.check();
    expect(fs.reads).toBe(3);
    expect(disk.low).toBe(false);
  });
});
