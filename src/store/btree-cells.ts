/**
 * B-tree pages, cells and records of the SQLite file format, decoded from untrusted bytes. Every
 * offset and length is checked against the page or payload it points into; anything that does not
 * fit is "unreadable" (null), never a throw, a loop or an allocation larger than the database.
 */

export const TABLE_INTERIOR = 0x05;
export const TABLE_LEAF = 0x0d;
export const INDEX_INTERIOR = 0x02;
export const INDEX_LEAF = 0x0a;

/** A value as stored: integers as bigint (they may exceed 2^53), text as string, blobs as Buffer. */
export type StoredValue = null | bigint | number | string | Buffer;

export interface TableRow {
  rowid: bigint;
  values: StoredValue[];
}

export interface PageReader {
  page(n: number): Buffer | null;
  readonly header: { usable: number; pageCount: number };
}

/** Where a page's b-tree header starts: page 1 carries the 100-byte database header first. */
export const headerOffset = (pageNo: number): number => (pageNo === 1 ? 100 : 0);

/** A varint at `at`: its value and length, or null when it runs past `end`. */
export function readVarint(buf: Buffer, at: number, end = buf.length): { value: bigint; length: number } | null {
  let value = 0n;
  for (let i = 0; i < 9; i++) {
    if (at + i >= end) return null;
    const byte = buf[at + i]!;
    if (i === 8) return { value: (value << 8n) | BigInt(byte), length: 9 };
    value = (value << 7n) | BigInt(byte & 0x7f);
    if (byte < 0x80) return { value, length: i + 1 };
  }
  return null;
}

/**
 * A varint as a JS number (sizes, serial types, header lengths): the common 1-7 byte ones without
 * allocating a bigint; null when it runs past `end` or exceeds 2^53.
 */
export function readSize(buf: Buffer, at: number, end = buf.length): { value: number; length: number } | null {
  let value = 0;
  for (let i = 0; i < 7; i++) {
    if (at + i >= end) return null;
    const byte = buf[at + i]!;
    value = value * 128 + (byte & 0x7f);
    if (byte < 0x80) return { value, length: i + 1 };
  }
  const big = readVarint(buf, at, end);
  return big && big.value <= BigInt(Number.MAX_SAFE_INTEGER) ? { value: Number(big.value), length: big.length } : null;
}

/** Signed 64-bit view of a varint (rowids and keys are signed). */
const signed = (v: bigint): bigint => BigInt.asIntN(64, v);

export interface BtreePage {
  type: number;
  /** Offsets of the cells within the page, each checked to lie inside it. */
  cells: number[];
  /** Interior pages: the right-most child. */
  rightChild?: number;
}

/** The b-tree header and cell pointers of a page, or null when it is not a valid b-tree page. */
export function parseBtreePage(buf: Buffer, pageNo: number, usable: number): BtreePage | null {
  const h = headerOffset(pageNo);
  if (buf.length < h + 12) return null;
  const type = buf[h]!;
  const interior = type === TABLE_INTERIOR || type === INDEX_INTERIOR;
  if (!interior && type !== TABLE_LEAF && type !== INDEX_LEAF) return null;
  const count = buf.readUInt16BE(h + 3);
  const ptrs = h + (interior ? 12 : 8);
  if (ptrs + 2 * count > usable) return null;
  const cells: number[] = [];
  for (let i = 0; i < count; i++) {
    const at = buf.readUInt16BE(ptrs + 2 * i);
    if (at < ptrs + 2 * count || at >= usable) return null;
    cells.push(at);
  }
  const page: BtreePage = { type, cells };
  if (interior) page.rightChild = buf.readUInt32BE(h + 8);
  return page;
}

/** The child page numbers of an interior page (left children of its cells, then the right child). */
export function childPages(buf: Buffer, page: BtreePage, usable: number): number[] {
  const out: number[] = [];
  for (const at of page.cells) if (at + 4 <= usable) out.push(buf.readUInt32BE(at));
  if (page.rightChild !== undefined) out.push(page.rightChild);
  return out;
}

/** Bytes of a payload of `size` kept on a table-leaf page; the rest goes to overflow pages (spec 1.6). */
export function localPayload(size: number, usable: number, index = false): number {
  const x = index ? Math.floor(((usable - 12) * 64) / 255) - 23 : usable - 35;
  if (size <= x) return size;
  const m = Math.floor(((usable - 12) * 32) / 255) - 23;
  const k = m + ((size - m) % (usable - 4));
  return k <= x ? k : m;
}

/**
 * The payload of the table-leaf cell at `at`, following its overflow chain; null when the cell runs
 * past the page, or the chain loops, leaves the file, or ends early; 'skipped' when `skip` says so.
 */
export function readTableLeafCell(file: PageReader, buf: Buffer, at: number, skip?: (rowid: bigint) => boolean): { rowid: bigint; payload: Buffer } | 'skipped' | null {
  const { usable, pageCount } = file.header;
  const size = readSize(buf, at, usable);
  if (!size) return null;
  const key = readVarint(buf, at + size.length, usable);
  if (!key) return null;
  // A row already copied need not be read again (nor its overflow chain followed).
  if (skip?.(signed(key.value))) return 'skipped';
  // A payload cannot exceed the pages the file has.
  if (size.value > pageCount * usable) return null;
  const total = size.value;
  const start = at + size.length + key.length;
  const local = localPayload(total, usable);
  if (start + local > usable) return null;
  if (local === total) return { rowid: signed(key.value), payload: buf.subarray(start, start + total) };
  if (start + local + 4 > usable) return null;
  const payload = followOverflow(file, buf.subarray(start, start + local), buf.readUInt32BE(start + local), total);
  if (!payload) return null;
  return { rowid: signed(key.value), payload };
}

/**
 * The payload of the index cell at `at` (interior cells start with a 4-byte child pointer), following
 * its overflow chain; null when unreadable, as for table cells.
 */
export function readIndexCell(file: PageReader, buf: Buffer, at: number, interior: boolean): Buffer | null {
  const { usable, pageCount } = file.header;
  const start0 = at + (interior ? 4 : 0);
  const size = readSize(buf, start0, usable);
  if (!size || size.value > pageCount * usable) return null;
  const total = size.value;
  const start = start0 + size.length;
  const local = localPayload(total, usable, true);
  if (start + local > usable) return null;
  if (local === total) return buf.subarray(start, start + total);
  if (start + local + 4 > usable) return null;
  return followOverflow(file, buf.subarray(start, start + local), buf.readUInt32BE(start + local), total);
}

/** `local` followed by the overflow chain from page `next`, `total` bytes in all; null when the chain is broken. */
function followOverflow(file: PageReader, local: Buffer, first: number, total: number): Buffer | null {
  const { usable, pageCount } = file.header;
  // Chunks, joined at the end: memory grows with the pages actually read, never with a size garbage claims.
  const chunks = [local];
  let filled = local.length;
  let next = first;
  const seen = new Set<number>();
  while (filled < total) {
    if (next < 2 || next > pageCount || seen.has(next)) return null;
    seen.add(next);
    const ov = file.page(next);
    if (!ov) return null;
    const n = Math.min(usable - 4, total - filled);
    chunks.push(ov.subarray(4, 4 + n));
    filled += n;
    next = ov.readUInt32BE(0);
  }
  return Buffer.concat(chunks, total);
}

/** Bytes a value of serial type `t` takes in a record body. */
function serialSize(t: number): number | null {
  if (t <= 4) return t;
  if (t === 5) return 6;
  if (t === 6 || t === 7) return 8;
  if (t === 8 || t === 9) return 0;
  if (t === 10 || t === 11) return null;
  return Math.floor((t - 12) / 2);
}

function readValue(p: Buffer, t: number, at: number, n: number): StoredValue {
  if (t === 0) return null;
  if (t === 8) return 0n;
  if (t === 9) return 1n;
  if (t === 7) return p.readDoubleBE(at);
  if (t <= 4) return BigInt(p.readIntBE(at, n));
  if (t <= 6) return n === 8 ? p.readBigInt64BE(at) : BigInt(p.readIntBE(at, n));
  const bytes = p.subarray(at, at + n);
  return t % 2 === 0 ? Buffer.from(bytes) : bytes.toString('utf8');
}

/** The values of a record, or null when its header or a value runs past the payload. */
export function decodeRecord(p: Buffer): StoredValue[] | null {
  const hl = readSize(p, 0);
  if (!hl || hl.value > p.length || hl.value < hl.length) return null;
  const headerEnd = hl.value;
  const values: StoredValue[] = [];
  let h = hl.length;
  let body = headerEnd;
  while (h < headerEnd) {
    const t = readSize(p, h, headerEnd);
    if (!t) return null;
    h += t.length;
    const n = serialSize(t.value);
    if (n === null || body + n > p.length) return null;
    values.push(readValue(p, t.value, body, n));
    body += n;
  }
  return values;
}
