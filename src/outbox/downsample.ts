import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import type { Outbox } from './outbox.js';
import { OutboxError, type EnqueueResult } from './types.js';

/**
 * Metrics buffering: system-metrics samples go to the outbox's `metrics` channel, which holds at
 * most `maxSamples` messages (`settings.offline.maxOfflineMetricsBuffer`). When it is full, older
 * messages are merged pairwise into aggregates instead of being dropped, so a long outage leaves a
 * history that is fine for the recent past and coarser the older it gets.
 *
 * Formats (the `payload` of a `metrics` message; consumers tell them apart by `ts` vs `from`):
 *
 *   sample     { "ts": 1764331200000, "values": { "cpu": 12.5, "memUsedPct": 41.2, "tempC": 48.1 } }
 *              one reading; `values` maps a metric name to a finite number; a metric the machine
 *              lacks (no temperature sensor) is simply absent.
 *   aggregate  { "from": 1764331200000, "to": 1764331440000, "count": 5,
 *                "values": { "cpu": { "min": 3.1, "max": 40.2, "mean": 12.9, "count": 5 } } }
 *              `count` samples taken from `from` to `to` (inclusive, epoch ms); per metric its
 *              min, max and mean over the samples that had it, and how many did (`count`), so
 *              merging two aggregates keeps the mean exact.
 *
 * The merge rule makes resolution halve with age. A message's level is floor(log2(count)) (a sample
 * is level 0). A compaction walks the older half of the channel, oldest first, merging each pair of
 * neighbours of equal level into one of the next level, which removes about a quarter of the
 * messages. Repeated compactions leave levels falling from old to new, each level covering about a
 * quarter of the buffer's span of samples at twice the bucket width of the next: with the default
 * 10,080 samples at one a minute, the last ~3.5 days stay at full resolution, then ~1.75 days at
 * 2 minutes, ~1.75 days at 4 minutes, and so on. Messages in flight (leased) are never merged.
 */

export interface MetricsSample {
  ts: number;
  values: Record<string, number>;
}

export interface MetricSummary {
  min: number;
  max: number;
  mean: number;
  count: number;
}

export interface MetricsAggregate {
  from: number;
  to: number;
  count: number;
  values: Record<string, MetricSummary>;
}

export type MetricsRecord = MetricsSample | MetricsAggregate;

export function isAggregate(r: MetricsRecord): r is MetricsAggregate {
  return (r as MetricsAggregate).from !== undefined;
}

/** floor(log2(samples)); a sample is level 0. */
export function levelOf(r: MetricsRecord): number {
  return isAggregate(r) ? Math.floor(Math.log2(Math.max(1, r.count))) : 0;
}

export function toAggregate(r: MetricsRecord): MetricsAggregate {
  if (isAggregate(r)) return r;
  const values: Record<string, MetricSummary> = {};
  for (const [k, v] of Object.entries(r.values)) values[k] = { min: v, max: v, mean: v, count: 1 };
  return { from: r.ts, to: r.ts, count: 1, values };
}

/** One aggregate covering both (in either order); means weighted by how many samples had each metric. */
export function mergeRecords(a: MetricsRecord, b: MetricsRecord): MetricsAggregate {
  const x = toAggregate(a);
  const y = toAggregate(b);
  const values: Record<string, MetricSummary> = {};
  for (const k of new Set([...Object.keys(x.values), ...Object.keys(y.values)])) {
    const p = x.values[k];
    const q = y.values[k];
    if (!p || !q) {
      values[k] = { ...((p ?? q) as MetricSummary) };
      continue;
    }
    const count = p.count + q.count;
    values[k] = { min: Math.min(p.min, q.min), max: Math.max(p.max, q.max), mean: (p.mean * p.count + q.mean * q.count) / count, count };
  }
  return { from: Math.min(x.from, y.from), to: Math.max(x.to, y.to), count: x.count + y.count, values };
}

/** Checks a sample's shape, naming the bad field. */
export function validateSample(s: unknown): MetricsSample {
  const bad = (what: string): never => {
    throw new OutboxError('OUTBOX_INVALID', `metrics sample: ${what}`);
  };
  if (s === null || typeof s !== 'object') return bad(`expected an object { ts, values }, got ${JSON.stringify(s)}`);
  const { ts, values } = s as { ts?: unknown; values?: unknown };
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return bad(`ts: expected epoch milliseconds, got ${JSON.stringify(ts)}`);
  if (values === null || typeof values !== 'object' || Array.isArray(values)) return bad(`values: expected an object of numbers, got ${JSON.stringify(values)}`);
  for (const [k, v] of Object.entries(values)) {
    if (typeof v !== 'number' || !Number.isFinite(v)) bad(`values.${k}: expected a finite number, got ${JSON.stringify(v)}`);
  }
  return { ts, values: values as Record<string, number> };
}

function asRecord(payload: Json): MetricsRecord | undefined {
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) return undefined;
  const p = payload as Record<string, Json>;
  if (typeof p.ts === 'number' && p.values !== null && typeof p.values === 'object') return p as unknown as MetricsSample;
  if (typeof p.from === 'number' && typeof p.to === 'number' && typeof p.count === 'number' && p.values !== null && typeof p.values === 'object') {
    return p as unknown as MetricsAggregate;
  }
  return undefined;
}

export interface MetricsBufferOptions {
  outbox: Outbox;
  /** `settings.offline.maxOfflineMetricsBuffer`. */
  maxSamples: number;
  channel?: string;
  logger?: Logger;
}

interface Item {
  id: string;
  rec: MetricsRecord | undefined;
  /** In flight, or not a metrics record someone else put here: never merged, never merged across. */
  fixed: boolean;
  dirty: boolean;
}

export class MetricsBuffer {
  private readonly outbox: Outbox;
  private readonly maxSamples: number;
  private readonly channel: string;
  private readonly logger: Logger | undefined;

  constructor(opts: MetricsBufferOptions) {
    if (!(Number.isInteger(opts.maxSamples) && opts.maxSamples >= 4)) {
      throw new OutboxError('OUTBOX_INVALID', `maxSamples: expected an integer of at least 4, got ${String(opts.maxSamples)}`);
    }
    this.outbox = opts.outbox;
    this.maxSamples = opts.maxSamples;
    this.channel = opts.channel ?? 'metrics';
    this.logger = opts.logger;
  }

  /** Queues a sample durably, downsampling older messages first when the channel is full. */
  add(sample: MetricsSample, opts: { priority?: number; ttlMs?: number } = {}): Promise<EnqueueResult> {
    let s: MetricsSample;
    try {
      s = validateSample(sample);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    // compact() does nothing while the channel has room (its own check: one condition, not two).
    try {
      this.compact();
    } catch (err) {
      // The sample still goes in: the outbox's own cap on the channel then drops the oldest.
      this.logger?.warn({ channel: this.channel, err: errorMessage(err) }, 'metrics downsampling failed; queuing the sample anyway');
    }
    return this.outbox.enqueue({ channel: this.channel, payload: s as unknown as Json, ...opts });
  }

  /**
   * Merges older messages so that at least one more fits (about a quarter of the channel goes in
   * one compaction). Returns how many messages were merged away. One transaction.
   */
  compact(): number {
    const depth = this.outbox.channelDepth(this.channel);
    if (depth < this.maxSamples) return 0;
    const need = depth - this.maxSamples + 1;
    let items: Item[] = this.outbox.readChannel(this.channel, this.maxSamples * 2).map((m) => {
      const rec = asRecord(m.payload);
      return { id: m.id, rec, fixed: m.leased || rec === undefined, dirty: false };
    });
    const removed: string[] = [];
    const mergeable = (a: Item | undefined, b: Item | undefined, anyLevel: boolean): boolean =>
      !!a && !!b && !a.fixed && !b.fixed && (anyLevel || levelOf(a.rec as MetricsRecord) === levelOf(b.rec as MetricsRecord));
    // One left-to-right pass over items[0, end): merge neighbours (equal level unless anyLevel).
    const pass = (end: number, anyLevel: boolean, stopAt = Infinity): void => {
      const out: Item[] = [];
      let i = 0;
      while (i < items.length) {
        const a = items[i] as Item;
        const b = items[i + 1];
        if (i + 1 < end && removed.length < stopAt && mergeable(a, b, anyLevel)) {
          a.rec = mergeRecords(a.rec as MetricsRecord, (b as Item).rec as MetricsRecord);
          a.dirty = true;
          removed.push((b as Item).id);
          out.push(a);
          i += 2;
        } else {
          out.push(a);
          i++;
        }
      }
      items = out;
    };
    pass(Math.ceil(items.length / 2), false);
    if (removed.length < need) pass(items.length, false);
    // Every level distinct (a very long outage on a tiny buffer): merge the oldest neighbours anyway.
    // Stryker disable next-line EqualityOperator: equivalent: at removed === need a pass with stopAt = need merges nothing, and the loop breaks.
    while (removed.length < need) {
      const before = removed.length;
      pass(items.length, true, need);
      if (removed.length === before) break;
    }
    if (removed.length === 0) return 0;
    const replace = items.filter((it) => it.dirty).map((it) => ({ id: it.id, payload: it.rec as unknown as Json }));
    this.outbox.rewrite(this.channel, { replace, remove: removed });
    this.logger?.debug({ channel: this.channel, merged: removed.length, depth }, `metrics buffer full: downsampled ${removed.length} older message(s)`);
    return removed.length;
  }
}
