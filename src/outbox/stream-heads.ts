/**
 * The newest queued message of each stream of the channels that drain freshness first
 * (docs/outbox.md, "Freshness-first drain"), so that finding them after an outage reads a few
 * rows instead of a million. An enqueue notes the streams whose head moved; the map in memory takes
 * them once its transaction committed.
 *
 * Persisting them is amortised: an upsert per stream per commit cost up to 3 µs a message with many
 * streams. `outbox_stream_heads` is written at the end of a transaction at most every `flushMs`
 * (and at close), together with a mark: the highest seq then queued, every head of a row at or below
 * it written. A start loads the heads and reads the rows above the mark (what was queued since the last
 * write: at most `flushMs` of enqueues) to bring them up to date. Stale heads are harmless anyway: a
 * head is never deleted with its message, and one whose row is gone (delivered, dropped) or holds
 * another stream's row is found so when an episode begins, and forgotten then.
 */

/** A stream's newest message: `stream` is '' for a channel's single stream (messages without one). */
export interface StreamHead {
  channel: string;
  stream: string;
  seq: number;
}

/** Where heads are persisted (outbox-sql.ts statements). The mark is the row ('', '', seq): no channel is named ''. */
export interface StreamHeadsStore {
  set(head: StreamHead): void;
  delete(channel: string, stream: string): void;
  /** The highest seq queued now. */
  maxSeq(): number;
}

export interface StreamHeadsOptions {
  /** Whether a channel's heads are kept (its `freshFirst`). */
  optIn: (channel: string) => boolean;
  store: StreamHeadsStore;
  /** Monotonic ms (the clock's). */
  now: () => number;
  /** Write the heads at most this often (default 250 ms). */
  flushMs?: number;
}

const SEP = '\u0000';
const keyOf = (channel: string, stream: string): string => `${channel}${SEP}${stream}`;

export class StreamHeads {
  private readonly committed = new Map<string, StreamHead>();
  /** Committed heads not yet written to the table. */
  private unwritten = new Map<string, StreamHead>();
  /** Heads moved by the transaction under way. */
  private pending = new Map<string, StreamHead>();
  /** The transaction under way wrote them all (cleared by its rollback). */
  private writing = false;
  private lastWrite = -Infinity;
  private force = false;

  constructor(private readonly o: StreamHeadsOptions) {}

  /** At open: the persisted heads and mark (`rows`), then `tail(mark)`, the rows queued above the mark, newest first. */
  load(rows: Iterable<StreamHead>, tail: (after: number) => Iterable<{ seq: number; channel: string; stream: string | null }>): void {
    let mark = 0;
    for (const h of rows) {
      if (h.channel === '') mark = h.seq;
      else this.committed.set(keyOf(h.channel, h.stream), { ...h });
    }
    // Newest first: the first row of a stream is its head.
    const found = new Set<string>();
    for (const r of tail(mark)) {
      const k = keyOf(r.channel, r.stream ?? '');
      if (found.has(k) || !this.o.optIn(r.channel)) continue;
      found.add(k);
      const h = { channel: r.channel, stream: r.stream ?? '', seq: r.seq };
      this.committed.set(k, h);
      this.unwritten.set(k, h);
    }
  }

  /** A message of `stream` (null: the channel's single stream) was inserted at `seq`: the newest of its stream. */
  moved(channel: string, stream: string | null, seq: number): void {
    if (!this.o.optIn(channel)) return;
    const s = stream ?? '';
    this.pending.set(keyOf(channel, s), { channel, stream: s, seq });
  }

  /** Saves the transaction's pending heads; the returned function puts them back (a rollback). */
  checkpoint(): () => void {
    const saved = this.pending.size === 0 ? undefined : new Map(this.pending);
    return () => {
      this.pending = saved ? new Map(saved) : new Map();
      this.writing = false;
    };
  }

  /** At the end of a transaction: writes every head not yet written, with the mark, when due. */
  write(): void {
    if (this.pending.size === 0 && this.unwritten.size === 0) return;
    if (!this.force && this.o.now() - this.lastWrite < (this.o.flushMs ?? 250)) return;
    for (const h of this.unwritten.values()) if (!this.pending.has(keyOf(h.channel, h.stream))) this.o.store.set(h);
    for (const h of this.pending.values()) this.o.store.set(h);
    this.o.store.set({ channel: '', stream: '', seq: this.o.store.maxSeq() });
    this.writing = true;
  }

  /** The transaction committed: its heads are the heads now. */
  settle(): void {
    if (this.writing) {
      this.unwritten = new Map();
      this.lastWrite = this.o.now();
      this.force = false;
    } else for (const [k, h] of this.pending) this.unwritten.set(k, h);
    for (const [k, h] of this.pending) this.committed.set(k, h);
    this.pending = new Map();
    this.writing = false;
  }

  /** The next transaction writes them whatever the time (a clean close). */
  writeNext(): void {
    this.force = true;
  }

  /** Heads not yet written. */
  get unwrittenCount(): number {
    return this.unwritten.size;
  }

  /** The committed heads of the channels `wanted` says yes to. */
  of(wanted: (channel: string) => boolean): StreamHead[] {
    return [...this.committed.values()].filter((h) => wanted(h.channel));
  }

  /** Forgets heads whose row is gone (memory first: a stale row in the table is harmless, it is checked again). */
  forget(heads: readonly StreamHead[]): void {
    for (const h of heads) {
      const k = keyOf(h.channel, h.stream);
      if (this.committed.get(k)?.seq === h.seq) {
        this.committed.delete(k);
        this.unwritten.delete(k);
        this.o.store.delete(h.channel, h.stream);
      }
    }
  }
}
