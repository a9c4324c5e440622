import type { Logger } from '../util/logger.js';
import type { OutboxCounters } from './counters.js';
import type { Expiry } from './expiry.js';
import type { Lanes } from './lanes.js';
import type { OutboxStatements } from './outbox-sql.js';

export interface RecoveryParts {
  q: Pick<OutboxStatements, 'loadLanes' | 'loadLaneTotals' | 'loadCounters' | 'loadParked'>;
  lanes: Pick<Lanes, 'load' | 'recount' | 'total'>;
  counters: Pick<OutboxCounters, 'load'>;
  expiry: Pick<Expiry, 'load'>;
  logger: Logger;
  /**
   * The persisted per-lane totals may be loaded as they are (the file vouched for itself, or the
   * background check will compare them with the rows). Otherwise the rows are counted (the
   * `outbox_lane` index read whole) and the totals are persisted again at the next write.
   */
  trustTotals: boolean;
}

type LaneRow = { channel: string; priority: number; n: number; b: number };

/**
 * At open, what the database holds becomes the in-memory ledger: totals per lane, the persisted
 * counters, the parked table's counts and the earliest expiry. Leases are not recovered: after a
 * restart every undelivered message is eligible again.
 */
export function recoverOutbox(p: RecoveryParts): void {
  if (p.trustTotals) p.lanes.load(p.q.loadLaneTotals.all() as LaneRow[]);
  else p.lanes.recount(p.q.loadLanes.all() as LaneRow[]);
  p.counters.load(p.q.loadCounters.all() as { channel: string; counter: string; value: number }[], p.q.loadParked.all() as { channel: string; n: number }[]);
  p.expiry.load();
  const total = p.lanes.total;
  if (total.count > 0) p.logger.info({ depth: total.count, bytes: total.bytes }, `outbox holds ${total.count} undelivered message(s) from before`);
}
