import type { Database, Statement } from 'better-sqlite3';

/**
 * The devcloud's device logs (docs/protocol.md, "Logs"): log messages deduplicated by id per device,
 * and every line of each message stored the first time, in arrival order. Lines are never
 * deduplicated by `seq`, so a device that sends one seq under two message ids shows it twice.
 */

/** `stdout`/`stderr` from a workload, `marker` for lines dropped, or a level of the agent's own log. */
export type LogStream = 'stdout' | 'stderr' | 'marker' | 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

export interface IncomingLogLine {
  seq: number;
  ts: number;
  stream: LogStream;
  line: string;
  /** Markers only: how many lines this one stands for, and why they were dropped. */
  dropped?: number;
  reason?: string;
}

export interface IncomingLogMessage {
  id: string;
  ts: number;
  /** `agent`, or `<app>/<service>` for a workload. */
  service: string;
  backfill?: true;
  lines: IncomingLogLine[];
}

export interface StoredLogLine extends IncomingLogLine {
  service: string;
  /** The id of the log message that carried the line. */
  messageId: string;
}

export interface LogPage {
  lines: StoredLogLine[];
  /** Whether more lines match than `limit` returned. */
  more: boolean;
}

/** The filters of `GET /admin/devices/:uuid/logs`, validated (logs.ts). */
export interface LogFilter {
  service?: string;
  /** Line ts >= since. */
  since?: number;
  /** Line ts < until. */
  until?: number;
  /** With `service`: lines with seq > afterSeq. */
  afterSeq?: number;
  limit: number;
}

export interface LogServiceSummary {
  service: string;
  lines: number;
  firstSeq: number;
  lastSeq: number;
  lastTs: number;
  messages: number;
}

export interface LogCounts {
  /** Every log message in a valid request: stored, duplicate or rejected. */
  received: number;
  /** Log messages stored. */
  unique: number;
  duplicates: number;
  rejected: number;
  /** Valid requests. */
  batches: number;
  /** Lines stored. */
  lines: number;
}

interface LineRow {
  service: string;
  seq: number;
  ts: number;
  stream: LogStream;
  line: string;
  dropped: number | null;
  reason: string | null;
  message_id: string;
}

export class LogStore {
  private readonly stmt: Record<'insertMessage' | 'insertLine' | 'ids' | 'countMessages' | 'countLines' | 'services', Statement>;
  /** The line queries, one per combination of filters. */
  private readonly lineQueries = new Map<string, Statement>();

  constructor(
    private readonly db: Database,
    private readonly now: () => number,
    private readonly bump: (uuid: string, name: string, by: number) => void,
  ) {
    this.stmt = {
      insertMessage: db.prepare(
        `INSERT INTO log_messages (device, id, service, ts, backfill, received_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (device, id) DO NOTHING`,
      ),
      insertLine: db.prepare(
        `INSERT INTO log_lines (device, service, seq, ts, stream, line, dropped, reason, message_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      ids: db.prepare('SELECT id FROM log_messages WHERE device = ?').pluck(),
      countMessages: db.prepare('SELECT count(*) FROM log_messages WHERE device = ?').pluck(),
      countLines: db.prepare('SELECT count(*) FROM log_lines WHERE device = ?').pluck(),
      services: db.prepare(
        `SELECT service, count(*) AS lines, min(seq) AS firstSeq, max(seq) AS lastSeq, max(ts) AS lastTs,
                count(DISTINCT message_id) AS messages
         FROM log_lines WHERE device = ? GROUP BY service ORDER BY service`,
      ),
    };
  }

  /**
   * Stores a request's log messages in one transaction. A message whose id this device sent before
   * is a duplicate: its lines are not stored again. `rejectedCount` messages are counted, never stored.
   */
  add(uuid: string, accepted: readonly IncomingLogMessage[], rejectedCount: number): { stored: number; duplicates: number } {
    return this.db.transaction(() => {
      const at = this.now();
      let stored = 0;
      for (const m of accepted) {
        if (this.stmt.insertMessage.run(uuid, m.id, m.service, m.ts, m.backfill ? 1 : 0, at).changes === 0) continue;
        stored++;
        for (const l of m.lines) {
          this.stmt.insertLine.run(uuid, m.service, l.seq, l.ts, l.stream, l.line, l.dropped ?? null, l.reason ?? null, m.id);
        }
      }
      const duplicates = accepted.length - stored;
      this.bump(uuid, 'logs.batches', 1);
      this.bump(uuid, 'logs.received', accepted.length + rejectedCount);
      this.bump(uuid, 'logs.duplicates', duplicates);
      this.bump(uuid, 'logs.rejected', rejectedCount);
      return { stored, duplicates };
    })();
  }

  /** Lines ordered by service, seq, then arrival; at most `limit`. */
  lines(uuid: string, filter: LogFilter): LogPage {
    const where = ['device = ?'];
    const args: unknown[] = [uuid];
    const add = (clause: string, value: unknown): void => {
      if (value === undefined) return;
      where.push(clause);
      args.push(value);
    };
    add('service = ?', filter.service);
    add('ts >= ?', filter.since);
    add('ts < ?', filter.until);
    add('seq > ?', filter.afterSeq);
    const sql = `SELECT service, seq, ts, stream, line, dropped, reason, message_id FROM log_lines
                 WHERE ${where.join(' AND ')} ORDER BY service, seq, arrival LIMIT ?`;
    let query = this.lineQueries.get(sql);
    if (!query) {
      query = this.db.prepare(sql);
      this.lineQueries.set(sql, query);
    }
    const rows = query.all(...args, filter.limit + 1) as LineRow[];
    return { lines: rows.slice(0, filter.limit).map(toLine), more: rows.length > filter.limit };
  }

  /** Per service: lines stored, first and last seq, newest line ts and log messages. */
  services(uuid: string): LogServiceSummary[] {
    return this.stmt.services.all(uuid) as LogServiceSummary[];
  }

  /** The ids of the log messages stored: what the agent's loss ledger counts for its `logs` channel. */
  ids(uuid: string): IterableIterator<string> {
    return this.stmt.ids.iterate(uuid) as IterableIterator<string>;
  }

  counts(uuid: string, counter: (name: string) => number): LogCounts {
    return {
      received: counter('logs.received'),
      unique: this.stmt.countMessages.get(uuid) as number,
      duplicates: counter('logs.duplicates'),
      rejected: counter('logs.rejected'),
      batches: counter('logs.batches'),
      lines: this.stmt.countLines.get(uuid) as number,
    };
  }
}

function toLine(r: LineRow): StoredLogLine {
  return {
    service: r.service,
    seq: r.seq,
    ts: r.ts,
    stream: r.stream,
    line: r.line,
    ...(r.dropped !== null ? { dropped: r.dropped } : {}),
    ...(r.reason !== null ? { reason: r.reason } : {}),
    messageId: r.message_id,
  };
}
