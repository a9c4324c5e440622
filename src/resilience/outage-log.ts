import type { Statement } from 'better-sqlite3';
import type { OutageRecord, Store } from '../store/store.js';

export type { OutageRecord };

/**
 * Where the connection monitor keeps its outages, so that an outage open when the agent stopped is
 * still open when it starts again and offline time spans restarts. Times are wall epoch ms.
 */
export interface OutageLog {
  /** Records the start of an outage; returns its id. */
  open(channel: string, start: number, cause: string): number;
  /**
   * Records its end. `durationMs` is what the caller measured on the monotonic clock; without it,
   * `end - start` (never negative). Closing a closed or unknown outage does nothing.
   */
  close(id: number, end: number, durationMs?: number): void;
  /** The latest outages, open or closed, most recent start first. */
  recent(limit: number): OutageRecord[];
  /** Outages without an end, oldest first. */
  openOutages(): OutageRecord[];
}

interface OutageRow {
  id: number;
  channel: string;
  started_at: number;
  ended_at: number | null;
  duration_ms: number | null;
  cause: string;
}

const COLUMNS = 'id, channel, started_at, ended_at, duration_ms, cause';

/** The `outages` table of the agent's store (migration 1). */
export class SqliteOutageLog implements OutageLog {
  /** Closed outages kept beyond this are deleted, oldest first, so a link flapping for months stays bounded on disk. */
  readonly maxRows: number;
  private readonly insert: Statement<[string, number, string]>;
  private readonly update: Statement<[number, number | null, number, number]>;
  private readonly selectRecent: Statement<[number], OutageRow>;
  private readonly selectOpen: Statement<[], OutageRow>;
  private readonly prune: Statement<[number]>;

  constructor(store: Pick<Store, 'db'>, opts: { maxRows?: number } = {}) {
    this.maxRows = Math.max(1, Math.floor(opts.maxRows ?? 1000));
    const db = store.db;
    this.insert = db.prepare('INSERT INTO outages (channel, started_at, cause) VALUES (?, ?, ?)');
    this.update = db.prepare(
      'UPDATE outages SET ended_at = ?, duration_ms = MAX(0, COALESCE(?, ? - started_at)) WHERE id = ? AND ended_at IS NULL',
    );
    this.selectRecent = db.prepare<[number], OutageRow>(`SELECT ${COLUMNS} FROM outages ORDER BY started_at DESC, id DESC LIMIT ?`);
    this.selectOpen = db.prepare<[], OutageRow>(`SELECT ${COLUMNS} FROM outages WHERE ended_at IS NULL ORDER BY started_at, id`);
    this.prune = db.prepare(
      `DELETE FROM outages WHERE ended_at IS NOT NULL
         AND id <= (SELECT id FROM outages ORDER BY id DESC LIMIT 1 OFFSET ?)`,
    );
  }

  open(channel: string, start: number, cause: string): number {
    const id = Number(this.insert.run(channel, Math.round(start), cause).lastInsertRowid);
    this.prune.run(this.maxRows);
    return id;
  }

  close(id: number, end: number, durationMs?: number): void {
    const endMs = Math.round(end);
    // The table is STRICT: a fractional duration from performance.now() would be refused.
    this.update.run(endMs, durationMs === undefined ? null : Math.round(durationMs), endMs, id);
  }

  recent(limit: number): OutageRecord[] {
    return this.selectRecent.all(Math.max(0, Math.floor(limit))).map(toRecord);
  }

  openOutages(): OutageRecord[] {
    return this.selectOpen.all().map(toRecord);
  }
}

function toRecord(row: OutageRow): OutageRecord {
  return { id: row.id, channel: row.channel, start: row.started_at, end: row.ended_at, durationMs: row.duration_ms, cause: row.cause };
}
