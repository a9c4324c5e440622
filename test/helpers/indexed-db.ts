import BetterSqlite3 from 'better-sqlite3';
import { closeSync, openSync, writeSync } from 'node:fs';
import type { SchemaEntry } from '../../src/store/page-scan.js';

/**
 * A database whose table has every kind of index the salvage meets: plain, on an expression, on a
 * REAL, made by a UNIQUE constraint, partial; big enough that the indexes have interior pages. The
 * table's name holds a double quote, so every identifier must be quoted right.
 */
export const TABLE = 'm"q';
export const ROWS = 3_000;
export const CHANNELS = ['telemetry', 'events', 'state'];

export const idOf = (i: number): string => `id-${String(i).padStart(6, '0')}`;

export function makeIndexedDb(path: string): void {
  const db = new BetterSqlite3(path);
  db.exec(`CREATE TABLE "m""q" (id TEXT, channel TEXT, n INTEGER, r REAL, body TEXT, code TEXT UNIQUE)`);
  db.exec(`CREATE INDEX m_id ON "m""q" (id)`);
  db.exec(`CREATE INDEX m_expr ON "m""q" (channel, lower(body))`);
  db.exec(`CREATE INDEX m_r ON "m""q" (r)`);
  db.exec(`CREATE INDEX m_part ON "m""q" (n) WHERE n > 5`);
  db.exec('CREATE TABLE other (x TEXT)');
  db.exec('CREATE INDEX other_x ON other (x)');
  const insert = db.prepare(`INSERT INTO "m""q" (rowid, id, channel, n, r, body, code) VALUES (?, ?, ?, ?, ?, ?, ?)`);
  db.transaction(() => {
    for (let i = 1; i <= ROWS; i++) insert.run(i, idOf(i), CHANNELS[i % 3], i, i + 0.5, `B${i}`, `c${i}`);
    db.prepare("INSERT INTO other VALUES ('o')").run();
  })();
  db.close();
}

/** The schema as the page reader sees it. */
export function schemaOf(path: string): SchemaEntry[] {
  const db = new BetterSqlite3(path, { readonly: true });
  const rows = db.prepare('SELECT type, name, tbl_name AS "table", rootpage AS root, sql FROM sqlite_schema').all() as SchemaEntry[];
  db.close();
  return rows;
}

/** The pages of b-tree `name` (dbstat), leaves and interiors. */
export function treePages(path: string, name: string): { pageno: number; pagetype: string }[] {
  const db = new BetterSqlite3(path, { readonly: true });
  const rows = db.prepare('SELECT pageno, pagetype FROM dbstat WHERE name = ? ORDER BY path').all(name) as { pageno: number; pagetype: string }[];
  db.close();
  return rows;
}

/** Overwrites whole pages with zeros (a page of the wrong kind to any reader). */
export function zeroPages(path: string, pageNos: number[], pageSize = 4096): void {
  const fd = openSync(path, 'r+');
  for (const p of pageNos) writeSync(fd, Buffer.alloc(pageSize), 0, pageSize, (p - 1) * pageSize);
  closeSync(fd);
}
