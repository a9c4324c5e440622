/**
 * The newest queued message of each stream of the channels that drain freshness first
 * (docs/outbox.md, "Freshness-first drain"), so that finding them after an outage reads a few
 * rows instead of a million. An enqueue notes the streams whose head moved; their rows of
 * `outbox_stream_heads` are written at the end of its transaction (one upsert per stream per
 * group commit, not per message) and the in-memory map takes them once it committed. A head is
 * never deleted with its message: a head whose row is gone (delivered, dropped, replaced) or whose
 * seq now holds another stream's row is found so when an episode begins, and forgotten then.
 */

/** A stream's newest message: `stream` is '' for a channel's single stream (messages without one). */
export interface StreamHead {
  channel: string;
  stream: string;
  seq: number;
}

/** Where heads are persisted (outbox-sql.ts statements). */
export interface StreamHeadsStore {
  set(head: StreamHead): void;
  delete(channel: string, stream: string): void;
}

const SEP = '\u0000';
const keyOf = (channel: string, stream: string): string => `${channel}${SEP}${stream}`;

export class StreamHeads {
  private readonly committed = new Map<string, StreamHead>();
  /** Heads moved by the transaction under way, applied to `committed` once it commits. */
  private pending = new Map<string, StreamHead>();

  constructor(
    /** Whether a channel's heads are kept (its `freshFirst`). */
    private readonly optIn: (channel: string) => boolean,
    private readonly store: StreamHeadsStore,
  ) {}

  /** The persisted heads at open. */
  load(rows: Iterable<StreamHead>): void {
    for (const h of rows) this.committed.set(keyOf(h.channel, h.stream), { ...h });
  }

  /** A message of `stream` (null: the channel's single stream) was inserted at `seq`: the newest of its stream. */
  moved(channel: string, stream: string | null, seq: number): void {
    if (!this.optIn(channel)) return;
    const s = stream ?? '';
    this.pending.set(keyOf(channel, s), { channel, stream: s, seq });
  }

  /** Saves the transaction's pending heads; the returned function puts them back (a rollback). */
  checkpoint(): () => void {
    const saved = this.pending.size === 0 ? undefined : new Map(this.pending);
    return () => {
      this.pending = saved ? new Map(saved) : new Map();
    };
  }

  /** Writes the moved heads (at the end of the transaction that moved them). */
  write(): void {
    for (const h of this.pending.values()) this.store.set(h);
  }

  /** The transaction committed: its heads are the heads now. */
  settle(): void {
    if (this.pending.size === 0) return;
    for (const [k, h] of this.pending) this.committed.set(k, h);
    this.pending = new Map();
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
        this.store.delete(h.channel, h.stream);
      }
    }
  }

  get size(): number {
    return this.committed.size;
  }
}
