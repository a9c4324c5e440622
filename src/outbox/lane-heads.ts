/** A row of a lane as drop planning reads it. */
export interface KeyRow {
  seq: number;
  bytes: number;
}

/** Reads up to `limit` rows of a lane with a seq above `after`, in seq order (outbox-sql.ts `laneKeys`). */
export type ReadLane = (channel: string, priority: number, after: number, limit: number) => KeyRow[];

/** Every row of a lane with `from < seq <= tail`, in seq order. */
interface Head {
  from: number;
  tail: number;
  rows: KeyRow[];
}

const keyOf = (channel: string, priority: number): string => `${channel}\u0000${priority}`;

/**
 * The first rows of the lanes, read once and shared by the drop plans of one group commit's
 * messages. Into a full queue every message drops the oldest: without this, each read its victim
 * with a query of its own, the largest part of the extra CPU of an enqueue into a full queue.
 * It holds only while nothing but its owner changes the lanes' rows (inside one transaction, with
 * the owner reporting each row it inserts or deletes), and must be cleared when a savepoint rolls
 * back.
 */
export class LaneHeads {
  private readonly heads = new Map<string, Head>();

  /** `readAhead`: rows read past what is asked, for the next messages of the commit. */
  constructor(
    private readonly read: ReadLane,
    private readonly readAhead = 64,
  ) {}

  /** Like `ReadLane`, from memory where it can. */
  rows(channel: string, priority: number, after: number, limit: number): KeyRow[] {
    const key = keyOf(channel, priority);
    let h = this.heads.get(key);
    if (!h || after < h.from || after > h.tail) {
      h = { from: after, tail: after, rows: [] };
      this.heads.set(key, h);
    }
    let i = 0;
    while (i < h.rows.length && (h.rows[i] as KeyRow).seq <= after) i++;
    const out = h.rows.slice(i, i + limit);
    if (out.length < limit) {
      const more = this.read(channel, priority, h.tail, Math.max(limit - out.length, this.readAhead));
      for (const r of more) h.rows.push({ seq: r.seq, bytes: r.bytes });
      if (more.length > 0) h.tail = (more[more.length - 1] as KeyRow).seq;
      out.push(...more.slice(0, limit - out.length));
    }
    return out;
  }

  /** A row was inserted (a seq at or below what was read: SQLite reuses the seq of rows deleted at the table's end). */
  inserted(channel: string, priority: number, seq: number, bytes: number): void {
    const h = this.heads.get(keyOf(channel, priority));
    if (!h || seq <= h.from || seq > h.tail) return;
    let i = h.rows.length;
    while (i > 0 && (h.rows[i - 1] as KeyRow).seq > seq) i--;
    h.rows.splice(i, 0, { seq, bytes });
  }

  /** A row was deleted. */
  deleted(channel: string, priority: number, seq: number): void {
    const h = this.heads.get(keyOf(channel, priority));
    if (!h) return;
    const i = h.rows.findIndex((r) => r.seq === seq);
    if (i >= 0) h.rows.splice(i, 1);
  }

  /** Forgets every lane (their rows changed behind its back: a savepoint rolled back). */
  clear(): void {
    this.heads.clear();
  }
}
