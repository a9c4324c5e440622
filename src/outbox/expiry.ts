import type { Logger } from '../util/logger.js';
import type { OutboxCounters } from './counters.js';
import type { Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import type { OutboxStatements, RowRef } from './outbox-sql.js';
import type { QueueClock } from './queue-clock.js';

export interface ExpiryOptions {
  q: Pick<OutboxStatements, 'expiredRows' | 'deleteSeq' | 'minExpiry'>;
  lanes: Pick<Lanes, 'remove'>;
  counters: Pick<OutboxCounters, 'bump'>;
  leases: Pick<Leases, 'release'>;
  /** expires_at is on the queue clock: a wall-clock step never expires (nor keeps) a message. */
  clock: Pick<QueueClock, 'now'>;
  logger: Logger;
}

/**
 * TTL: messages past their `expires_at` are deleted (counted as expired) at the next enqueue or peek
 * and by `expire()`. The earliest expiry is kept in memory so that the check costs nothing until then.
 */
export class Expiry {
  /** The earliest expires_at of a queued message (a lower bound): nothing expires before it. */
  private nextAt = Infinity;

  constructor(private readonly o: ExpiryOptions) {}

  /** Reads the earliest expiry from the database (at open, and after expiring). */
  load(): void {
    this.nextAt = (this.o.q.minExpiry.get() as { t: number | null }).t ?? Infinity;
  }

  /** A message that expires at `expiresAt` was queued. */
  note(expiresAt: number | null): void {
    if (expiresAt !== null && expiresAt < this.nextAt) this.nextAt = expiresAt;
  }

  /** Something may have expired. */
  due(): boolean {
    return this.o.clock.now() >= this.nextAt;
  }

  /** Makes the next `expireDue` look, whatever the earliest expiry says. */
  force(): void {
    this.nextAt = -Infinity;
  }

  /** Deletes expired messages (in the caller's transaction). In-flight ones too: their ack becomes a no-op. */
  expireDue(): number {
    const now = this.o.clock.now();
    if (now < this.nextAt) return 0;
    let n = 0;
    for (;;) {
      const rows = this.o.q.expiredRows.all(now, 256) as (RowRef & { id: string })[];
      for (const r of rows) {
        this.o.q.deleteSeq.run(r.seq);
        this.o.lanes.remove(r);
        this.o.counters.bump(r.channel, 'expired');
        this.o.leases.release(r.id);
        n++;
      }
      if (rows.length < 256) break;
    }
    this.load();
    if (n > 0) this.o.logger.debug({ count: n }, `outbox: ${n} message(s) expired`);
    return n;
  }

  /** Saves the earliest expiry; the returned function puts it back. */
  checkpoint(): () => void {
    const saved = this.nextAt;
    return () => {
      this.nextAt = saved;
    };
  }
}
