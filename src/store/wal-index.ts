import { closeSync, openSync, readSync } from 'node:fs';
import { endianness } from 'node:os';

/**
 * Reads the two counters of a WAL database's wal-index header (the `-shm` file,
 * https://www.sqlite.org/walformat.html): mxFrame at byte 16 (frames in the WAL) and nBackfill at
 * byte 96 (frames of it already copied into the database), in the host's byte order. One 100-byte
 * read of a file that lives in the page cache: cheap enough to poll from the event loop.
 */
export class WalIndexReader {
  private fd: number | undefined;
  private readonly header = Buffer.alloc(100);
  // Stryker disable next-line ConditionalExpression: true is this machine's answer (little-endian); the other order is not testable here.
  private readonly little = endianness() === 'LE';

  constructor(private readonly shmPath: string) {}

  /** WAL frames not yet in the database; 0 while the header is not written yet. Throws what the read throws. */
  pending(): { frames: number; backfilled: number } {
    this.fd ??= openSync(this.shmPath, 'r');
    if (readSync(this.fd, this.header, 0, 100, 0) < 100) return { frames: 0, backfilled: 0 };
    const read32 = (o: number) => (this.little ? this.header.readUInt32LE(o) : this.header.readUInt32BE(o));
    return { frames: read32(16), backfilled: read32(96) };
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      closeSync(this.fd);
    } catch {
      // Already gone: nothing held.
    }
    this.fd = undefined;
  }
}
