/**
 * One freshness-first drain (docs/outbox.md, "Freshness-first drain"): what a flusher sends after
 * the cloud returns. First the newest message of each stream of the channels that opt in (`heads`,
 * highest priority first), then what was queued after the return (live), then the history oldest
 * first, each message of which is marked `backfill`. Memory holds the heads (one per stream), never
 * the backlog: live and history are told apart by seq (`liveFrom`).
 */

/** A stream's newest message when the episode began. */
export interface EpisodeHead {
  seq: number;
  channel: string;
  priority: number;
  stream: string;
}

export class FreshEpisode {
  /** Every row above it was queued after the return; every row at or below it, before. */
  private live: number;
  private pending: EpisodeHead[];
  /** Heads found no longer queued: skipped, and dropped from `pending` once they are half of it. */
  private readonly gone = new Set<number>();
  private readonly headSeqs: Set<number>;
  private open = true;

  constructor(
    /** The highest seq queued when the episode began (0: empty queue). */
    startSeq: number,
    heads: readonly EpisodeHead[],
    /** The channels whose messages this episode orders (opt-in, and carried by the flusher's sink). */
    private readonly channels: ReadonlySet<string>,
    private readonly onClose: (e: FreshEpisode) => void = () => undefined,
  ) {
    this.live = startSeq;
    this.pending = [...heads].sort((a, b) => b.priority - a.priority || a.seq - b.seq);
    this.headSeqs = new Set(heads.map((h) => h.seq));
  }

  get liveFrom(): number {
    return this.live;
  }

  get active(): boolean {
    return this.open;
  }

  /**
   * A row was inserted at `seq`. SQLite gives a new row the highest seq plus one, so once the
   * newest rows were delivered a new one may get a seq at or below the start: everything above it
   * is new then, and the line moves down to keep "above is live" true.
   */
  inserted(seq: number): void {
    if (seq <= this.live) this.live = seq - 1;
  }

  /** Whether `channel` is ordered freshness first in this episode. */
  orders(channel: string): boolean {
    return this.channels.has(channel);
  }

  /** Whether the row at `seq` was the newest of its stream when the episode began (never marked backfill). */
  isHead(seq: number): boolean {
    return this.headSeqs.has(seq);
  }

  /** The heads not yet found delivered, in sending order (lazily: `isGone` may be called while iterating). */
  *heads(): Generator<EpisodeHead> {
    for (const h of this.pending) if (!this.gone.has(h.seq)) yield h;
  }

  /** The head at `seq` is no longer queued (delivered, dropped): it is not looked for again. */
  isGone(seq: number): void {
    this.gone.add(seq);
    // Stryker disable next-line all: compaction only bounds the cost of skipping; the heads yielded are the same
    if (this.gone.size > this.pending.length / 2) this.compact();
  }

  private compact(): void {
    this.pending = this.pending.filter((h) => !this.gone.has(h.seq));
    this.gone.clear();
  }

  /** The flusher is done with it (a new episode began, or it stopped). */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.onClose(this);
  }
}
