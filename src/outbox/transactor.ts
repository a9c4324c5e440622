import type { Database } from 'better-sqlite3';
import { errorMessage } from '../util/errors.js';
import type { OutboxCounters } from './counters.js';
import { isDiskFull, type DiskWatermark } from './disk-watermark.js';
import type { Lanes } from './lanes.js';
import type { QueueClock } from './queue-clock.js';
import type { StreamHeads } from './stream-heads.js';
import { OutboxError } from './types.js';

export interface TransactorOptions {
  db: Pick<Database, 'transaction'>;
  /** Saves everything in memory a transaction changes; the returned function restores it (as often as called). */
  checkpoint: () => () => void;
  counters: Pick<OutboxCounters, 'write' | 'takeDrops' | 'discardDrops'>;
  /** The ledger's per-lane totals, persisted at the end of each transaction with the counters. */
  lanes: Pick<Lanes, 'write'>;
  /** Where the queue clock was last seen (and the boot's wall origin once synced), written at the end of each transaction. */
  queueClock?: Pick<QueueClock, 'write'>;
  /** The streams' newest messages: written at the end of each transaction, taken in memory once it committed. */
  heads?: Pick<StreamHeads, 'write' | 'settle'>;
  disk: Pick<DiskWatermark, 'reclaimWal' | 'afterWrite' | 'full'>;
  /** A committed transaction dropped messages (the drop reporter's cue). */
  onDrops: () => void;
}

/**
 * Every outbox write runs here: rows and the in-memory ledger change together in one transaction,
 * the changed counters and lane totals are written at its end, and on a rollback memory is restored to match the
 * rows. A write that hits a full disk is tried once more after the WAL is folded back (it may only
 * be a full WAL); what still fails becomes an OutboxError.
 */
export class Transactor {
  private readonly tx: (fn: () => unknown) => unknown;

  constructor(private readonly o: TransactorOptions) {
    const t = o.db.transaction((fn: () => unknown) => fn());
    this.tx = (fn) => t(fn);
  }

  /** `fn` all or nothing, in a transaction of its own or (inside one) a savepoint; memory is the caller's concern. */
  atomic<T>(fn: () => T): T {
    return this.tx(fn) as T;
  }

  /** See `TransactorOptions.checkpoint`. */
  checkpoint(): () => void {
    return this.o.checkpoint();
  }

  /** Runs `fn` in a transaction with counters written at its end; on failure restores memory and throws an OutboxError about `what`. */
  run<T>(what: string, fn: () => T): T {
    const restore = this.o.checkpoint();
    const attempt = (): T =>
      this.atomic(() => {
        const out = fn();
        this.o.counters.write();
        this.o.lanes.write();
        this.o.heads?.write();
        this.o.queueClock?.write();
        return out;
      });
    try {
      let r: T;
      try {
        r = attempt();
      } catch (err) {
        restore();
        // A full disk may only be a full WAL: fold it back, re-read free space, and try once more (an ack frees space).
        if (!isDiskFull(err) || !this.o.disk.reclaimWal()) throw err;
        r = attempt();
      }
      this.o.heads?.settle();
      this.o.disk.afterWrite();
      if (this.o.counters.takeDrops()) this.o.onDrops();
      return r;
    } catch (err) {
      restore();
      this.o.counters.discardDrops();
      throw this.error(err, what);
    }
  }

  private error(err: unknown, what: string): OutboxError {
    if (err instanceof OutboxError) return err;
    if (isDiskFull(err)) return this.o.disk.full(err, what);
    return new OutboxError('OUTBOX_WRITE_FAILED', `${what} failed: ${errorMessage(err)}`, { cause: err });
  }
}
