import type { OutboxCounters } from './counters.js';
import type { Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import type { OutboxStatements, RowRef } from './outbox-sql.js';
import type { Transactor } from './transactor.js';

export interface SupersededOptions {
  q: Pick<OutboxStatements, 'coalesceFind' | 'deleteSeq'>;
  tx: Pick<Transactor, 'run'>;
  lanes: Pick<Lanes, 'remove'>;
  counters: Pick<OutboxCounters, 'bump'>;
  leases: Pick<Leases, 'get' | 'supersededKey' | 'release'>;
  /** The delete failed (a full disk...): the stale messages stay queued and are sent again, harmless. */
  onError: (err: unknown) => void;
}

/**
 * A coalesced message (a state report, a health report...) that was in flight when a newer one
 * with its key arrived kept its place: it may already be at the cloud. If its delivery then fails
 * (a nack), it is stale, and sending it again later would only repeat an older state after the
 * newer one: it is deleted and counted as coalesced instead of going back to the queue. Only when
 * the newer message is really there (a later row holds the key): a rolled-back enqueue leaves the
 * stale one its key, and it is then requeued as any other.
 */
export class Superseded {
  constructor(private readonly o: SupersededOptions) {}

  /** Releases the leases of `ids` (their rows go back to the queue) and deletes those superseded. Returns how many leases were released. */
  nack(ids: Iterable<string>): number {
    const stale: (RowRef & { key: string })[] = [];
    let n = 0;
    for (const id of ids) {
      const l = this.o.leases.get(id);
      const key = this.o.leases.supersededKey(id);
      if (l && key !== undefined) stale.push({ seq: l.seq, channel: l.channel, priority: l.priority, bytes: l.bytes, key });
      if (this.o.leases.release(id, true)) n++;
    }
    if (stale.length > 0) {
      try {
        this.drop(stale);
      } catch (err) {
        this.o.onError(err);
      }
    }
    return n;
  }

  private drop(stale: (RowRef & { key: string })[]): void {
    this.o.tx.run(`dropping ${stale.length} superseded message(s)`, () => {
      for (const s of stale) {
        const newer = this.o.q.coalesceFind.get(s.channel, s.key) as { seq: number } | undefined;
        if (!newer || newer.seq <= s.seq) continue;
        if (this.o.q.deleteSeq.run(s.seq).changes === 0) continue;
        this.o.lanes.remove(s);
        this.o.counters.bump(s.channel, 'coalesced');
      }
    });
  }
}
