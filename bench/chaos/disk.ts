import { closeSync, openSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Fills the filesystem of `dir` with a file `name` in it until at most `leaveBytes` are free (0: to
 * the last byte); returns its path.
 */
export function fillDisk(dir: string, leaveBytes = 0, name = 'filler'): string {
  const path = join(dir, name);
  // Appends: topping up a filler never frees its blocks first (the agent could take them meanwhile).
  const fd = openSync(path, 'a');
  const chunk = Buffer.alloc(64 * 1024, 1);
  const free = (): number => {
    const s = statfsSync(dir);
    return s.bavail * s.bsize;
  };
  try {
    for (let size = chunk.length; size >= 1; ) {
      if (leaveBytes > 0) {
        const over = free() - leaveBytes;
        if (over <= 0) break;
        size = Math.min(size, over);
      }
      try {
        writeSync(fd, chunk, 0, size);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        size = Math.floor(size / 2);
      }
    }
  } finally {
    closeSync(fd);
  }
  return path;
}
