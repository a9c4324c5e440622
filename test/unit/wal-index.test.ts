import { readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { WalIndexReader } from '../../src/store/wal-index.js';
import { tempDirs } from '../helpers/tmp.js';

/** The wal-index header reader the checkpointer polls (src/store/wal-index.ts), on files the test writes. */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function header(frames: number, backfilled: number, length = 100): Buffer {
  const h = Buffer.alloc(length);
  if (length >= 20) h.writeUInt32LE(frames, 16);
  if (length >= 100) h.writeUInt32LE(backfilled, 96);
  return h;
}

/** Descriptors of this process open on `path`. */
function openOn(path: string): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false;
    }
  }).length;
}

it('reads mxFrame and nBackfill in the host byte order, each time afresh', () => {
  const shm = join(dirs.make(), 'db-shm');
  writeFileSync(shm, header(1234, 1000));
  const r = new WalIndexReader(shm);
  expect(r.pending()).toEqual({ frames: 1234, backfilled: 1000 });
  writeFileSync(shm, header(70_000, 65_536));
  expect(r.pending()).toEqual({ frames: 70_000, backfilled: 65_536 });
  r.close();
});

it('gives zeros while the header is not written yet (a file shorter than 100 bytes)', () => {
  const shm = join(dirs.make(), 'db-shm');
  writeFileSync(shm, header(5, 0, 60));
  const r = new WalIndexReader(shm);
  expect(r.pending()).toEqual({ frames: 0, backfilled: 0 });
  r.close();
});

it('throws what the open throws for a missing file', () => {
  const r = new WalIndexReader(join(dirs.make(), 'gone-shm'));
  expect(() => r.pending()).toThrow(/ENOENT.*gone-shm/);
});

it('holds one descriptor while used and none after close, which may be called twice; a read after it opens again', () => {
  const shm = join(dirs.make(), 'db-shm');
  writeFileSync(shm, header(1, 0));
  const r = new WalIndexReader(shm);
  expect(openOn(shm)).toBe(0);
  r.pending();
  r.pending();
  expect(openOn(shm)).toBe(1);
  r.close();
  expect(openOn(shm)).toBe(0);
  r.close();
  expect(r.pending()).toEqual({ frames: 1, backfilled: 0 });
  expect(openOn(shm)).toBe(1);
  r.close();
});
