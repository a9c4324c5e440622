import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

/**
 * Read-only access to the pages of a SQLite database file that may be damaged, following the file
 * format (https://www.sqlite.org/fileformat2.html): the database header, the freelist and the WAL.
 * Never writes, never trusts a number it reads: every page number, count and size is bounded, so
 * garbage yields "unreadable" (null) rather than a throw, a loop or a huge allocation.
 */

export interface DbHeader {
  pageSize: number;
  /** Page size minus the reserved bytes at the end of each page. */
  usable: number;
  pageCount: number;
  firstTrunk: number;
  /** False when the header is not a SQLite header (page 1 overwritten): sizes are then guesses. */
  valid: boolean;
  /** Why pages cannot be scanned (e.g. a text encoding other than UTF-8); undefined when they can. */
  unscannable?: string;
}

const MAGIC = Buffer.from('SQLite format 3\0', 'latin1');
const WAL_HEADER = 32;
const FRAME_HEADER = 24;
/** The agent's page size: the guess when neither the header nor the WAL says. */
const DEFAULT_PAGE_SIZE = 4096;

const validPageSize = (n: number): boolean => n >= 512 && n <= 65536 && (n & (n - 1)) === 0;

function readAt(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done === length ? buf : buf.subarray(0, done);
}

/** The database header, or guesses (`valid: false`) when page 1 no longer holds one. */
export function parseHeader(head: Buffer, fileSize: number, walPageSize: number | undefined): DbHeader {
  if (head.length < 100 || !head.subarray(0, 16).equals(MAGIC)) {
    const pageSize = walPageSize ?? DEFAULT_PAGE_SIZE;
    return { pageSize, usable: pageSize, pageCount: Math.floor(fileSize / pageSize), firstTrunk: 0, valid: false };
  }
  const raw = head.readUInt16BE(16);
  let pageSize = raw === 1 ? 65536 : raw;
  if (!validPageSize(pageSize)) pageSize = walPageSize ?? DEFAULT_PAGE_SIZE;
  const reserved = head[20]!;
  const usable = pageSize - reserved >= 480 ? pageSize - reserved : pageSize;
  const filePages = Math.floor(fileSize / pageSize);
  // The in-header size counts only when the change counter matches "version valid for" (spec 1.3.9).
  const inHeader = head.readUInt32BE(28);
  const sizeValid = inHeader > 0 && head.readUInt32BE(24) === head.readUInt32BE(92);
  const pageCount = sizeValid ? Math.min(inHeader, filePages) : filePages;
  const encoding = head.readUInt32BE(56);
  const header: DbHeader = { pageSize, usable, pageCount, firstTrunk: head.readUInt32BE(32), valid: true };
  if (encoding !== 0 && encoding !== 1) header.unscannable = `the database's text encoding is ${encoding === 2 ? 'UTF-16le' : encoding === 3 ? 'UTF-16be' : `unknown (${encoding})`}, only UTF-8 is read page by page`;
  return header;
}

/** SQLite's WAL checksum over 8-byte chunks, continuing from (s0, s1). */
function walChecksum(buf: Buffer, bigEndian: boolean, s0: number, s1: number): [number, number] {
  let a = s0 >>> 0;
  let b = s1 >>> 0;
  for (let i = 0; i + 8 <= buf.length; i += 8) {
    const x = bigEndian ? buf.readUInt32BE(i) : buf.readUInt32LE(i);
    const y = bigEndian ? buf.readUInt32BE(i + 4) : buf.readUInt32LE(i + 4);
    a = (a + x + b) >>> 0;
    b = (b + y + a) >>> 0;
  }
  return [a, b];
}

export interface WalIndex {
  pageSize: number;
  /** For each page, the file offset of its newest committed frame's data. */
  frames: Map<number, number>;
  /** Database size in pages after the last commit. */
  dbPages: number;
}

/**
 * The committed frames of a WAL: frames are read in order while their salts match the header and
 * their cumulative checksum holds; only frames up to the last commit frame count (a transaction
 * without its commit frame never happened). Null when there is no valid WAL.
 */
export function readWal(path: string): WalIndex | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    const size = fstatSync(fd).size;
    const head = readAt(fd, WAL_HEADER, 0);
    if (head.length < WAL_HEADER) return null;
    const magic = head.readUInt32BE(0);
    if (magic !== 0x377f0682 && magic !== 0x377f0683) return null;
    const bigEndian = magic === 0x377f0683;
    const pageSize = head.readUInt32BE(8);
    if (!validPageSize(pageSize)) return null;
    let [s0, s1] = walChecksum(head.subarray(0, 24), bigEndian, 0, 0);
    if (s0 !== head.readUInt32BE(24) || s1 !== head.readUInt32BE(28)) return null;
    const salt1 = head.readUInt32BE(16);
    const salt2 = head.readUInt32BE(20);
    const frames = new Map<number, number>();
    let pending = new Map<number, number>();
    let dbPages = 0;
    for (let off = WAL_HEADER; off + FRAME_HEADER + pageSize <= size; off += FRAME_HEADER + pageSize) {
      const frame = readAt(fd, FRAME_HEADER + pageSize, off);
      if (frame.readUInt32BE(8) !== salt1 || frame.readUInt32BE(12) !== salt2) break;
      [s0, s1] = walChecksum(frame.subarray(0, 8), bigEndian, s0, s1);
      [s0, s1] = walChecksum(frame.subarray(FRAME_HEADER), bigEndian, s0, s1);
      if (s0 !== frame.readUInt32BE(16) || s1 !== frame.readUInt32BE(20)) break;
      const page = frame.readUInt32BE(0);
      if (page === 0) break;
      pending.set(page, off + FRAME_HEADER);
      const commit = frame.readUInt32BE(4);
      if (commit > 0) {
        for (const [p, at] of pending) frames.set(p, at);
        pending = new Map();
        dbPages = commit;
      }
    }
    return frames.size > 0 ? { pageSize, frames, dbPages } : null;
  } finally {
    closeSync(fd);
  }
}

/**
 * The pages of a database file as SQLite would see them: the newest committed WAL frame of a page
 * wins over the page in the main file. Reads each page with a positioned read (no whole-file buffer).
 */
export class PageFile {
  readonly header: DbHeader;
  private readonly fd: number;
  private readonly fileSize: number;
  private readonly wal: WalIndex | null;
  private readonly walFd: number | null;

  private constructor(fd: number, walPath: string) {
    this.fd = fd;
    this.fileSize = fstatSync(fd).size;
    this.wal = readWal(walPath);
    let walFd: number | null = null;
    if (this.wal) {
      try {
        walFd = openSync(walPath, 'r');
      } catch {
        walFd = null;
      }
    }
    this.walFd = walFd;
    const walPage1 = this.walPage(1);
    const head = walPage1 ?? readAt(fd, 100, 0);
    const header = parseHeader(head, this.fileSize, this.wal?.pageSize);
    // A WAL of another page size belongs to another database: ignore it.
    if (this.wal && this.wal.pageSize !== header.pageSize) this.wal = null;
    // readWal returns a WAL only once it has read a commit frame, and a commit frame's size is never 0.
    if (this.wal) header.pageCount = this.wal.dbPages;
    this.header = header;
  }

  static open(path: string): PageFile {
    return new PageFile(openSync(path, 'r'), `${path}-wal`);
  }

  private walPage(n: number): Buffer | null {
    const at = this.wal?.frames.get(n);
    if (at === undefined || this.walFd === null || !this.wal) return null;
    // readWal lists only frames wholly inside the file, so this read is never short.
    return readAt(this.walFd, this.wal.pageSize, at);
  }

  /** Page `n` (1-based), or null when it is out of range or cut short. */
  page(n: number): Buffer | null {
    if (!Number.isInteger(n) || n < 1 || n > this.header.pageCount) return null;
    const fromWal = this.walPage(n);
    if (fromWal) return fromWal;
    const size = this.header.pageSize;
    // A page the header counts but the file cuts short (a truncated file) comes back short: none.
    const buf = readAt(this.fd, size, (n - 1) * size);
    return buf.length === size ? buf : null;
  }

  /**
   * Pages the freelist lists (trunks and leaves). Walked tolerantly: a trunk out of range, seen
   * twice or claiming more leaves than fit ends the walk with what was read so far.
   */
  freePages(): Set<number> {
    const free = new Set<number>();
    const maxLeaves = this.header.usable / 4 - 2;
    let trunk = this.header.valid ? this.header.firstTrunk : 0;
    // Stryker disable next-line EqualityOperator: trunk 0 as >= 0 lets it in, but page(0) is null and ends the walk the same way.
    while (trunk > 0 && !free.has(trunk)) {
      const page = this.page(trunk);
      if (!page) break;
      const count = page.readUInt32BE(4);
      if (count > maxLeaves) break;
      free.add(trunk);
      for (let i = 0; i < count; i++) {
        const leaf = page.readUInt32BE(8 + 4 * i);
        if (leaf >= 1 && leaf <= this.header.pageCount) free.add(leaf);
      }
      trunk = page.readUInt32BE(0);
    }
    return free;
  }

  close(): void {
    closeSync(this.fd);
    if (this.walFd !== null) closeSync(this.walFd);
  }
}
