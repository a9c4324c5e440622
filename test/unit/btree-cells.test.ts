import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  childPages,
  decodeRecord,
  localPayload,
  parseBtreePage,
  readIndexCell,
  readSize,
  readTableLeafCell,
  readVarint,
  type StoredValue,
  TABLE_INTERIOR,
  TABLE_LEAF,
} from '../../src/store/btree-cells.js';
import { memoryPages, rootPage, sqliteFile, type MemoryPages } from '../helpers/sqlite-pages.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The SQLite file format read from untrusted bytes: real files made by SQLite decode to the values
 * stored, and every offset that damage can push out of its page gives "unreadable", never a throw.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const dbPath = (): string => join(dirs.make(), 'cells.db');

/** A varint of a value below 2^14. */
const varint = (n: number): number[] => (n < 128 ? [n] : [0x80 | (n >> 7), n & 0x7f]);
const pattern = (n: number, seed = 0): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

/** Every row of a table, read from its root through interior pages (undamaged file). */
function tableRows(file: MemoryPages, root: number): { rowid: bigint; values: StoredValue[] | null }[] {
  const out: { rowid: bigint; values: StoredValue[] | null }[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    const buf = file.page(p)!;
    const page = parseBtreePage(buf, p, file.header.usable)!;
    if (page.type === TABLE_INTERIOR) stack.push(...childPages(buf, page, file.header.usable).reverse());
    else for (const at of page.cells) {
      const cell = readTableLeafCell(file, buf, at);
      if (cell === null || cell === 'skipped') throw new Error(`unreadable cell on page ${p}`);
      out.push({ rowid: cell.rowid, values: decodeRecord(cell.payload) });
    }
  }
  return out;
}

describe('varints', () => {
  it('decodes one to nine bytes, the ninth contributing all eight bits', () => {
    expect(readVarint(Buffer.from([0x7f]), 0)).toEqual({ value: 127n, length: 1 });
    expect(readVarint(Buffer.from([0x00, 0x81, 0x01]), 1)).toEqual({ value: 129n, length: 2 });
    expect(readVarint(Buffer.alloc(9, 0xff), 0)).toEqual({ value: 2n ** 64n - 1n, length: 9 });
  });

  it('is unreadable when it runs past the end given or the buffer', () => {
    expect(readVarint(Buffer.from([0x81, 0x01]), 0, 1)).toBeNull();
    expect(readVarint(Buffer.from([0x81, 0x81]), 0)).toBeNull();
    expect(readSize(Buffer.from([0x81, 0x01]), 0, 1)).toBeNull();
  });

  it('reads a size whose first byte is exactly 0x80 as a continuation', () => {
    expect(readSize(Buffer.from([0x80, 0x01]), 0)).toEqual({ value: 1, length: 2 });
  });

  it('reads sizes of eight and nine bytes up to 2^53 - 1, and refuses larger ones', () => {
    expect(readSize(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x05]), 0)).toEqual({ value: 5, length: 8 });
    const maxSafe = Buffer.from([0x8f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    expect(readSize(maxSafe, 0)).toEqual({ value: Number.MAX_SAFE_INTEGER, length: 8 });
    expect(readSize(Buffer.from([0x90, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), 0)).toBeNull();
    expect(readSize(Buffer.alloc(9, 0xff), 0)).toBeNull();
  });
});

describe('b-tree page headers', () => {
  /** A table-leaf page of `usable` bytes with the given cell pointers. */
  const leafPage = (usable: number, ptrs: number[]): Buffer => {
    const buf = Buffer.alloc(usable);
    buf[0] = TABLE_LEAF;
    buf.writeUInt16BE(ptrs.length, 3);
    ptrs.forEach((p, i) => buf.writeUInt16BE(p, 8 + 2 * i));
    return buf;
  };

  it('reads a leaf exactly as long as its header, without a right child', () => {
    const page = parseBtreePage(leafPage(12, []), 2, 12);
    expect(page).toEqual({ type: TABLE_LEAF, cells: [] });
    expect(page && 'rightChild' in page).toBe(false);
  });

  it('refuses a page too short for a header, or of no b-tree type', () => {
    expect(parseBtreePage(Buffer.from([TABLE_LEAF, 0, 0]), 2, 512)).toBeNull();
    expect(parseBtreePage(Buffer.alloc(512), 2, 512)).toBeNull();
    const notBtree = leafPage(512, [100]);
    notBtree[0] = 0x07;
    expect(parseBtreePage(notBtree, 2, 512)).toBeNull();
  });

  it('accepts cell pointers from the end of the pointer array to the last usable byte, and no others', () => {
    expect(parseBtreePage(leafPage(512, [10]), 2, 512)?.cells).toEqual([10]);
    expect(parseBtreePage(leafPage(512, [511]), 2, 512)?.cells).toEqual([511]);
    expect(parseBtreePage(leafPage(512, [9]), 2, 512)).toBeNull();
    expect(parseBtreePage(leafPage(512, [512]), 2, 512)).toBeNull();
    expect(parseBtreePage(leafPage(512, [20, 10]), 2, 512)).toBeNull();
  });

  it('skips an interior cell whose child pointer would run past the usable bytes', () => {
    const buf = Buffer.alloc(16);
    buf.writeUInt32BE(3, 8);
    expect(childPages(buf, { type: TABLE_INTERIOR, cells: [8, 14], rightChild: 7 }, 16)).toEqual([3, 7]);
  });
});

describe('local payload sizes (spec 1.6)', () => {
  it('keeps a table payload up to usable - 35 on the page, then the minimum or the remainder', () => {
    expect(localPayload(4061, 4096)).toBe(4061);
    expect(localPayload(4062, 4096)).toBe(489);
    // The remainder lands exactly on the maximum: kept whole on the page.
    expect(localPayload(4061 + 4092, 4096)).toBe(4061);
    expect(localPayload(600, 512)).toBe(92);
  });

  it('keeps an index payload up to ((usable - 12) * 64 / 255) - 23 on the page', () => {
    expect(localPayload(1002, 4096, true)).toBe(1002);
    expect(localPayload(1003, 4096, true)).toBe(489);
    expect(localPayload(102, 512, true)).toBe(102);
    expect(localPayload(103, 512, true)).toBe(39);
  });
});

describe('records of a real file', () => {
  it('decodes every serial type SQLite writes', () => {
    const path = dbPath();
    const rows: unknown[][] = [
      // better-sqlite3 binds a JS number as a REAL: integers are bound as bigints.
      [null, 0n, 1n, 100n, -300n],
      [70000n, 2n ** 30n, -(2n ** 40n), 2n ** 60n, -(2n ** 62n)],
      [1.5, 'héllo', Buffer.from([1, 2, 3]), '', Buffer.alloc(0)],
    ];
    const file = sqliteFile(path, (db) => {
      db.exec('CREATE TABLE t (a, b, c, d, e)');
      for (const r of rows) db.prepare('INSERT INTO t VALUES (?, ?, ?, ?, ?)').run(...r);
    });
    const got = tableRows(file, rootPage(path, 't'));
    expect(got.map((r) => r.rowid)).toEqual([1n, 2n, 3n]);
    expect(got.map((r) => r.values)).toEqual([
      [null, 0n, 1n, 100n, -300n],
      [70000n, 2n ** 30n, -(2n ** 40n), 2n ** 60n, -(2n ** 62n)],
      [1.5, 'héllo', Buffer.from([1, 2, 3]), '', Buffer.alloc(0)],
    ]);
  });

  it('reads rows under interior pages and payloads spread over overflow pages', () => {
    const path = dbPath();
    const big = pattern(10_000, 3);
    const file = sqliteFile(path, (db) => {
      db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v)');
      const insert = db.prepare('INSERT INTO t (v) VALUES (?)');
      db.transaction(() => {
        for (let i = 0; i < 400; i++) insert.run(`row-${i}-${'x'.repeat(40)}`);
        insert.run(big);
      })();
    });
    const root = rootPage(path, 't');
    expect(parseBtreePage(file.page(root)!, root, file.header.usable)?.type).toBe(TABLE_INTERIOR);
    const got = tableRows(file, root);
    expect(got).toHaveLength(401);
    expect(got[7]).toEqual({ rowid: 8n, values: [null, `row-7-${'x'.repeat(40)}`] });
    expect(got[400]).toEqual({ rowid: 401n, values: [null, big] });
  });

  it('reads index keys kept on the page and index keys spread over overflow pages', () => {
    const path = dbPath();
    const long = 'k'.repeat(3000);
    const file = sqliteFile(path, (db) => {
      db.exec('CREATE TABLE t (v TEXT); CREATE INDEX t_v ON t (v)');
      db.prepare('INSERT INTO t VALUES (?)').run('short');
      db.prepare('INSERT INTO t VALUES (?)').run(long);
    });
    const root = rootPage(path, 't_v');
    const buf = file.page(root)!;
    const page = parseBtreePage(buf, root, file.header.usable)!;
    const keys = page.cells.map((at) => decodeRecord(readIndexCell(file, buf, at, false)!));
    expect(keys).toEqual([[long, 2n], ['short', 1n]]);
  });
});

describe('records of damaged bytes', () => {
  it('refuses reserved serial types 10 and 11', () => {
    expect(decodeRecord(Buffer.from([0x02, 10]))).toBeNull();
    expect(decodeRecord(Buffer.from([0x02, 11]))).toBeNull();
  });

  it('takes a header filling the whole payload, refuses one shorter than its own length', () => {
    expect(decodeRecord(Buffer.from([0x02, 0x00]))).toEqual([null]);
    expect(decodeRecord(Buffer.from([0x01]))).toEqual([]);
    expect(decodeRecord(Buffer.from([0x00]))).toBeNull();
    expect(decodeRecord(Buffer.from([0x03, 0x00]))).toBeNull();
  });

  it('refuses a value running past the payload', () => {
    expect(decodeRecord(Buffer.from([0x02, 19, 0x61, 0x62, 0x63]))).toEqual(['abc']);
    expect(decodeRecord(Buffer.from([0x02, 19, 0x61, 0x62]))).toBeNull();
  });
});

describe('cells pushed out of their page by damage', () => {
  const USABLE = 512;

  /** `pageCount` pages of 512 bytes; page 1 holds the cell at `at`. */
  const pagesWithCell = (pageCount: number, at: number, cell: number[]): MemoryPages => {
    const file = memoryPages(Buffer.alloc(pageCount * USABLE), USABLE);
    Buffer.from(cell).copy(file.bytes, at);
    return file;
  };

  it('a table cell whose local payload runs past the page is unreadable', () => {
    const file = pagesWithCell(1, 480, [...varint(40), 1, ...pattern(40)]);
    expect(readTableLeafCell(file, file.page(1)!, 480)).toBeNull();
  });

  it('a table cell whose overflow pointer runs past the page is unreadable', () => {
    // 600 bytes on 512-byte pages: 92 on the page, then a 4-byte pointer that does not fit.
    const at = USABLE - 92 - 4 + 2 - 3;
    const file = pagesWithCell(2, at, [...varint(600), 1, ...pattern(92)]);
    expect(readTableLeafCell(file, file.page(1)!, at)).toBeNull();
  });

  it('a cell claiming a payload larger than the file reads no overflow page', () => {
    // 2^23 bytes: were it followed, its chain would start at page 2 (39 bytes in).
    const file = pagesWithCell(2, 10, [0x84, 0x80, 0x80, 0x00, 1, ...pattern(39), 0, 0, 0, 2]);
    file.reads.length = 0;
    expect(readTableLeafCell(file, file.page(1)!, 10)).toBeNull();
    expect(file.reads).toEqual([1]);
  });

  it('an index cell ending exactly at the page end is read; one running past it is not', () => {
    const file = pagesWithCell(1, 500, [11, ...pattern(11)]);
    expect(readIndexCell(file, file.page(1)!, 500, false)).toEqual(pattern(11));
    const past = pagesWithCell(1, 505, [11, ...pattern(11)]);
    expect(readIndexCell(past, past.page(1)!, 505, false)).toBeNull();
  });

  it('an interior index cell starts after its 4-byte child pointer', () => {
    const file = pagesWithCell(1, 100, [0, 0, 0, 9, 3, ...pattern(3)]);
    expect(readIndexCell(file, file.page(1)!, 100, true)).toEqual(pattern(3));
  });

  it('an index cell whose overflow pointer ends exactly at the page end is followed', () => {
    // 200 bytes: 39 on the page, the pointer in the last 4 bytes, 161 on page 2.
    const payload = pattern(200, 9);
    const at = USABLE - 4 - 39 - 2;
    const file = pagesWithCell(2, at, [...varint(200), ...payload.subarray(0, 39), 0, 0, 0, 2]);
    payload.copy(file.bytes, USABLE + 4, 39);
    expect(readIndexCell(file, file.page(1)!, at, false)).toEqual(payload);
  });

  it('an index cell whose overflow pointer runs past the page is unreadable', () => {
    // 200 bytes: 39 on the page, then the pointer; 2 + 39 leaves 2 bytes of the page for it.
    const at = USABLE - 2 - 39 - 2;
    const file = pagesWithCell(2, at, [...varint(200), ...pattern(39)]);
    expect(readIndexCell(file, file.page(1)!, at, false)).toBeNull();
  });
});

describe('overflow chains', () => {
  const USABLE = 512;

  /** Page 1 holds a table cell of `size` bytes at 10 whose chain starts at `first`; `links` are [page, next] in chain order. */
  function chain(size: number, first: number, links: [number, number][], pages = 3, pageCount = pages): { file: MemoryPages; payload: Buffer } {
    const payload = pattern(size, 5);
    const local = localPayload(size, USABLE);
    const file = memoryPages(Buffer.alloc(pages * USABLE), USABLE, USABLE, pageCount);
    const cell = Buffer.concat([Buffer.from([...varint(size), 1]), payload.subarray(0, local), Buffer.alloc(4)]);
    cell.writeUInt32BE(first, cell.length - 4);
    cell.copy(file.bytes, 10);
    let filled = local;
    for (const [p, next] of links) {
      const at = (p - 1) * USABLE;
      file.bytes.writeUInt32BE(next, at);
      payload.copy(file.bytes, at + 4, filled, Math.min(size, filled + USABLE - 4));
      filled += USABLE - 4;
    }
    return { file, payload };
  }
  const read = (file: MemoryPages): ReturnType<typeof readTableLeafCell> => readTableLeafCell(file, file.page(1)!, 10);

  it('follows a chain through page 2 and the last page', () => {
    const { file, payload } = chain(600, 2, [[2, 0]], 2);
    expect(read(file)).toEqual({ rowid: 1n, payload });
    const two = chain(1200, 3, [[3, 2], [2, 0]]);
    expect(read(two.file)).toEqual({ rowid: 1n, payload: two.payload });
  });

  it('refuses a chain through page 1, past the last page, or back to a page already read', () => {
    expect(read(chain(600, 1, []).file)).toBeNull();
    expect(read(chain(600, 3, [[3, 0]], 3, 2).file)).toBeNull();
    expect(read(chain(1200, 2, [[2, 2]]).file)).toBeNull();
  });

  it('refuses a chain that ends before the payload does', () => {
    expect(read(chain(1200, 2, [[2, 0]]).file)).toBeNull();
  });
});
