import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import { decodePayload } from './codec.js';
import type { OutboxCounters } from './counters.js';
import type { Expiry } from './expiry.js';
import type { Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import type { OutboxStatements, ParkedRow, RowRef } from './outbox-sql.js';
import type { QueueClock } from './queue-clock.js';
import { expiryWall, type WallTimes } from './reader.js';
import type { Transactor } from './transactor.js';
import type { ParkedMessage } from './types.js';

export interface ParkingOptions {
  q: Pick<
    OutboxStatements,
    'findById' | 'parkInsert' | 'deleteSeq' | 'parkedOldest' | 'parkedDelete' | 'parkedIds' | 'parkedGet' | 'parkedList' | 'parkedListChannel' | 'unparkInsert'
  >;
  tx: Pick<Transactor, 'run'>;
  lanes: Pick<Lanes, 'add' | 'remove' | 'forgetOldest'>;
  counters: Pick<OutboxCounters, 'bump' | 'addParked' | 'parkedTotal'>;
  leases: Pick<Leases, 'release'>;
  expiry: Pick<Expiry, 'note'>;
  clock: Pick<Clock, 'now'>;
  /** A message's wall time, corrected when its boot's clock got synced after it was queued. */
  queueClock: Pick<QueueClock, 'wallOf' | 'wallOffset'>;
  logger: Logger;
  /** Most parked messages kept; beyond, the oldest parked are dropped (counted as parkedLimit). */
  maxParked: number;
}

/**
 * The parked table: messages a sink rejected for good (a 4xx) are moved there, counted, listed, and
 * not retried until an operator puts them back. At most `maxParked` are kept.
 */
export class Parking {
  constructor(private readonly o: ParkingOptions) {}

  /** Moves these from the queue to the parked table with `reason`; returns how many were queued. */
  park(ids: Iterable<string>, reason: string): number {
    const list = [...ids];
    if (list.length === 0) return 0;
    const at = Math.round(this.o.clock.now());
    const n = this.o.tx.run(`parking ${list.length} message(s)`, () => {
      let parked = 0;
      for (const id of list) {
        const row = this.o.q.findById.get(id) as RowRef | undefined;
        if (!row) continue;
        const before = this.o.q.parkedGet.get(id) as ParkedRow | undefined;
        if (before) {
          // Parked before under the same id (a producer sent it again): the newer copy replaces it, counted as replaced.
          this.o.counters.addParked(before.channel, -1);
          this.o.counters.bump(before.channel, 'coalesced');
        }
        this.o.q.parkInsert.run(at, reason.slice(0, 1000), row.seq);
        this.o.q.deleteSeq.run(row.seq);
        this.o.lanes.remove(row);
        this.o.counters.addParked(row.channel, 1);
        this.o.counters.bump(row.channel, 'parked');
        parked++;
      }
      this.trim();
      return parked;
    });
    for (const id of list) this.o.leases.release(id);
    if (n > 0) this.o.logger.warn({ count: n, reason }, `parked ${n} outbox message(s): ${reason}`);
    return n;
  }

  /** Parked messages, oldest first. */
  list(opts: { channel?: string; limit?: number } = {}): ParkedMessage[] {
    const limit = opts.limit ?? 100;
    const rows = (opts.channel === undefined ? this.o.q.parkedList.all(limit) : this.o.q.parkedListChannel.all(opts.channel, limit)) as ParkedRow[];
    const q = this.o.queueClock;
    const time = { wallOf: (c: number, b: number | null, m: number | null) => q.wallOf(c, b, m), offset: q.wallOffset() };
    return rows.map((r) => parkedMessage(r, time));
  }

  /** Puts parked messages (all, or these ids) back at the end of the queue. Limits apply at the next enqueue. */
  retry(ids?: Iterable<string>): number {
    const list = this.idsOrAll(ids);
    const n = this.o.tx.run(`retrying ${list.length} parked message(s)`, () => {
      let done = 0;
      for (const id of list) {
        const row = this.o.q.parkedGet.get(id) as ParkedRow | undefined;
        if (!row) continue;
        const inserted = this.o.q.unparkInsert.run(id);
        this.o.q.parkedDelete.run(row.parked_seq);
        this.o.counters.addParked(row.channel, -1);
        if (inserted.changes === 0) {
          // Already queued under that id (a producer sent it again): one copy goes, counted as replaced.
          this.o.counters.bump(row.channel, 'coalesced');
          continue;
        }
        this.o.lanes.add(row.channel, row.priority, row.bytes, row.mono ?? row.created_at, inserted.lastInsertRowid);
        this.o.lanes.forgetOldest(row.channel, row.priority);
        this.o.expiry.note(row.expires_at);
        done++;
      }
      return done;
    });
    // An operator's action: said in the log, like the parking itself.
    this.o.logger.info({ asked: list.length, requeued: n }, `requeued ${n} parked outbox message(s)`);
    return n;
  }

  /** Deletes parked messages (all, or these ids), counted as `purged` drops of their channel. */
  purge(ids?: Iterable<string>): number {
    const list = this.idsOrAll(ids);
    const n = this.o.tx.run(`purging ${list.length} parked message(s)`, () => {
      let done = 0;
      for (const id of list) {
        const row = this.o.q.parkedGet.get(id) as ParkedRow | undefined;
        if (!row) continue;
        this.o.q.parkedDelete.run(row.parked_seq);
        this.o.counters.addParked(row.channel, -1);
        this.o.counters.bump(row.channel, 'purged');
        done++;
      }
      return done;
    });
    this.o.logger.info({ asked: list.length, purged: n }, `purged ${n} parked outbox message(s): counted as dropped (purged)`);
    return n;
  }

  /** Over `maxParked`: the oldest parked give way, counted as parkedLimit drops of their channel. */
  private trim(): void {
    const over = this.o.counters.parkedTotal() - this.o.maxParked;
    if (over <= 0) return;
    for (const r of this.o.q.parkedOldest.all(over) as { parked_seq: number; channel: string }[]) {
      this.o.q.parkedDelete.run(r.parked_seq);
      this.o.counters.addParked(r.channel, -1);
      this.o.counters.bump(r.channel, 'parkedLimit');
    }
  }

  private idsOrAll(ids: Iterable<string> | undefined): string[] {
    return ids === undefined ? (this.o.q.parkedIds.all() as { id: string }[]).map((r) => r.id) : [...ids];
  }
}

function parkedMessage(r: ParkedRow, time: WallTimes): ParkedMessage {
  // A message parked because its payload cannot be decoded must not hide the rest of the list.
  let payload: Json = null;
  let payloadError: string | undefined;
  try {
    payload = decodePayload(r.encoding, r.payload);
  } catch (err) {
    payloadError = `the stored payload cannot be decoded: ${errorMessage(err)}`;
  }
  return {
    id: r.id,
    channel: r.channel,
    priority: r.priority,
    createdAt: time.wallOf(r.created_at, r.boot, r.mono),
    expiresAt: expiryWall(r.expires_at, time.offset),
    payload,
    storedBytes: r.bytes,
    compressed: r.encoding === 1,
    parkedAt: r.parked_at,
    reason: r.reason,
    ...(payloadError === undefined ? {} : { payloadError }),
  };
}
