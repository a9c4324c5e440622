import { addToDigest } from './ledger.js';
import type { DropCounts } from './limits.js';

/**
 * Counters kept in `outbox_counters`, written in the transaction of the change they count. `accepted`:
 * messages the outbox took (queued, or counted as an `offline` drop on arrival); `digest`: the loss
 * ledger's sum of the delivered ids' hashes (ledger.ts), not a count. Drops by
 * reason: `count`, `bytes`, `disk`, `expired` (ttl), `parkedLimit`, `purged` (parked ones an operator deleted), `corrupt` (lost with a damaged database,
 * counted by the salvage: salvage-losses.ts), `offline` (not queued: produced while the cloud was unreachable with `enableQueue: false`); `overflow` is the count and bytes
 * drops of databases from before they were told apart, shown as `count`.
 */
export const COUNTERS = [
  'accepted',
  'delivered',
  'overflow',
  'count',
  'bytes',
  'disk',
  'expired',
  'parked',
  'parkedLimit',
  'purged',
  'corrupt',
  'coalesced',
  'downsampled',
  'offline',
  'digest',
] as const;
export type CounterName = (typeof COUNTERS)[number];
export type Counters = Record<CounterName, number>;

/** Counters that are drops: the drop reporter hears of them once their transaction commits. */
const DROPS: ReadonlySet<CounterName> = new Set<CounterName>(['count', 'bytes', 'disk', 'expired', 'parkedLimit', 'purged', 'corrupt', 'offline']);

export const zeroCounters = (): Counters => ({
  accepted: 0,
  delivered: 0,
  overflow: 0,
  count: 0,
  bytes: 0,
  disk: 0,
  expired: 0,
  parked: 0,
  parkedLimit: 0,
  purged: 0,
  corrupt: 0,
  coalesced: 0,
  downsampled: 0,
  offline: 0,
  digest: 0,
});
export const dropsOf = (c: Counters): DropCounts => ({
  count: c.count,
  bytes: c.bytes,
  disk: c.disk,
  ttl: c.expired,
  parkedLimit: c.parkedLimit,
  purged: c.purged,
  corrupt: c.corrupt,
  offline: c.offline,
});

interface CounterState {
  counters: Map<string, Counters>;
  /** Messages in the parked table now, per channel. */
  parked: Map<string, number>;
  /** Per channel, the counters that changed since they were last written (an enqueue changes only `accepted`: one upsert, not the channel's dozen). */
  dirty: Map<string, Set<CounterName>>;
}

function copyOf(s: CounterState): CounterState {
  return {
    counters: new Map([...s.counters].map(([k, c]) => [k, { ...c }])),
    parked: new Map(s.parked),
    dirty: new Map([...s.dirty].map(([k, d]) => [k, new Set(d)])),
  };
}

/**
 * The outbox's counters per channel (what was delivered, dropped by reason, expired, parked, ...)
 * and the number of parked messages, in memory, written to `outbox_counters` at the end of the
 * transaction that changed them and restored with it by a `checkpoint`.
 */
export class OutboxCounters {
  private s: CounterState = { counters: new Map(), parked: new Map(), dirty: new Map() };
  /** Something was dropped in the transaction under way (the reporter hears of it once it commits). */
  private dropping = false;

  /** `store`: writes one counter (an upsert, in the caller's transaction). */
  constructor(private readonly store: (channel: string, counter: CounterName, value: number) => void) {}

  /** The persisted counters and the parked table's counts, at open. Unknown counter names are ignored. */
  load(counters: Iterable<{ channel: string; counter: string; value: number }>, parked: Iterable<{ channel: string; n: number }>): void {
    for (const r of counters) {
      if (!(COUNTERS as readonly string[]).includes(r.counter)) continue;
      const c = this.s.counters.get(r.channel) ?? zeroCounters();
      c[r.counter as CounterName] = r.value;
      this.s.counters.set(r.channel, c);
    }
    for (const r of parked) this.s.parked.set(r.channel, r.n);
  }

  bump(channel: string, counter: CounterName, by = 1): void {
    let c = this.s.counters.get(channel);
    if (!c) {
      c = zeroCounters();
      this.s.counters.set(channel, c);
    }
    c[counter] += by;
    const dirty = this.s.dirty.get(channel);
    if (dirty) dirty.add(counter);
    else this.s.dirty.set(channel, new Set([counter]));
    if (DROPS.has(counter)) this.dropping = true;
  }

  /** Adds a delivered id to its channel's digest (ledger.ts); the ack that counts it as delivered does this too. */
  digest(channel: string, id: string): void {
    this.bump(channel, 'digest', 0);
    const c = this.s.counters.get(channel) as Counters;
    c.digest = addToDigest(c.digest, id);
  }

  of(channel: string): Readonly<Counters> | undefined {
    return this.s.counters.get(channel);
  }

  /** Channels with counters or parked messages. */
  channelNames(): string[] {
    return [...this.s.counters.keys(), ...this.s.parked.keys()];
  }

  /** The drop counts of every channel, for the drop reporter. */
  dropTotals(): [string, DropCounts][] {
    return [...this.s.counters].map(([ch, c]) => [ch, dropsOf(c)]);
  }

  parkedOf(channel: string): number {
    return this.s.parked.get(channel) ?? 0;
  }

  /** `n` more (or, negative, fewer) messages of `channel` in the parked table. */
  addParked(channel: string, n: number): void {
    this.s.parked.set(channel, (this.s.parked.get(channel) ?? (n < 0 ? 1 : 0)) + n);
  }

  parkedTotal(): number {
    let n = 0;
    for (const v of this.s.parked.values()) n += v;
    return n;
  }

  /** Writes the counters that changed since the last write. */
  write(): void {
    for (const [channel, names] of this.s.dirty) {
      const c = this.s.counters.get(channel);
      if (!c) continue;
      for (const name of names) this.store(channel, name, c[name]);
    }
    this.s.dirty.clear();
  }

  /** True (once) when the transaction that just committed dropped something. */
  takeDrops(): boolean {
    const d = this.dropping;
    this.dropping = false;
    return d;
  }

  /** The transaction under way rolled back: its drops never happened. */
  discardDrops(): void {
    this.dropping = false;
  }

  /** Saves the counters; the returned function puts them back as they were (as often as called). */
  checkpoint(): () => void {
    const saved = copyOf(this.s);
    return () => {
      this.s = copyOf(saved);
    };
  }
}
