import BetterSqlite3 from 'better-sqlite3';
import { closeSync, copyFileSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PageFile, parseHeader, readWal } from '../../src/store/page-file.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The damaged-file reader's own contract: what it makes of each header field, of a WAL frame by
 * frame, of a page number out of range and of a freelist that lies. Every answer is a value, never a throw.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

/** A real database file: `rows` rows of ~300 bytes in table t, the rows above `keep` deleted (freelist pages). */
function makeDb(path: string, opts: { pageSize?: number; rows?: number; keep?: number } = {}): { pageCount: number; freelist: number } {
  const db = new BetterSqlite3(path);
  db.pragma(`page_size = ${opts.pageSize ?? 4096}`);
  db.pragma('secure_delete = ON');
  db.exec('CREATE TABLE t (x TEXT)');
  const insert = db.prepare('INSERT INTO t VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < (opts.rows ?? 10); i++) insert.run('y'.repeat(300));
  })();
  if (opts.keep !== undefined) db.prepare('DELETE FROM t WHERE rowid > ?').run(opts.keep);
  const pageCount = db.pragma('page_count', { simple: true }) as number;
  const freelist = db.pragma('freelist_count', { simple: true }) as number;
  db.close();
  return { pageCount, freelist };
}

/** The first 100 bytes of a real database, with `edit` applied. */
function realHead(edit: (h: Buffer) => void = () => undefined): Buffer {
  const path = join(dirs.make(), 'h.db');
  makeDb(path);
  const h = Buffer.from(readFileSync(path).subarray(0, 100));
  edit(h);
  return h;
}

function patch(path: string, at: number, bytes: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, at);
  closeSync(fd);
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};

const openFds = (): number => readdirSync('/proc/self/fd').length;

describe('parseHeader', () => {
  it('reads page size, usable size, page count and first freelist trunk from a real header', () => {
    const h = realHead((b) => b.writeUInt32BE(7, 32));
    expect(parseHeader(h, 4096 * 2, undefined)).toEqual({ pageSize: 4096, usable: 4096, pageCount: 2, firstTrunk: 7, valid: true });
  });

  it('reads page size 1 as 65536, and falls back to the WAL page size (or 4096) when the size is not a power of two in 512..65536', () => {
    expect(parseHeader(realHead((b) => b.writeUInt16BE(1, 16)), 65536 * 3, undefined)).toMatchObject({ pageSize: 65536, usable: 65536, valid: true });
    for (const bad of [256, 1000, 0]) {
      expect(parseHeader(realHead((b) => b.writeUInt16BE(bad, 16)), 8192, 1024).pageSize).toBe(1024);
      expect(parseHeader(realHead((b) => b.writeUInt16BE(bad, 16)), 8192, undefined).pageSize).toBe(4096);
    }
    expect(parseHeader(realHead((b) => b.writeUInt16BE(512, 16)), 8192, undefined).pageSize).toBe(512);
  });

  it('subtracts the reserved bytes from the usable size unless that leaves fewer than 480 bytes', () => {
    const reserved = (size: number, r: number): number => parseHeader(realHead((b) => {
      b.writeUInt16BE(size, 16);
      b[20] = r;
    }), size * 4, undefined).usable;
    expect(reserved(4096, 32)).toBe(4064);
    expect(reserved(512, 32)).toBe(480);
    expect(reserved(512, 33)).toBe(512);
  });

  it('trusts the in-header page count only when set and the change counter matches "version valid for"', () => {
    const count = (inHeader: number, counterMatches: boolean, filePages = 10): number => parseHeader(realHead((b) => {
      b.writeUInt32BE(inHeader, 28);
      b.writeUInt32BE(5, 24);
      b.writeUInt32BE(counterMatches ? 5 : 6, 92);
    }), 4096 * filePages, undefined).pageCount;
    expect(count(3, true)).toBe(3);
    expect(count(3, false)).toBe(10);
    expect(count(0, true)).toBe(10);
    // Never more pages than the file holds.
    expect(count(20, true)).toBe(10);
  });

  it('marks a non-UTF-8 database unscannable, naming its encoding', () => {
    const enc = (n: number): string | undefined => parseHeader(realHead((b) => b.writeUInt32BE(n, 56)), 8192, undefined).unscannable;
    expect(enc(0)).toBeUndefined();
    expect(enc(1)).toBeUndefined();
    expect(enc(2)).toContain('UTF-16le');
    expect(enc(3)).toContain('UTF-16be');
    expect(enc(9)).toContain('unknown (9)');
    expect(enc(2)).toContain('only UTF-8 is read page by page');
  });

  it('a page 1 that is no header (wrong magic, or cut short) gives guesses marked invalid', () => {
    const guess = { pageSize: 4096, usable: 4096, pageCount: 3, firstTrunk: 0, valid: false };
    expect(parseHeader(realHead((b) => b.write('Not a database!', 0, 'latin1')), 4096 * 3 + 5, undefined)).toEqual(guess);
    expect(parseHeader(realHead().subarray(0, 99), 4096 * 3, undefined)).toEqual(guess);
    expect(parseHeader(Buffer.alloc(100), 8192, 1024)).toMatchObject({ pageSize: 1024, pageCount: 8, valid: false });
  });
});

interface FrameSpec {
  page: number;
  commit?: number;
  fill?: number;
  salt1?: number;
  salt2?: number;
  /** Break checksum word 0 or 1 of this frame. */
  badSum?: 0 | 1;
}

/** SQLite's WAL checksum (fileformat2 4.1), continuing from `s`. */
function walSum(buf: Buffer, bigEndian: boolean, s: [number, number]): [number, number] {
  let [a, b] = s;
  for (let i = 0; i < buf.length; i += 8) {
    a = (a + (bigEndian ? buf.readUInt32BE(i) : buf.readUInt32LE(i)) + b) >>> 0;
    b = (b + (bigEndian ? buf.readUInt32BE(i + 4) : buf.readUInt32LE(i + 4)) + a) >>> 0;
  }
  return [a, b];
}

/** A WAL written by hand, frame by frame, so each field can be made wrong on its own. */
function buildWal(frames: FrameSpec[], opts: { pageSize?: number; magic?: number; badHeaderSum?: 0 | 1 } = {}): Buffer {
  const pageSize = opts.pageSize ?? 1024;
  const magic = opts.magic ?? 0x377f0682;
  const be = magic === 0x377f0683;
  const head = Buffer.alloc(32);
  head.writeUInt32BE(magic, 0);
  head.writeUInt32BE(3007000, 4);
  head.writeUInt32BE(pageSize, 8);
  head.writeUInt32BE(0x1234, 16);
  head.writeUInt32BE(0x5678, 20);
  let s = walSum(head.subarray(0, 24), be, [0, 0]);
  head.writeUInt32BE(s[0], 24);
  head.writeUInt32BE(s[1], 28);
  if (opts.badHeaderSum !== undefined) head.writeUInt32BE((head.readUInt32BE(24 + 4 * opts.badHeaderSum) ^ 1) >>> 0, 24 + 4 * opts.badHeaderSum);
  const out = [head];
  for (const f of frames) {
    const frame = Buffer.alloc(24 + pageSize, f.fill ?? f.page);
    frame.writeUInt32BE(f.page, 0);
    frame.writeUInt32BE(f.commit ?? 0, 4);
    frame.writeUInt32BE(f.salt1 ?? 0x1234, 8);
    frame.writeUInt32BE(f.salt2 ?? 0x5678, 12);
    const next = walSum(frame.subarray(24), be, walSum(frame.subarray(0, 8), be, s));
    // A frame that fails its check does not advance the chain for the frames after it.
    if (f.badSum === undefined) s = next;
    frame.writeUInt32BE((next[0] ^ (f.badSum === 0 ? 1 : 0)) >>> 0, 16);
    frame.writeUInt32BE((next[1] ^ (f.badSum === 1 ? 1 : 0)) >>> 0, 20);
    out.push(frame);
  }
  return Buffer.concat(out);
}

describe('readWal', () => {
  const wal = (frames: FrameSpec[], opts?: Parameters<typeof buildWal>[1]): ReturnType<typeof readWal> => {
    const path = join(dirs.make(), 'x.db-wal');
    writeFileSync(path, buildWal(frames, opts));
    return readWal(path);
  };
  const pagesOf = (w: ReturnType<typeof readWal>): number[] => [...(w?.frames.keys() ?? [])].sort((a, b) => a - b);

  it('reads committed frames of both checksum byte orders; the newest frame of a page wins', () => {
    for (const magic of [0x377f0682, 0x377f0683]) {
      const w = wal([{ page: 2 }, { page: 3, commit: 3 }, { page: 2, commit: 4 }], { magic });
      expect(pagesOf(w)).toEqual([2, 3]);
      expect(w!.dbPages).toBe(4);
      expect(w!.pageSize).toBe(1024);
      // Page 2's newest frame is the third: header 32, two frames before it, then its 24-byte frame header.
      expect(w!.frames.get(2)).toBe(32 + 2 * (24 + 1024) + 24);
    }
  });

  it('frames after the last commit frame never happened', () => {
    const w = wal([{ page: 2, commit: 2 }, { page: 3 }, { page: 4 }]);
    expect(pagesOf(w)).toEqual([2]);
    expect(w!.dbPages).toBe(2);
    expect(wal([{ page: 2 }, { page: 3 }])).toBeNull();
    expect(wal([])).toBeNull();
  });

  it('a wrong magic, page size or header checksum (either word) means no WAL', () => {
    const frames = [{ page: 2, commit: 2 }];
    expect(wal(frames, { magic: 0x377f0684 })).toBeNull();
    expect(wal(frames, { pageSize: 131072 })).toBeNull();
    expect(wal(frames, { pageSize: 1000 })).toBeNull();
    expect(wal(frames, { badHeaderSum: 0 })).toBeNull();
    expect(wal(frames, { badHeaderSum: 1 })).toBeNull();
    expect(pagesOf(wal(frames, { pageSize: 512 }))).toEqual([2]);
  });

  it('the WAL ends at a frame with another salt (either one), a failed checksum (either word) or page 0', () => {
    const good = { page: 2, commit: 2 };
    for (const bad of [{ salt1: 9 }, { salt2: 9 }, { badSum: 0 as const }, { badSum: 1 as const }, { page: 0 }]) {
      const w = wal([good, { page: 3, commit: 5, ...bad }, { page: 4, commit: 6 }]);
      expect(pagesOf(w)).toEqual([2]);
      expect(w!.dbPages).toBe(2);
    }
  });

  it('a frame cut short at the end of the file is not read', () => {
    const path = join(dirs.make(), 'x.db-wal');
    const whole = buildWal([{ page: 2, commit: 2 }, { page: 3, commit: 3 }]);
    writeFileSync(path, whole.subarray(0, whole.length - 1));
    expect(pagesOf(readWal(path))).toEqual([2]);
    expect(readWal(join(dirs.make(), 'missing-wal'))).toBeNull();
  });

  it('leaves no file open', () => {
    const path = join(dirs.make(), 'x.db-wal');
    writeFileSync(path, buildWal([{ page: 2, commit: 2 }]));
    const before = openFds();
    for (let i = 0; i < 5; i++) readWal(path);
    expect(openFds()).toBe(before);
  });
});

describe('PageFile', () => {
  it('reads pages 1..pageCount, and null for 0, negatives, fractions and pages past the count', () => {
    const path = join(dirs.make(), 'a.db');
    const { pageCount } = makeDb(path, { rows: 40 });
    // A page past the header's count, as a torn extension of the file leaves it.
    writeFileSync(path, Buffer.concat([readFileSync(path), Buffer.alloc(4096, 7)]));
    const file = PageFile.open(path);
    expect(file.header.pageCount).toBe(pageCount);
    expect(file.page(1)!.subarray(0, 16).toString('latin1')).toBe('SQLite format 3\0');
    expect(file.page(pageCount)).toEqual(readFileSync(path).subarray((pageCount - 1) * 4096, pageCount * 4096));
    for (const n of [0, -1, 1.5, pageCount + 1, Number.NaN]) expect(file.page(n)).toBeNull();
    file.close();
  });

  it('a page the WAL counts that is neither in the WAL nor wholly in the file is null; the pages before it are whole', () => {
    const path = join(dirs.make(), 'a.db');
    const { pageCount } = makeDb(path, { rows: 40 });
    const whole = readFileSync(path);
    // The file lost the end of its last page; a committed WAL frame (of page 2) still counts it.
    writeFileSync(path, whole.subarray(0, (pageCount - 1) * 4096 + 100));
    writeFileSync(`${path}-wal`, buildWal([{ page: 2, commit: pageCount }], { pageSize: 4096 }));
    const file = PageFile.open(path);
    expect(file.header.pageCount).toBe(pageCount);
    expect(file.page(pageCount - 1)).toEqual(whole.subarray((pageCount - 2) * 4096, (pageCount - 1) * 4096));
    expect(file.page(pageCount)).toBeNull();
    file.close();
  });

  it('closes the files it opened', () => {
    const path = join(dirs.make(), 'a.db');
    makeDb(path);
    writeFileSync(`${path}-wal`, buildWal([{ page: 2, commit: 2 }], { pageSize: 4096 }));
    const before = openFds();
    for (let i = 0; i < 5; i++) PageFile.open(path).close();
    expect(openFds()).toBe(before);
  });

  it('a committed WAL frame wins over the page in the file, and the WAL sets the page count', () => {
    const dir = dirs.make();
    const live = join(dir, 'live.db');
    makeDb(live, { rows: 5 });
    const db = new BetterSqlite3(live);
    db.pragma('journal_mode = WAL');
    db.pragma('wal_autocheckpoint = 0');
    db.transaction(() => {
      for (let i = 0; i < 200; i++) db.prepare('INSERT INTO t VALUES (?)').run('z'.repeat(300));
    })();
    const path = join(dir, 'copy.db');
    copyFileSync(live, path);
    copyFileSync(`${live}-wal`, `${path}-wal`);
    const pageCount = db.pragma('page_count', { simple: true }) as number;
    db.close();
    const fileOnly = readFileSync(path);
    const file = PageFile.open(path);
    expect(file.header.pageCount).toBe(pageCount);
    expect(pageCount * 4096).toBeGreaterThan(fileOnly.length);
    // The last page exists only in the WAL.
    expect(file.page(pageCount)).not.toBeNull();
    expect(file.page(2)).not.toEqual(fileOnly.subarray(4096, 8192));
    file.close();
  });

  it('ignores a WAL of another page size (it belongs to another database)', () => {
    const path = join(dirs.make(), 'a.db');
    const { pageCount } = makeDb(path);
    writeFileSync(`${path}-wal`, buildWal([{ page: 2, commit: 99, fill: 0xee }], { pageSize: 1024 }));
    const file = PageFile.open(path);
    expect(file.header).toMatchObject({ pageSize: 4096, pageCount });
    expect(file.page(2)).toEqual(readFileSync(path).subarray(4096, 8192));
    file.close();
  });
});

describe('PageFile.freePages', () => {
  /** A 4096-byte database with a freelist; its first trunk's page number. */
  function withFreelist(): { path: string; trunk: number; pageCount: number; freelist: number } {
    const path = join(dirs.make(), 'f.db');
    const { pageCount, freelist } = makeDb(path, { rows: 200, keep: 10 });
    const trunk = readFileSync(path).readUInt32BE(32);
    expect(freelist).toBeGreaterThan(5);
    return { path, trunk, pageCount, freelist };
  }
  const free = (path: string): number[] => {
    const file = PageFile.open(path);
    try {
      return [...file.freePages()].sort((a, b) => a - b);
    } finally {
      file.close();
    }
  };

  it('lists every trunk and leaf SQLite counts, for several page sizes', () => {
    for (const pageSize of [512, 4096, 65536]) {
      const path = join(dirs.make(), `p${pageSize}.db`);
      const { freelist } = makeDb(path, { pageSize, rows: 600, keep: 100 });
      expect(freelist).toBeGreaterThan(0);
      expect(free(path)).toHaveLength(freelist);
    }
  });

  it('keeps leaf numbers 1..pageCount only, and reads no slot past the trunk count', () => {
    const { path, trunk, pageCount } = withFreelist();
    const page = readFileSync(path).subarray((trunk - 1) * 4096, trunk * 4096);
    expect(page.readUInt32BE(0)).toBe(0);
    patch(path, (trunk - 1) * 4096 + 4, Buffer.concat([u32(4), u32(0), u32(1), u32(pageCount), u32(pageCount + 1), u32(2)]));
    expect(free(path)).toEqual([1, pageCount, trunk].sort((a, b) => a - b));
  });

  it('a trunk claiming more leaves than fit on a page ends the walk before it; the most that fit is read', () => {
    const { path, trunk } = withFreelist();
    const maxLeaves = 4096 / 4 - 2;
    patch(path, (trunk - 1) * 4096 + 4, u32(maxLeaves + 1));
    expect(free(path)).toEqual([]);
    patch(path, (trunk - 1) * 4096 + 4, u32(0xffffffff));
    expect(free(path)).toEqual([]);
    patch(path, (trunk - 1) * 4096 + 4, u32(maxLeaves));
    expect(free(path)).toContain(trunk);
  });

  it('a trunk chain that loops back or points out of range ends with what was read', () => {
    const { path, trunk, pageCount, freelist } = withFreelist();
    const listed = free(path);
    expect(listed).toHaveLength(freelist);
    patch(path, (trunk - 1) * 4096, u32(trunk));
    expect(free(path)).toEqual(listed);
    patch(path, (trunk - 1) * 4096, u32(pageCount + 50));
    expect(free(path)).toEqual(listed);
  });

  it('an invalid header has no freelist', () => {
    const { path } = withFreelist();
    patch(path, 0, Buffer.from('garbage garbage!'));
    expect(free(path)).toEqual([]);
  });
});
