import type { Database } from 'better-sqlite3';
import type { Logger } from '../util/logger.js';
import { ACCOUNTED_COUNTERS } from './ledger.js';

/**
 * What a salvage of a corrupt database (src/store/salvage.ts) says it lost, as far as the outbox's
 * tables go. Structural, so the store needs to know nothing of the outbox.
 */
export interface SalvageLosses {
  tables: Record<string, { lost: number | null } | undefined>;
  /** Per table, the lost rows its intact indexes still name (their indexed column values). */
  lostRows?: Record<string, { rows: readonly { values: Readonly<Record<string, unknown>> }[] } | undefined>;
}

export interface CorruptLosses {
  /** Queued messages lost with the damaged pages, per channel (known from an intact index). */
  byChannel: Record<string, number>;
  /** Queued messages lost whose channel nothing could tell (their index pages were damaged too). */
  unknownChannel: number;
  /** Parked messages lost (the parked table has no index that holds the channel). */
  parked: number;
  /** A table could not count its rows: the loss is larger than these numbers by an unknown amount. */
  uncounted: string[];
}

/** The drop counter the outbox keeps for messages lost to a corrupt database (`drops.corrupt`). */
export const CORRUPT_COUNTER = 'corrupt';

/** Sorts the outbox's losses in a salvage report by channel. */
export function corruptLosses(salvage: SalvageLosses): CorruptLosses {
  const out: CorruptLosses = { byChannel: {}, unknownChannel: 0, parked: 0, uncounted: [] };
  const queued = salvage.tables['outbox'];
  if (queued) {
    const rows = salvage.lostRows?.['outbox']?.rows ?? [];
    for (const r of rows) {
      const channel = r.values['channel'];
      if (typeof channel === 'string') out.byChannel[channel] = (out.byChannel[channel] ?? 0) + 1;
      else out.unknownChannel++;
    }
    if (queued.lost === null) out.uncounted.push('outbox');
    // Rows counted lost that no index could name (or a list cut short): their channel is unknown.
    else out.unknownChannel += Math.max(0, queued.lost - rows.length);
  }
  const parked = salvage.tables['outbox_parked'];
  if (parked) {
    if (parked.lost === null) out.uncounted.push('outbox_parked');
    else out.parked = parked.lost;
  }
  return out;
}

/**
 * The salvage hook of the outbox: adds the messages lost with a corrupt database to each channel's
 * `corrupt` drop counter, in the fresh database (the salvage is redone from scratch after a crash,
 * so this counts each loss once), and says what it could not attribute. The loss then shows where
 * every other drop does: `GET /v2/queue` `drops.corrupt`, `iotistic_queue_drops_total{reason="corrupt"}`,
 * the drop summary lines.
 */
export function countCorruptLosses(db: Database, salvage: SalvageLosses, logger: Logger): CorruptLosses {
  const losses = corruptLosses(salvage);
  const add = db.prepare(
    'INSERT INTO outbox_counters (channel, counter, value) VALUES (?, ?, ?) ON CONFLICT (channel, counter) DO UPDATE SET value = value + excluded.value',
  );
  db.transaction(() => {
    for (const [channel, n] of Object.entries(losses.byChannel)) add.run(channel, CORRUPT_COUNTER, n);
  })();
  const known = Object.values(losses.byChannel).reduce((a, b) => a + b, 0);
  if (known + losses.unknownChannel + losses.parked > 0 || losses.uncounted.length > 0) {
    const parts = Object.entries(losses.byChannel).map(([c, n]) => `${c}: ${n}`);
    if (losses.unknownChannel > 0) parts.push(`channel unknown: ${losses.unknownChannel}`);
    if (losses.parked > 0) parts.push(`parked: ${losses.parked}`);
    if (losses.uncounted.length > 0) parts.push(`and an unknown number from ${losses.uncounted.join(', ')}`);
    logger.error({ ...losses }, `outbox: ${known + losses.unknownChannel + losses.parked} messages were lost with the damaged database (${parts.join('; ')})`);
  }
  return losses;
}

const ACCOUNTED: readonly string[] = ACCOUNTED_COUNTERS;

/**
 * The last step of a salvage: the loss ledger of each channel balanced again. What the damage took
 * without an index to name it (rows of an unknown channel, parked rows) shows as messages taken and
 * not accounted for: they were lost with the damaged database, and are counted as its `corrupt` drops.
 * Where the counters' copy lagged (it follows every 10 s), fewer were counted as taken than are
 * accounted for: `accepted` is raised to match. Returns the changes per channel, logged as a warning.
 */
export function rebaseLedger(db: Database, logger: Logger): Record<string, { corrupt: number; accepted: number }> {
  const accounted = new Map<string, number>();
  const accepted = new Map<string, number>();
  const add = (channel: string, n: number): void => void accounted.set(channel, (accounted.get(channel) ?? 0) + n);
  for (const r of db.prepare('SELECT channel, counter, value FROM outbox_counters').all() as { channel: string; counter: string; value: number }[]) {
    if (r.counter === 'accepted') accepted.set(r.channel, r.value);
    else if (ACCOUNTED.includes(r.counter)) add(r.channel, r.value);
  }
  for (const table of ['outbox', 'outbox_parked']) {
    for (const r of db.prepare(`SELECT channel, count(*) AS n FROM ${table} GROUP BY channel`).all() as { channel: string; n: number }[]) add(r.channel, r.n);
  }
  const bump = db.prepare(
    'INSERT INTO outbox_counters (channel, counter, value) VALUES (?, ?, ?) ON CONFLICT (channel, counter) DO UPDATE SET value = value + excluded.value',
  );
  const changes: Record<string, { corrupt: number; accepted: number }> = {};
  db.transaction(() => {
    for (const channel of new Set([...accounted.keys(), ...accepted.keys()])) {
      const gap = (accepted.get(channel) ?? 0) - (accounted.get(channel) ?? 0);
      if (gap === 0) continue;
      changes[channel] = gap > 0 ? { corrupt: gap, accepted: 0 } : { corrupt: 0, accepted: -gap };
      bump.run(channel, gap > 0 ? CORRUPT_COUNTER : 'accepted', Math.abs(gap));
    }
  })();
  if (Object.keys(changes).length > 0) {
    logger.warn({ changes }, 'outbox: the loss ledger was balanced again after the salvage (messages taken and no longer accounted for were lost with the damaged database: counted as corrupt drops)');
  }
  return changes;
}
