import { closeSync, fstatSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * An append-only log file with a size cap: when the next write would take the file past `maxBytes`
 * it becomes `<path>.1` (and `.1` becomes `.2`, up to `keep` old files; the oldest is deleted), and a
 * new file starts. At most `maxBytes * (keep + 1)` bytes on disk, whatever a chatty service prints.
 * Writes are synchronous: chunks are small, and a log must not buffer without bound in memory.
 */
export class RotatingLog {
  private fd: number | undefined;
  private size = 0;

  constructor(
    readonly path: string,
    readonly maxBytes: number,
    readonly keep: number,
  ) {
    if (!Number.isInteger(maxBytes) || maxBytes < 1) throw new RangeError(`log maxBytes: expected a positive integer, got ${maxBytes}`);
    if (!Number.isInteger(keep) || keep < 0) throw new RangeError(`log keep: expected an integer >= 0, got ${keep}`);
  }

  write(chunk: Buffer | string): void {
    let buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (buf.length === 0) return;
    // A single chunk larger than the cap keeps only its end (the most recent output).
    if (buf.length > this.maxBytes) buf = buf.subarray(buf.length - this.maxBytes);
    this.open();
    if (this.size + buf.length > this.maxBytes) this.rotate();
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd as number, buf, off, buf.length - off);
    this.size += buf.length;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private open(): void {
    if (this.fd !== undefined) return;
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o750 });
    this.fd = openSync(this.path, 'a', 0o640);
    this.size = fstatSync(this.fd).size;
  }

  private rotate(): void {
    this.close();
    if (this.keep === 0) rmSync(this.path, { force: true });
    else {
      rmSync(`${this.path}.${this.keep}`, { force: true });
      for (let i = this.keep - 1; i >= 1; i--) renameIfExists(`${this.path}.${i}`, `${this.path}.${i + 1}`);
      renameIfExists(this.path, `${this.path}.1`);
    }
    this.open();
  }
}

function renameIfExists(from: string, to: string): void {
  try {
    renameSync(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
