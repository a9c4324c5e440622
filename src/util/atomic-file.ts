import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { errorMessage } from './errors.js';

/**
 * Replaces `path` with `data` so a crash or power cut leaves the old content or the new, never a
 * torn or empty file: write a temp file (mode 0600), fsync it, rename it over, fsync the directory.
 */
export function writeFileAtomic(path: string, data: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    // 'wx': never through a link or a file someone left under that name.
    rmSync(tmp, { force: true });
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/**
 * Reads a copy kept outside the database (written by `writeFileAtomic`) as JSON, or says why it cannot be
 * used: missing, unreadable or not JSON. The caller checks the shape.
 */
export function readJsonCopy(path: string): { ok: true; value: unknown } | { ok: false; why: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return { ok: false, why: (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'there is no copy' : `the copy cannot be read: ${errorMessage(err)}` };
  }
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    return { ok: false, why: 'the copy is not JSON' };
  }
}
