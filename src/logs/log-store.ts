import type { Database, Statement } from 'better-sqlite3';
import type { Migration } from '../store/migrations.js';
import type { DockerCursor } from './docker-frames.js';
import { chunkOf, expandLines, type LogLine } from './types.js';

interface TailRow {
  service: string;
  ts: number;
  chunk: string;
}

/**
 * What the log collectors keep in the agent's database (docs/logs.md), each written in the same
 * transaction as the outbox message of the chunk it belongs to, so a crash at any moment leaves
 * them and the queue in step (no line sent twice, none skipped):
 *   log_services  per service, the sequence number of its next line
 *   log_cursors   per container, where its log was read up to (Docker's entry time and how many
 *                 entries with that time were taken)
 *   log_tail      the last lines of each service, for the local API, CLI and dashboard: one row per
 *                 chunk (its time and its payload's JSON, the text the outbox got), pruned to about
 *                 `tailLines` lines a service
 */
export const LOGS_MIGRATION: Migration = {
  version: 13,
  name: 'logs: sequence numbers, container cursors and the local tail',
  up(db) {
    db.exec(`
      CREATE TABLE log_services (
        service  TEXT PRIMARY KEY,
        next_seq INTEGER NOT NULL CHECK (next_seq >= 0)
      ) STRICT;
      CREATE TABLE log_cursors (
        source  TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        at      TEXT NOT NULL,
        skip    INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE log_tail (
        service    TEXT NOT NULL,
        first_seq  INTEGER NOT NULL,
        last_seq   INTEGER NOT NULL,
        ts         INTEGER NOT NULL,
        chunk      TEXT NOT NULL,
        PRIMARY KEY (service, first_seq)
      ) STRICT, WITHOUT ROWID;
    `);
  },
};

export interface TailQuery {
  service?: string;
  /** Lines at or after this epoch ms. */
  since?: number;
  /** Lines with a greater sequence number (with `service`). */
  afterSeq?: number;
  /** The last `limit` lines that match (default 1000). */
  limit?: number;
}

/** What a chunk's commit writes besides its outbox message. */
export interface ChunkCommit {
  service: string;
  nextSeq: number;
  cursors: ReadonlyMap<string, DockerCursor>;
  /** The chunk's first sequence number, its time and its payload's JSON ('' for a chunk without lines). */
  firstSeq: number;
  ts: number;
  json: string;
}

export class LogStore {
  private readonly getSeq: Statement<[string], { next_seq: number }>;
  private readonly putSeq: Statement<[string, number]>;
  private readonly getCursor: Statement<[string], { at: string; skip: number }>;
  private readonly putCursor: Statement<[string, string, string, number]>;
  private readonly dropCursor: Statement<[string]>;
  private readonly listCursors: Statement<[], { source: string; service: string }>;
  private readonly putTail: Statement<[string, number, number, number, string]>;
  private readonly pruneTail: Statement<[string, number]>;
  private readonly tailServices: Statement<[], { service: string }>;
  /** Prepared reads of the tail, by their SQL (four shapes at most). */
  private readonly reads = new Map<string, Statement<Array<string | number>, TailRow>>();

  constructor(
    private readonly db: Database,
    /** Lines kept per service for local reading. */
    private readonly tailLines: number,
  ) {
    this.getSeq = db.prepare('SELECT next_seq FROM log_services WHERE service = ?');
    this.putSeq = db.prepare('INSERT INTO log_services (service, next_seq) VALUES (?, ?) ON CONFLICT (service) DO UPDATE SET next_seq = excluded.next_seq');
    this.getCursor = db.prepare('SELECT at, skip FROM log_cursors WHERE source = ?');
    this.putCursor = db.prepare('INSERT INTO log_cursors (source, service, at, skip) VALUES (?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET at = excluded.at, skip = excluded.skip');
    this.dropCursor = db.prepare('DELETE FROM log_cursors WHERE source = ?');
    this.listCursors = db.prepare('SELECT source, service FROM log_cursors');
    this.putTail = db.prepare('INSERT OR REPLACE INTO log_tail (service, first_seq, last_seq, ts, chunk) VALUES (?, ?, ?, ?, ?)');
    this.pruneTail = db.prepare('DELETE FROM log_tail WHERE service = ? AND last_seq < ?');
    this.tailServices = db.prepare('SELECT DISTINCT service FROM log_tail ORDER BY service');
  }

  nextSeq(service: string): number {
    return this.getSeq.get(service)?.next_seq ?? 0;
  }

  cursor(source: string): DockerCursor | undefined {
    const row = this.getCursor.get(source);
    return row ? { at: row.at, skip: row.skip } : undefined;
  }

  /** Containers with a cursor (to forget those that are gone). */
  cursors(): Array<{ source: string; service: string }> {
    return this.listCursors.all();
  }

  forget(source: string): void {
    this.dropCursor.run(source);
  }

  /** Runs inside the chunk's outbox transaction (Outbox.enqueueMany's `alongside`). */
  commit(c: ChunkCommit): void {
    this.putSeq.run(c.service, c.nextSeq);
    for (const [source, cur] of c.cursors) this.putCursor.run(source, c.service, cur.at, cur.skip);
    if (this.tailLines <= 0 || c.json === '') return;
    this.putTail.run(c.service, c.firstSeq, c.nextSeq - 1, c.ts, c.json);
    this.pruneTail.run(c.service, c.nextSeq - this.tailLines);
  }

  /** Services with lines in the tail. */
  services(): string[] {
    return this.tailServices.all().map((r) => r.service);
  }

  /**
   * The last `limit` lines matching `q`, oldest first (per service in sequence order; services
   * interleaved by time). Rows are read newest first and parsed only until `limit` lines are found.
   */
  read(q: TailQuery): LogLine[] {
    const limit = q.limit ?? 1000;
    const where: string[] = [];
    const args: Array<string | number> = [];
    if (q.service !== undefined) {
      where.push('service = ?');
      args.push(q.service);
    }
    if (q.afterSeq !== undefined) {
      where.push('last_seq > ?');
      args.push(q.afterSeq);
    }
    const sql = `SELECT service, ts, chunk FROM log_tail ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY ts DESC, service DESC, first_seq DESC`;
    let stmt = this.reads.get(sql);
    if (!stmt) this.reads.set(sql, (stmt = this.db.prepare<Array<string | number>, TailRow>(sql)));
    const rows: LogLine[][] = [];
    let found = 0;
    for (const row of stmt.iterate(...args)) {
      const chunk = chunkOf(JSON.parse(row.chunk));
      const lines: LogLine[] = [];
      for (const l of chunk ? expandLines(row.ts, chunk) : []) {
        if (q.afterSeq !== undefined && l.seq <= q.afterSeq) continue;
        if (q.since !== undefined && l.ts < q.since) continue;
        lines.push({ service: row.service, ...l });
      }
      rows.push(lines);
      found += lines.length;
      if (found >= limit) break;
    }
    const out = rows.reverse().flat();
    return out.length > limit ? out.slice(out.length - limit) : out;
  }
}
