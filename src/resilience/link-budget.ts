import type { Clock } from '../util/clock.js';
import type { CounterSample } from './link-counters.js';

export type BudgetPeriodKind = 'day' | 'month';

/** One period's use, as kept in the store. `period` is "month:2026-12" or "day:2026-12-06". */
export interface BudgetRecord {
  period: string;
  startsAt: number;
  endsAt: number;
  usedBytes: number;
}

/** The counter reading the use was last brought up to. */
export interface CounterBaseline extends CounterSample {
  bootId: string;
}

export interface BudgetStore {
  /** The newest period of `kind` kept, if any. */
  latest(kind: BudgetPeriodKind): BudgetRecord | undefined;
  baseline(): CounterBaseline | null;
  /** Writes the period's use and the baseline together (one transaction). */
  write(record: BudgetRecord, baseline: CounterBaseline | null, now: number): void;
  pruneOld(kind: BudgetPeriodKind): void;
}

export interface BudgetView {
  period: BudgetPeriodKind;
  /** 0: no cap (only the channel filter applies). */
  limitBytes: number;
  usedBytes: number;
  /** null without a cap. */
  remainingBytes: number | null;
  /** Epoch ms (UTC) at which the use starts again from 0. */
  resetsAt: number;
}

const pad = (n: number, w = 2): string => String(n).padStart(w, '0');

/** The UTC calendar day or month holding `ms`. */
export function periodAt(ms: number, kind: BudgetPeriodKind): BudgetRecord {
  const d = new Date(ms);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  if (kind === 'month') return { period: `month:${pad(y, 4)}-${pad(m + 1)}`, startsAt: Date.UTC(y, m, 1), endsAt: Date.UTC(y, m + 1, 1), usedBytes: 0 };
  const day = d.getUTCDate();
  return { period: `day:${pad(y, 4)}-${pad(m + 1)}-${pad(day)}`, startsAt: Date.UTC(y, m, day), endsAt: Date.UTC(y, m, day + 1), usedBytes: 0 };
}

export interface LinkBudgetOptions {
  store: BudgetStore;
  clock: Pick<Clock, 'now' | 'monotonic' | 'bootId'>;
  kind: BudgetPeriodKind;
  limitBytes: number;
  /** Least time between writes of the use (a crash loses none of it: the baseline is written with it). */
  saveEveryMs?: number;
}

/**
 * What the metered links used this period: the interface counters' growth while metered, plus the
 * reservations of batches on their way out (so two batches never both start on the last bytes).
 * Periods are UTC calendar days or months and only move forward: a clock stepped back keeps the
 * period it had, so it cannot hand out a budget twice; one stepped forward starts a new one.
 */
export class LinkBudget {
  private record: BudgetRecord;
  private baseline: CounterBaseline | null;
  private reserved = 0;
  private dirty = false;
  private lastSaveAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly o: LinkBudgetOptions) {
    const now = periodAt(o.clock.now(), o.kind);
    const kept = o.store.latest(o.kind);
    this.record = kept && kept.period >= now.period ? kept : now;
    this.baseline = o.store.baseline();
  }

  /** Whether some use is not written yet. */
  get unsaved(): boolean {
    return this.dirty;
  }

  get limitBytes(): number {
    return this.o.limitBytes;
  }

  /** Starts a new period when the clock reached it; true when it did. */
  roll(): boolean {
    const now = periodAt(this.o.clock.now(), this.o.kind);
    if (now.period <= this.record.period) return false;
    const ending = this.dirty ? this.record : undefined;
    this.record = now;
    this.dirty = true;
    try {
      // The ending period's last bytes are kept with it, not lost to the throttle.
      if (ending) this.o.store.write(ending, this.baseline, this.o.clock.now());
      this.save(true);
      this.o.store.pruneOld(this.o.kind);
    } catch {
      // The new period begins regardless; its row is written by the next save (it stays dirty), which says why if it fails again.
    }
    return true;
  }

  /**
   * Brings the use up to a reading of the metered interface; `undefined` when none is metered (nothing
   * counts until the next reading of one). The growth since the last reading of the same interface counts;
   * an interface made again or a reboot restarted its counters, so all of its reading counts; a first
   * reading only sets where counting starts. Returns the bytes added.
   */
  observe(sample: CounterSample | undefined): number {
    if (!sample) {
      if (this.baseline) {
        this.baseline = null;
        this.save(true);
      }
      return 0;
    }
    const bootId = this.o.clock.bootId();
    const prev = this.baseline;
    let added = 0;
    if (prev && prev.iface === sample.iface) {
      const same = prev.ifindex === sample.ifindex && prev.bootId === bootId && sample.bytes >= prev.bytes;
      added = same ? sample.bytes - prev.bytes : sample.bytes;
    }
    this.baseline = { ...sample, bootId };
    if (added > 0) this.record = { ...this.record, usedBytes: this.record.usedBytes + added };
    if (added > 0 || !prev || prev.bytes !== sample.bytes) this.dirty = true;
    this.save(prev?.iface !== sample.iface);
    return added;
  }

  /** Bytes left for a batch: the cap less the use and the reservations. Infinity without a cap. */
  remaining(): number {
    if (this.o.limitBytes === 0) return Number.POSITIVE_INFINITY;
    return Math.max(0, this.o.limitBytes - this.record.usedBytes - this.reserved);
  }

  /** Takes `bytes` of the remaining budget for a batch about to be sent; false when they are not there. */
  reserve(bytes: number): boolean {
    if (bytes > this.remaining()) return false;
    this.reserved += bytes;
    return true;
  }

  /** The batch is answered: its real bytes are in the counters (read just before this). */
  release(bytes: number): void {
    this.reserved = Math.max(0, this.reserved - bytes);
  }

  view(): BudgetView {
    const limit = this.o.limitBytes;
    return {
      period: this.o.kind,
      limitBytes: limit,
      usedBytes: this.record.usedBytes,
      remainingBytes: limit === 0 ? null : Math.max(0, limit - this.record.usedBytes),
      resetsAt: this.record.endsAt,
    };
  }

  /** Writes the use when it changed, at most every `saveEveryMs` unless `force`. */
  save(force = false): void {
    const t = this.o.clock.monotonic();
    if (!force && (!this.dirty || t - this.lastSaveAt < (this.o.saveEveryMs ?? 5_000))) return;
    this.o.store.write(this.record, this.baseline, this.o.clock.now());
    this.dirty = false;
    this.lastSaveAt = t;
  }
}
