import * as fs from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { moveAside, pendingMarkerPath, writePendingSalvage } from '../../src/store/quarantine.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * A power cut must leave the marker whole or absent, and a move aside done or not done: the marker's
 * bytes are fsynced before its rename, and the directory after every rename. Seen through the fsyncs.
 */

const synced: { path: string; dir: boolean }[] = [];
vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof fs>();
  return {
    ...real,
    fsyncSync: (fd: number) => {
      synced.push({ path: real.readlinkSync(`/proc/self/fd/${fd}`), dir: real.fstatSync(fd).isDirectory() });
      real.fsyncSync(fd);
    },
  };
});

const dirs = tempDirs();
afterEach(() => {
  dirs.cleanup();
  synced.length = 0;
});

describe('quarantine durability', () => {
  it('the marker: its bytes are synced before the rename, the directory after it', () => {
    const dir = fs.realpathSync(dirs.make());
    const path = join(dir, 'agent.db');
    writePendingSalvage(path, { reason: 'r', at: '2026-12-05T04:00:00.000Z' });
    expect(synced).toEqual([
      { path: `${pendingMarkerPath(path)}.tmp`, dir: false },
      { path: dir, dir: true },
    ]);
  });

  it('a move aside syncs the directory that holds the renamed files', () => {
    const dir = fs.realpathSync(dirs.make());
    const path = join(dir, 'agent.db');
    fs.writeFileSync(path, 'x');
    moveAside(path, Date.UTC(2026, 11, 5));
    expect(synced).toEqual([{ path: dir, dir: true }]);
  });
});
