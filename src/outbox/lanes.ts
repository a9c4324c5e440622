/**
 * The ledger of what is queued, kept in memory so that stats, admission and peeks never count rows:
 * per lane (a channel at one priority) its count, stored bytes, oldest queue-clock stamp and leased
 * prefix; per channel and in total the count and bytes. Every change is made in the transaction that
 * changes the rows, and a `checkpoint` taken before it restores the ledger if that transaction rolls back.
 * Each lane's count and bytes are also persisted (`outbox_lane_totals`), by `write` at the end of
 * that transaction, so that a start can load them without counting the rows.
 */

export interface Lane {
  channel: string;
  priority: number;
  count: number;
  bytes: number;
  /** The queue-clock stamp (`mono`) of the first message in delivery order; undefined: unknown (read on demand). */
  oldest: number | undefined;
  /**
   * Every row of the lane with a smaller seq is leased, so `peekBatch` starts reading there: with a
   * batch or two in flight it would otherwise read past all of them again for every new batch.
   * Raised by `peekBatch`; lowered when a lease is released with its row still queued and when a
   * row is inserted below it (SQLite may reuse the seq of deleted rows at the end of the table).
   */
  leasedBelow: number;
}

export interface Totals {
  count: number;
  bytes: number;
}

/** What a message weighs in the ledger. */
export interface LaneEntry {
  channel: string;
  priority: number;
  bytes: number;
}

interface LaneState {
  lanes: Map<string, Lane>;
  channels: Map<string, Totals>;
  total: Totals;
  /** Lanes whose count or bytes changed since they were last persisted. */
  dirty: Set<string>;
  /** The persisted totals are to be replaced whole (after a recount). */
  rewrite: boolean;
}

/** Persists lane totals: `set` one lane's (count 0: it is removed), `clear` all of them. */
export interface LaneTotalsStore {
  set(channel: string, priority: number, count: number, bytes: number): void;
  clear(): void;
}

const SEP = '\u0000';
const laneKey = (channel: string, priority: number): string => `${channel}${SEP}${priority}`;

function copyOf(s: LaneState): LaneState {
  return {
    lanes: new Map([...s.lanes].map(([k, l]) => [k, { ...l }])),
    channels: new Map([...s.channels].map(([k, t]) => [k, { ...t }])),
    total: { ...s.total },
    dirty: new Set(s.dirty),
    rewrite: s.rewrite,
  };
}

const emptyState = (): LaneState => ({ lanes: new Map(), channels: new Map(), total: { count: 0, bytes: 0 }, dirty: new Set(), rewrite: false });

export class Lanes {
  private s: LaneState = emptyState();

  /**
   * `probeOldest`: the queue-clock stamp of a lane's first row (an index probe), for a lane whose first row
   * changed. `store`: where `write` persists the totals (none: kept in memory only).
   */
  constructor(
    private readonly probeOldest: (channel: string, priority: number) => number | undefined,
    private readonly store?: LaneTotalsStore,
    /** Told the seq of every row inserted (freshness-first drains under way watch it: episodes.ts). */
    private readonly onInsert?: (seq: number) => void,
  ) {}

  /** The totals per lane at open (persisted, or counted from the rows). */
  load(rows: Iterable<{ channel: string; priority: number; n: number; b: number }>): void {
    for (const r of rows) {
      this.s.lanes.set(laneKey(r.channel, r.priority), { channel: r.channel, priority: r.priority, count: r.n, bytes: r.b, oldest: undefined, leasedBelow: 0 });
      const ch = this.channelTotals(r.channel);
      ch.count += r.n;
      ch.bytes += r.b;
      this.s.total.count += r.n;
      this.s.total.bytes += r.b;
    }
  }

  /** A row was inserted at `seq`. */
  add(channel: string, priority: number, bytes: number, queuedAt: number, seq: number | bigint): void {
    const key = laneKey(channel, priority);
    let lane = this.s.lanes.get(key);
    if (!lane) {
      lane = { channel, priority, count: 0, bytes: 0, oldest: undefined, leasedBelow: 0 };
      this.s.lanes.set(key, lane);
    }
    if (Number(seq) < lane.leasedBelow) lane.leasedBelow = Number(seq);
    this.onInsert?.(Number(seq));
    if (lane.count === 0) lane.oldest = queuedAt;
    lane.count++;
    lane.bytes += bytes;
    this.s.dirty.add(key);
    const ch = this.channelTotals(channel);
    ch.count++;
    ch.bytes += bytes;
    this.s.total.count++;
    this.s.total.bytes += bytes;
  }

  /** A row was deleted (delivered, dropped, expired, parked, merged). */
  remove(v: LaneEntry): void {
    const key = laneKey(v.channel, v.priority);
    const lane = this.s.lanes.get(key);
    if (lane) {
      lane.count--;
      lane.bytes -= v.bytes;
      lane.oldest = undefined;
      this.s.dirty.add(key);
    }
    const ch = this.s.channels.get(v.channel);
    if (ch) {
      ch.count--;
      ch.bytes -= v.bytes;
    }
    this.s.total.count--;
    this.s.total.bytes -= v.bytes;
  }

  /** A row's payload was rewritten to `delta` more (or fewer) stored bytes. */
  resize(channel: string, priority: number, delta: number): void {
    const key = laneKey(channel, priority);
    const lane = this.s.lanes.get(key);
    const ch = this.s.channels.get(channel);
    if (lane) {
      lane.bytes += delta;
      this.s.dirty.add(key);
    }
    if (ch) ch.bytes += delta;
    this.s.total.bytes += delta;
  }

  /** Forgets a lane's oldest stamp: it is probed again when asked. */
  forgetOldest(channel: string, priority: number): void {
    const lane = this.s.lanes.get(laneKey(channel, priority));
    // Stryker disable next-line all: equivalent: retryParked puts its row at the end (new seq), so the lane's first row and its age are unchanged (add set it when the lane was empty).
    if (lane) lane.oldest = undefined;
  }

  /** The row at `seq` is back in the queue (a nack, a lapsed lease): the lane's scan must see it again. */
  requeued(channel: string, priority: number, seq: number): void {
    const lane = this.s.lanes.get(laneKey(channel, priority));
    if (lane && seq < lane.leasedBelow) lane.leasedBelow = seq;
  }

  /** Every row of `lane` below `seq` is leased now (a peek leased them). */
  leasedUpTo(lane: Lane, seq: number): void {
    if (seq > lane.leasedBelow) lane.leasedBelow = seq;
  }

  /** Lanes holding messages. */
  nonEmpty(): Lane[] {
    return [...this.s.lanes.values()].filter((l) => l.count > 0);
  }

  channel(name: string): Readonly<Totals> | undefined {
    return this.s.channels.get(name);
  }

  /** Channels that ever held a message since the outbox opened (or at open). */
  channelNames(): IterableIterator<string> {
    return this.s.channels.keys();
  }

  get total(): Readonly<Totals> {
    return this.s.total;
  }

  /** The queue-clock stamp of the lane's first message (probed once after the first row changed). */
  oldest(lane: Lane): number | undefined {
    if (lane.oldest === undefined && lane.count > 0) lane.oldest = this.probeOldest(lane.channel, lane.priority);
    return lane.oldest;
  }

  /**
   * Counted from the rows again: every lane's count and bytes (a lane not in `rows` holds nothing),
   * persisted whole at the next `write`. Leased prefixes are kept; oldest times are probed again.
   */
  recount(rows: Iterable<{ channel: string; priority: number; n: number; b: number }>): void {
    const counted = new Map<string, { n: number; b: number }>();
    const s = this.s;
    for (const r of rows) {
      const key = laneKey(r.channel, r.priority);
      counted.set(key, { n: r.n, b: r.b });
      if (!s.lanes.has(key)) s.lanes.set(key, { channel: r.channel, priority: r.priority, count: 0, bytes: 0, oldest: undefined, leasedBelow: 0 });
    }
    s.channels = new Map();
    s.total = { count: 0, bytes: 0 };
    for (const [key, lane] of s.lanes) {
      const c = counted.get(key);
      lane.count = c?.n ?? 0;
      lane.bytes = c?.b ?? 0;
      lane.oldest = undefined;
      const ch = this.channelTotals(lane.channel);
      ch.count += lane.count;
      ch.bytes += lane.bytes;
      s.total.count += lane.count;
      s.total.bytes += lane.bytes;
    }
    s.rewrite = true;
  }

  /** Persists what changed since the last write (in the transaction that changed it). */
  write(): void {
    const s = this.s;
    if (!this.store) return;
    if (s.rewrite) {
      this.store.clear();
      for (const l of s.lanes.values()) if (l.count > 0) this.store.set(l.channel, l.priority, l.count, l.bytes);
    } else {
      for (const key of s.dirty) {
        const l = s.lanes.get(key);
        if (l) this.store.set(l.channel, l.priority, l.count, l.bytes);
      }
    }
    s.dirty.clear();
    s.rewrite = false;
  }

  /** Something is yet to be persisted. */
  get unwritten(): boolean {
    return this.s.rewrite || this.s.dirty.size > 0;
  }

  /** Saves the ledger; the returned function puts it back as it was (as often as called). */
  checkpoint(): () => void {
    const saved = copyOf(this.s);
    return () => {
      this.s = copyOf(saved);
    };
  }

  private channelTotals(channel: string): Totals {
    let ch = this.s.channels.get(channel);
    if (!ch) {
      ch = { count: 0, bytes: 0 };
      this.s.channels.set(channel, ch);
    }
    return ch;
  }
}

/**
 * Merges lanes by seq, reading each in chunks (the first of `chunk` rows, each next one twice as
 * large, up to 512), so no more than a few hundred rows per lane are ever in memory.
 */
export function* mergeLanes<R extends { seq: number }, L = Lane>(
  lanes: L[],
  fetch: (lane: L, after: number, limit: number) => R[],
  chunk = 64,
  from: (lane: L) => number = () => 0,
): Generator<R> {
  const cursors = lanes.map((lane) => ({ lane, after: from(lane) - 1, buf: [] as R[], i: 0, done: false, size: chunk }));
  for (;;) {
    let best: (typeof cursors)[number] | undefined;
    let bestRow: R | undefined;
    for (const c of cursors) {
      if (c.i >= c.buf.length) {
        if (c.done) continue;
        c.buf = fetch(c.lane, c.after, c.size);
        c.i = 0;
        if (c.buf.length < c.size) c.done = true;
        c.size = Math.min(512, c.size * 2);
        if (c.buf.length === 0) continue;
      }
      const row = c.buf[c.i] as R;
      if (!bestRow || row.seq < bestRow.seq) {
        best = c;
        bestRow = row;
      }
    }
    if (!best || !bestRow) return;
    best.i++;
    best.after = bestRow.seq;
    yield bestRow;
  }
}
