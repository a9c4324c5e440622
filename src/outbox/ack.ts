import type { Database } from 'better-sqlite3';
import { commitWithoutFsync } from '../store/sync-level.js';
import type { Logger } from '../util/logger.js';
import type { OutboxCounters } from './counters.js';
import type { Lanes } from './lanes.js';
import type { Lease, Leases } from './leases.js';
import type { OutboxStatements, RowRef } from './outbox-sql.js';
import type { Transactor } from './transactor.js';

export interface AcksOptions {
  db: Pick<Database, 'exec' | 'transaction' | 'inTransaction'>;
  q: Pick<OutboxStatements, 'deleteIds' | 'deleteById'>;
  tx: Pick<Transactor, 'run'>;
  lanes: Pick<Lanes, 'remove'>;
  counters: Pick<OutboxCounters, 'bump' | 'digest'>;
  leases: Pick<Leases, 'get' | 'release'>;
  logger: Logger;
  /** The connection's `synchronous` (read once at open): at FULL or above an ack is committed without its own fsync. */
  syncLevel: number;
}

/** Thrown (and caught) inside `ack`'s savepoint: a leased row was not there to delete. */
class LeaseMismatch extends Error {}

/** Deletes what a sink delivered (counted as delivered) and ends the leases. */
export class Acks {
  private readonly deleteLeased: (ids: string[]) => void;

  constructor(private readonly o: AcksOptions) {
    // Inside the ack's transaction this is a savepoint: a mismatch undoes the delete alone.
    this.deleteLeased = o.db.transaction((ids: string[]) => {
      const { changes } = o.q.deleteIds.run(JSON.stringify(ids));
      if (changes !== ids.length) throw new LeaseMismatch(`${changes} of ${ids.length} leased rows deleted`);
    });
  }

  /** Deletes these (unknown ids are ignored) and releases their leases. Returns how many were deleted. */
  ack(ids: Iterable<string>): number {
    const list = [...ids];
    if (list.length === 0) return 0;
    // An acknowledgement is committed without its own fsync: losing one to a power cut costs a
    // duplicate delivery (same id, deduplicated by the receiver), never a message. The next durable
    // commit (any enqueue) syncs it anyway. This takes an fsync off every delivered batch.
    const n = commitWithoutFsync(this.o.db, this.o.syncLevel, () => this.deleteRows(list));
    for (const id of list) this.o.leases.release(id);
    return n;
  }

  /**
   * Leased messages (what a sink acks) are deleted in one statement, accounted from their leases
   * (channel, priority, bytes) without reading them back; others one by one. A leased row always
   * exists (nothing deletes a leased row without releasing its lease), but should one be missing the
   * bulk delete is undone (savepoint) and every message is taken the slow way.
   */
  private deleteRows(list: string[]): number {
    return this.o.tx.run(`acknowledging ${list.length} message(s)`, () => {
      const leased: Lease[] = [];
      const leasedIds: string[] = [];
      const rest: string[] = [];
      for (const id of list) {
        const l = this.o.leases.get(id);
        if (l) {
          leased.push(l);
          leasedIds.push(id);
        } else rest.push(id);
      }
      let deleted = 0;
      if (leased.length > 0) {
        try {
          this.deleteLeased(leasedIds);
          leased.forEach((l, i) => this.delivered(l, leasedIds[i] as string));
          deleted += leased.length;
        } catch (err) {
          if (!(err instanceof LeaseMismatch)) throw err;
          this.o.logger.error({ err: err.message }, 'outbox: a leased message was missing at its ack; acknowledging one by one');
          rest.push(...leasedIds);
        }
      }
      for (const id of rest) {
        const row = this.o.q.deleteById.get(id) as RowRef | undefined;
        if (!row) continue;
        this.delivered(row, id);
        deleted++;
      }
      return deleted;
    });
  }

  private delivered(row: Omit<RowRef, 'seq'>, id: string): void {
    this.o.lanes.remove(row);
    this.o.counters.bump(row.channel, 'delivered');
    this.o.counters.digest(row.channel, id);
  }
}
