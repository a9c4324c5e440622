import type { Logger } from '../util/logger.js';
import type { OutboxCounters } from './counters.js';
import type { Expiry } from './expiry.js';
import type { Lanes } from './lanes.js';
import type { OutboxStatements } from './outbox-sql.js';

export interface RecoveryParts {
  q: Pick<OutboxStatements, 'loadLanes' | 'loadCounters' | 'loadParked'>;
  lanes: Pick<Lanes, 'load' | 'total'>;
  counters: Pick<OutboxCounters, 'load'>;
  expiry: Pick<Expiry, 'load'>;
  logger: Logger;
}

/**
 * At open, what the database holds becomes the in-memory ledger: totals per lane (from the covering
 * index, without reading a row), the persisted counters, the parked table's counts and the earliest
 * expiry. Leases are not recovered: after a restart every undelivered message is eligible again.
 */
export function recoverOutbox(p: RecoveryParts): void {
  p.lanes.load(p.q.loadLanes.all() as { channel: string; priority: number; n: number; b: number }[]);
  p.counters.load(p.q.loadCounters.all() as { channel: string; counter: string; value: number }[], p.q.loadParked.all() as { channel: string; n: number }[]);
  p.expiry.load();
  const total = p.lanes.total;
  if (total.count > 0) p.logger.info({ depth: total.count, bytes: total.bytes }, `outbox holds ${total.count} undelivered message(s) from before`);
}
