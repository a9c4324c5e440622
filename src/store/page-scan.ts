import BetterSqlite3 from 'better-sqlite3';
import {
  childPages,
  decodeRecord,
  parseBtreePage,
  readTableLeafCell,
  type StoredValue,
  TABLE_INTERIOR,
  TABLE_LEAF,
  type TableRow,
} from './btree-cells.js';
import type { PageFile } from './page-file.js';

/**
 * Finds the rows of damaged tables by reading the file's pages, below SQLite: each table's tree is
 * walked from its root tolerating damaged pages, and the table-leaf pages no tree reaches (hidden by
 * a damaged interior page, or by a damaged schema) are given to the one damaged table all their
 * cells fit. Pages the freelist lists hold deleted rows and are never read as live.
 */

export interface ColumnDef {
  name: string;
  /** Declared type, upper case ('' when none). */
  type: string;
  notNull: boolean;
  /** The INTEGER PRIMARY KEY: stored as NULL in the record, its value is the cell's key (the rowid). */
  rowidAlias: boolean;
}

export interface SchemaEntry {
  type: string;
  name: string;
  /** The table an index belongs to. */
  table: string;
  root: number;
  sql: string | null;
}

/** Columns of a table as SQLite reads its CREATE statement (run in a scratch in-memory database). */
export function columnsFromSql(sql: string, name: string): ColumnDef[] | null {
  // Stryker disable next-line StringLiteral: '' opens a private temporary database, deleted on close: the same scratch space.
  const db = new BetterSqlite3(':memory:');
  try {
    db.exec(sql);
    return tableColumns(db, name);
  } catch {
    return null;
  } finally {
    db.close();
  }
}

/** Columns of `name` in `db`, with the rowid alias marked. */
export function tableColumns(db: BetterSqlite3.Database, name: string): ColumnDef[] | null {
  const info = db.pragma(`table_info("${name.replaceAll('"', '""')}")`) as { name: string; type: string; notnull: number; pk: number }[];
  if (info.length === 0) return null;
  const pks = info.filter((c) => c.pk > 0);
  const alias = pks.length === 1 && pks[0]!.type.toUpperCase() === 'INTEGER' ? pks[0]!.name : undefined;
  return info.map((c) => ({ name: c.name, type: c.type.toUpperCase(), notNull: c.notnull === 1, rowidAlias: c.name === alias }));
}

const STRICT_TYPES = new Set(['INT', 'INTEGER', 'REAL', 'TEXT', 'BLOB', 'ANY']);

/** Whether `v` may be stored in column `c` of a STRICT table (any value when the type is not a strict one). */
function valueFits(c: ColumnDef, v: StoredValue): boolean {
  if (c.rowidAlias) return v === null;
  if (v === null) return !c.notNull;
  if (!STRICT_TYPES.has(c.type) || c.type === 'ANY') return true;
  if (typeof v === 'bigint') return c.type === 'INT' || c.type === 'INTEGER' || c.type === 'REAL';
  // SQLite may store a whole REAL as an integer, never an INTEGER as a float.
  if (typeof v === 'number') return c.type === 'REAL';
  if (typeof v === 'string') return c.type === 'TEXT';
  return c.type === 'BLOB';
}

/**
 * Whether a decoded record is a row of a table with `columns`. A row written before an `ALTER TABLE
 * ADD COLUMN` has fewer fields, which SQLite reads as NULL: it fits when each missing column may be NULL.
 */
export function rowFits(columns: ColumnDef[], values: StoredValue[]): boolean {
  return values.length > 0 && values.length <= columns.length && columns.every((c, i) => valueFits(c, i < values.length ? values[i]! : null));
}

/** The rows of one table-leaf page: readable ones (but those `skip` names), and how many cells were unreadable. */
export function leafRows(file: PageFile, pageNo: number, skip?: (rowid: bigint) => boolean): { rows: TableRow[]; unreadable: number } {
  const rows: TableRow[] = [];
  let unreadable = 0;
  const buf = file.page(pageNo);
  const page = buf ? parseBtreePage(buf, pageNo, file.header.usable) : null;
  if (!buf || page?.type !== TABLE_LEAF) return { rows, unreadable: 1 };
  for (const at of page.cells) {
    const cell = readTableLeafCell(file, buf, at, skip);
    if (cell === 'skipped') continue;
    const values = cell ? decodeRecord(cell.payload) : null;
    if (cell && values) rows.push({ rowid: cell.rowid, values });
    else unreadable++;
  }
  return { rows, unreadable };
}

/** What one pass over every page learns: each page's b-tree type (0 when none) and interior children. */
interface PageMap {
  types: Uint8Array;
  children: Map<number, number[]>;
}

function mapPages(file: PageFile): PageMap {
  const n = file.header.pageCount;
  const types = new Uint8Array(n + 1);
  const children = new Map<number, number[]>();
  for (let p = 1; p <= n; p++) {
    const buf = file.page(p);
    const page = buf ? parseBtreePage(buf, p, file.header.usable) : null;
    if (!buf || !page) continue;
    types[p] = page.type;
    if (page.type === TABLE_INTERIOR) children.set(p, childPages(buf, page, file.header.usable));
  }
  return { types, children };
}

/** A WITHOUT ROWID table (its options follow the last closing parenthesis) is stored as an index b-tree. */
function withoutRowid(sql: string | null): boolean {
  return sql !== null && /WITHOUT\s+ROWID/i.test(sql.slice(sql.lastIndexOf(')')));
}

/**
 * Walks the table b-tree rooted at `root` through the page map: returns the leaf pages it reaches and
 * marks every page it reaches as owned. A child of another kind (a damaged page) is skipped, not followed.
 * Index trees (indexes, WITHOUT ROWID tables) are not walked: only table leaves are scanned for orphans.
 */
function walkTree(map: PageMap, root: number, owned: Set<number>): number[] {
  const leaves: number[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const p = stack.pop()!;
    if (p < 1 || p >= map.types.length || owned.has(p)) continue;
    const type = map.types[p];
    if (type !== TABLE_INTERIOR && type !== TABLE_LEAF) continue;
    owned.add(p);
    if (type === TABLE_LEAF) leaves.push(p);
    else stack.push(...(map.children.get(p) ?? []).reverse());
  }
  return leaves;
}

/** The entries of sqlite_schema readable from page 1's tree (damaged leaves skipped). */
function readSchema(file: PageFile, map: PageMap): SchemaEntry[] {
  const entries: SchemaEntry[] = [];
  for (const leaf of walkTree(map, 1, new Set())) {
    for (const { values: v } of leafRows(file, leaf).rows) {
      if (v.length !== 5 || typeof v[0] !== 'string' || typeof v[1] !== 'string' || typeof v[3] !== 'bigint') continue;
      const root = Number(v[3]);
      if (root < 1 || root > file.header.pageCount) continue;
      entries.push({ type: v[0], name: v[1], table: typeof v[2] === 'string' ? v[2] : '', root, sql: typeof v[4] === 'string' ? v[4] : null });
    }
  }
  return entries;
}

export interface ScannedTable {
  columns: ColumnDef[];
  /** Table-leaf pages of the table: those its tree reaches, then the orphans assigned to it. */
  pages: number[];
  /** Of `pages`, the orphan ones (no tree reaches them). */
  orphans: Set<number>;
}

export interface PageScanPlan {
  tables: Map<string, ScannedTable>;
  /** The entries of the damaged file's sqlite_schema that could be read. */
  schema: SchemaEntry[];
  /** Orphan leaf pages that fit more than one table (skipped). */
  ambiguousPages: number;
  /** Orphan leaf pages that fit no damaged table (or only an intact one). */
  unassignedPages: number;
}

/** Which of `candidates` every readable cell of orphan page `p` fits. */
function fittingTables(file: PageFile, p: number, candidates: Map<string, ColumnDef[]>): string[] {
  const { rows } = leafRows(file, p);
  if (rows.length === 0) return [];
  const fits = [...candidates].filter(([, cols]) => rows.every((r) => rowFits(cols, r.values)));
  // Rows as long as a table's columns name it before a wider table they fit only as rows older than
  // an ADD COLUMN (its extra columns NULL): a key-value page must not look like a wider table's.
  const exact = fits.filter(([, cols]) => rows.every((r) => r.values.length === cols.length));
  return (exact.length > 0 ? exact : fits).map(([name]) => name);
}

/**
 * Plans the page scan of the `damaged` tables: their columns (from the damaged schema's CREATE
 * statements, else `freshColumns`), the leaf pages their trees reach, and the orphan leaf pages that
 * fit exactly one of them and no other table.
 */
export function planScan(file: PageFile, damaged: Set<string>, freshColumns: Map<string, ColumnDef[]>): PageScanPlan {
  const map = mapPages(file);
  const schema = readSchema(file, map);
  const owned = new Set<number>();
  const reached = new Map<string, number[]>();
  walkTree(map, 1, owned);
  for (const e of schema) {
    // Stryker disable next-line ConditionalExpression,LogicalOperator,StringLiteral,EqualityOperator,BooleanLiteral: an index tree walked as a table tree reaches no page (its root is no table page); the check only saves the walk.
    if (e.type !== 'table' || withoutRowid(e.sql)) continue;
    reached.set(e.name, walkTree(map, e.root, owned));
  }
  const defs = new Map<string, ColumnDef[]>();
  for (const [name, fresh] of freshColumns) {
    const sql = schema.find((e) => e.type === 'table' && e.name === name)?.sql;
    defs.set(name, (sql ? columnsFromSql(sql, name) : null) ?? fresh);
  }
  // Tables only the damaged file has are candidates too: a page of theirs must not go to another table.
  for (const e of schema) {
    // Stryker disable next-line MethodExpression: columnsFromSql of a sqlite_* table is null anyway (SQLite reserves the names); the check only saves the scratch database.
    if (e.type !== 'table' || defs.has(e.name) || !e.sql || e.name.startsWith('sqlite_')) continue;
    // Its rows live in an index b-tree, never on a table leaf: no orphan leaf can be its.
    if (withoutRowid(e.sql)) continue;
    const cols = columnsFromSql(e.sql, e.name);
    if (cols) defs.set(e.name, cols);
  }
  const plan: PageScanPlan = { tables: new Map(), schema, ambiguousPages: 0, unassignedPages: 0 };
  for (const name of damaged) {
    const columns = defs.get(name);
    if (columns) plan.tables.set(name, { columns, pages: [...(reached.get(name) ?? [])], orphans: new Set() });
  }
  const free = file.freePages();
  for (let p = 2; p < map.types.length; p++) {
    if (map.types[p] !== TABLE_LEAF || owned.has(p) || free.has(p)) continue;
    const fits = fittingTables(file, p, defs);
    if (fits.length > 1) plan.ambiguousPages++;
    const t = fits.length === 1 ? plan.tables.get(fits[0]!) : undefined;
    if (fits.length === 1 && !t) plan.unassignedPages++;
    if (!t) continue;
    t.pages.push(p);
    t.orphans.add(p);
  }
  return plan;
}
