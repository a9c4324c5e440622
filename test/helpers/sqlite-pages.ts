import BetterSqlite3 from 'better-sqlite3';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import type { PageReader } from '../../src/store/btree-cells.js';

/** A database file held in memory, read page by page: bytes may be damaged in `bytes` before reading. */
export interface MemoryPages extends PageReader {
  bytes: Buffer;
  pageSize: number;
  /** Pages read so far, in order. */
  reads: number[];
}

export function memoryPages(bytes: Buffer, pageSize: number, usable = pageSize, pageCount = Math.floor(bytes.length / pageSize)): MemoryPages {
  const reads: number[] = [];
  return {
    bytes,
    pageSize,
    reads,
    header: { usable, pageCount },
    page(n: number) {
      reads.push(n);
      if (n < 1 || n * pageSize > bytes.length) return null;
      return bytes.subarray((n - 1) * pageSize, n * pageSize);
    },
  };
}

/** A real SQLite file made by `fill`, closed (no WAL) and loaded into memory. */
export function sqliteFile(path: string, fill: (db: BetterSqlite3.Database) => void): MemoryPages {
  const db = new BetterSqlite3(path);
  fill(db);
  const pageSize = db.pragma('page_size', { simple: true }) as number;
  db.close();
  return memoryPages(readFileSync(path), pageSize);
}

/** The root page of table or index `name` in the file at `path`. */
export function rootPage(path: string, name: string): number {
  const db = new BetterSqlite3(path, { readonly: true });
  const row = db.prepare('SELECT rootpage FROM sqlite_schema WHERE name = ?').get(name) as { rootpage: number };
  db.close();
  return row.rootpage;
}

/** A page of a table or index as SQLite's dbstat names it. */
export interface PageInfo {
  pageno: number;
  pagetype: string;
  ncell: number;
  path: string;
}

/** The pages of table or index `name`, in tree order (dbstat's path). */
export function pages(path: string, name: string): PageInfo[] {
  const db = new BetterSqlite3(path, { readonly: true });
  const rows = db.prepare('SELECT pageno, pagetype, ncell, path FROM dbstat WHERE name = ? ORDER BY path').all(name) as PageInfo[];
  db.close();
  return rows;
}

/** Overwrites pages `pageNos` of the file with `fill` bytes: damage as a bad sector or a torn write leaves it. */
export function overwrite(path: string, pageNos: number[], pageSize = 4096, fill = 0xab): void {
  const fd = openSync(path, 'r+');
  for (const p of pageNos) writeSync(fd, Buffer.alloc(pageSize, fill), 0, pageSize, (p - 1) * pageSize);
  closeSync(fd);
}
