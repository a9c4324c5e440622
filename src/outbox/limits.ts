import type { Database, Statement } from 'better-sqlite3';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { OutboxError } from './errors.js';

/**
 * What the outbox does at each of its limits, per channel, and the account of what it dropped.
 *
 * - `count`: a message count limit (`maxQueueSize`, a channel's `maxCount`);
 * - `bytes`: a stored-bytes limit (`maxQueueBytes`, a channel's `maxBytes`);
 * - `disk`: free disk under the watermark (`minFreeDiskBytes`).
 *
 * `drop-oldest`: the channel's queued messages give way: to admit a new message of equal or higher
 * priority, the oldest queued message of the lowest priority is dropped (counted and logged).
 * `refuse`: the channel's queued messages are never dropped at that limit; a new message that finds
 * nothing it may drop is refused (507 from the local API, no PUBACK from the local broker, an
 * OutboxError to the agent's own producers), so its producer still holds it.
 */
export const LIMIT_KINDS = ['count', 'bytes', 'disk'] as const;
export type LimitKind = (typeof LIMIT_KINDS)[number];
export const LIMIT_ACTIONS = ['refuse', 'drop-oldest'] as const;
export type LimitAction = (typeof LIMIT_ACTIONS)[number];
export type OnLimit = Record<LimitKind, LimitAction>;

const REFUSE_ALL: OnLimit = Object.freeze({ count: 'refuse', bytes: 'refuse', disk: 'refuse' });
/** Data that is superseded by newer data: the newest is worth more than the oldest. */
const DROP_BUT_DISK: OnLimit = Object.freeze({ count: 'drop-oldest', bytes: 'drop-oldest', disk: 'refuse' });

/**
 * Built-in defaults (a configured `onLimit`, global or per channel, overrides them). At the disk
 * watermark every channel refuses: the producer learns that the device is out of room. At the
 * count and bytes limits, bulk data (telemetry, metrics: the seed's drop-oldest) and data a newer
 * message supersedes (state, shadow and health reports, which are coalesced or periodic) give way;
 * events and job updates are facts the cloud cannot rebuild, so they are refused rather than
 * dropped, and so is any other channel: a producer nobody decided for is told, not silently dropped.
 */
export const DEFAULT_ON_LIMIT: Readonly<Record<string, OnLimit>> = Object.freeze({
  telemetry: DROP_BUT_DISK,
  metrics: DROP_BUT_DISK,
  state: DROP_BUT_DISK,
  shadow: DROP_BUT_DISK,
  health: DROP_BUT_DISK,
  logs: DROP_BUT_DISK,
  events: REFUSE_ALL,
  jobs: REFUSE_ALL,
});

/** The policy in force for `channel`: its own setting, else the global one, else the built-in default. */
export function resolveOnLimit(channel: string, own?: Partial<OnLimit>, global?: Partial<OnLimit>): OnLimit {
  const base = Object.hasOwn(DEFAULT_ON_LIMIT, channel) ? (DEFAULT_ON_LIMIT[channel] as OnLimit) : REFUSE_ALL;
  const out = { ...base };
  for (const k of LIMIT_KINDS) out[k] = own?.[k] ?? global?.[k] ?? base[k];
  return out;
}

/**
 * Why messages left the queue undelivered: a limit, the TTL, the parked table's own cap, an
 * operator's purge of parked ones, a corrupt database (the pages they were on), or, with queueing
 * off (`enableQueue: false`), the cloud being unreachable when they were produced (`offline`).
 */
export const DROP_REASONS = ['count', 'bytes', 'disk', 'ttl', 'parkedLimit', 'purged', 'corrupt', 'offline'] as const;
export type DropReason = (typeof DROP_REASONS)[number];
export type DropCounts = Record<DropReason, number>;
export const zeroDrops = (): DropCounts => ({ count: 0, bytes: 0, disk: 0, ttl: 0, parkedLimit: 0, purged: 0, corrupt: 0, offline: 0 });

export interface DropReporterOptions {
  db: Database;
  clock: Clock;
  logger: Logger;
  /** At most one summary line per this many ms (0: a line after every commit that dropped). */
  intervalMs: number;
  /** Drops per channel since the database was created (what `outbox_counters` holds). */
  totals: () => Iterable<[channel: string, drops: DropCounts]>;
}

const LOGGED = 'logged.';

/**
 * Logs drops as summary lines ("dropped N since the last line", per channel and reason), at most
 * one line per interval. What has been logged is kept in `outbox_counters` (`logged.<reason>`), so
 * drops a killed process never logged are logged by the next start, and a run of short-lived
 * processes logs exactly the drops that happened, each once. The logged counters are written before
 * the line (a pino write to stdout is synchronous): a kill between the two loses one line, never
 * logs a drop twice.
 */
export class DropReporter {
  private readonly db: Database;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly intervalMs: number;
  private readonly totals: DropReporterOptions['totals'];
  private readonly upsert: Statement;
  private readonly persist: (rows: [string, string, number][]) => void;
  private readonly logged = new Map<string, DropCounts>();
  private lastAt = -Infinity;
  private timer: AbortController | undefined;
  private closed = false;

  constructor(o: DropReporterOptions) {
    this.db = o.db;
    this.clock = o.clock;
    this.logger = o.logger;
    this.intervalMs = o.intervalMs;
    this.totals = o.totals;
    this.upsert = o.db.prepare(
      'INSERT INTO outbox_counters (channel, counter, value) VALUES (?, ?, ?) ON CONFLICT (channel, counter) DO UPDATE SET value = excluded.value',
    );
    const tx = o.db.transaction((rows: [string, string, number][]) => {
      for (const r of rows) this.upsert.run(...r);
    });
    this.persist = (rows) => tx(rows);
    const rows = o.db.prepare(`SELECT channel, counter, value FROM outbox_counters WHERE counter LIKE '${LOGGED}%'`).all() as { channel: string; counter: string; value: number }[];
    for (const r of rows) {
      const reason = r.counter.slice(LOGGED.length) as DropReason;
      // Stryker disable next-line all: equivalent: an unknown reason would only add a key that nothing reads (report walks DROP_REASONS).
      if (!(DROP_REASONS as readonly string[]).includes(reason)) continue;
      const c = this.logged.get(r.channel) ?? zeroDrops();
      c[reason] = r.value;
      this.logged.set(r.channel, c);
    }
  }

  /** Drops happened (committed): log now when the last line is old enough, else once it is. */
  noteDrops(): void {
    if (this.closed || this.timer) return;
    const wait = this.lastAt + this.intervalMs - this.clock.monotonic();
    if (wait <= 0) {
      this.report();
      return;
    }
    const ac = new AbortController();
    this.timer = ac;
    this.clock.sleep(wait, ac.signal).then(
      () => {
        this.timer = undefined;
        this.report();
      },
      () => undefined,
    );
  }

  /** Logs what is not logged yet, now (at start: what a killed process left; at close: the rest). */
  report(startup = false): void {
    // Inside someone's transaction the record of what is logged could be rolled back after the line.
    if (this.db.inTransaction) {
      queueMicrotask(() => this.report(startup));
      return;
    }
    const delta = new Map<string, DropCounts>();
    const rows: [string, string, number][] = [];
    let total = 0;
    for (const [channel, t] of this.totals()) {
      const seen = this.logged.get(channel) ?? zeroDrops();
      const d = zeroDrops();
      let any = false;
      for (const r of DROP_REASONS) {
        d[r] = t[r] - seen[r];
        if (d[r] > 0) {
          any = true;
          total += d[r];
          rows.push([channel, LOGGED + r, t[r]]);
        }
      }
      if (any) delta.set(channel, d);
    }
    if (total === 0) return;
    try {
      this.persist(rows);
    } catch (err) {
      // Logged anyway: a line the next start may repeat beats drops nobody hears of.
      this.logger.debug({ err: errorMessage(err) }, 'outbox: could not record which drops are logged');
    }
    for (const [channel, d] of delta) {
      const seen = this.logged.get(channel) ?? zeroDrops();
      for (const r of DROP_REASONS) seen[r] += Math.max(0, d[r]);
      this.logged.set(channel, seen);
    }
    this.lastAt = this.clock.monotonic();
    const dropped: Record<string, Partial<DropCounts>> = {};
    const parts: string[] = [];
    for (const [channel, d] of [...delta].sort(([a], [b]) => a.localeCompare(b))) {
      const nonZero = Object.fromEntries(DROP_REASONS.filter((r) => d[r] > 0).map((r) => [r, d[r]])) as Partial<DropCounts>;
      dropped[channel] = nonZero;
      parts.push(`${channel} ${Object.entries(nonZero).map(([r, n]) => `${n} (${r})`).join(', ')}`);
    }
    const since = startup ? 'before this start (not logged by the process that dropped them)' : 'since the last report';
    this.logger.warn({ dropped, total }, `outbox dropped ${total} message(s) ${since}: ${parts.join('; ')}`);
  }

  /** Logs the rest and stops the timer. */
  close(): void {
    this.timer?.abort();
    this.timer = undefined;
    if (!this.closed) this.report();
    this.closed = true;
  }
}

/** Why a message over a count or bytes limit was refused: the limit, its setting, and what kept anything from giving way. */
export function fullError(
  m: { channel: string; priority: number; scope: string | null; kind: 'count' | 'bytes'; onLimit: OnLimit },
  max: { maxCount: number; maxBytes: number },
): OutboxError {
  const { channel, priority, scope, kind: k } = m;
  const setting = scope === null ? `settings.offline.${k === 'count' ? 'maxQueueSize' : 'maxQueueBytes'}` : `settings.offline.channels.${scope}.${k === 'count' ? 'maxCount' : 'maxBytes'}`;
  const limit = k === 'count' ? `${max.maxCount} messages` : fmtBytes(max.maxBytes);
  const why =
    m.onLimit[k] === 'refuse' && scope !== null
      ? `channel "${channel}" refuses at this limit (onLimit.${k}: "refuse"), so none of its queued messages is dropped`
      : `no queued message of priority <= ${priority} in a channel whose onLimit.${k} is "drop-oldest" is left to make room`;
  return new OutboxError(
    'OUTBOX_FULL',
    `outbox full: the ${scope === null ? 'outbox' : `"${scope}" channel`}'s limit of ${limit} (${setting}) is reached and ${why}; the ${channel} message was not queued: send it again later`,
    { details: { limit: setting, kind: k, max: k === 'count' ? max.maxCount : max.maxBytes, channel } },
  );
}

/** Why a message was refused below the free-disk watermark: the data dir and its free bytes. */
export function diskLowError(m: { channel: string; priority: number }, d: { dataDir: string; freeBytes: number; minFreeBytes: number }): OutboxError {
  return new OutboxError(
    'OUTBOX_DISK_LOW',
    `disk space low: ${fmtBytes(d.freeBytes)} free for the data dir ${d.dataDir}, under the watermark of ${fmtBytes(d.minFreeBytes)} (settings.offline.minFreeDiskBytes), and no queued message of priority <= ${m.priority} in a channel whose onLimit.disk is "drop-oldest" is left to make room; the ${m.channel} message was not queued: send it again once space is freed`,
    { details: { limit: 'settings.offline.minFreeDiskBytes', kind: 'disk', ...d, channel: m.channel } },
  );
}

export function fmtBytes(n: number): string {
  if (n >= 1_048_576) return `${(n / 1_048_576).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}
