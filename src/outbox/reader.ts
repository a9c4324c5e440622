import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { decodePayload } from './codec.js';
import { mergeLanes, type Lane, type Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import type { LaneRow, OutboxStatements, Row } from './outbox-sql.js';
import type { QueueClock } from './queue-clock.js';
import type { OutboxMessage, PeekOptions } from './types.js';

export interface ReaderOptions {
  q: Pick<OutboxStatements, 'peekRows' | 'laneRows'>;
  lanes: Pick<Lanes, 'nonEmpty' | 'leasedUpTo'>;
  leases: Pick<Leases, 'isLeased' | 'grant' | 'untilFromNow'>;
  /** A message's wall time, corrected when its boot's clock got synced after it was queued. */
  queueClock: Pick<QueueClock, 'wallOf' | 'wallOffset'>;
  logger: Logger;
}

/** What a peek found: the batch, and ids whose payload cannot be decoded (the caller parks them). */
export interface Peeked {
  batch: OutboxMessage[];
  undecodable: string[];
}

/**
 * Reads queued messages in delivery order: highest priority first, arrival order within a channel
 * (lanes of the same priority interleave by arrival), each lane from where its leased prefix ends,
 * in chunks, so memory does not grow with the backlog.
 */
export class Reader {
  constructor(private readonly o: ReaderOptions) {}

  /**
   * The next batch for a sink. Stops before a message that would pass `maxBytes` (never skips it,
   * which would reorder its channel). Leases what it returns unless `lease: false`.
   */
  peek(opts: PeekOptions): Peeked {
    const maxCount = Math.max(0, Math.floor(opts.maxCount));
    const maxBytes = opts.maxBytes ?? Infinity;
    if (maxCount === 0) return { batch: [], undecodable: [] };
    const exclude = new Set(opts.excludeIds ?? []);
    const wanted = opts.channels ? new Set(opts.channels) : undefined;
    const unwanted = new Set(opts.excludeChannels ?? []);
    const lanes = this.o.lanes.nonEmpty().filter((l) => (!wanted || wanted.has(l.channel)) && !unwanted.has(l.channel));
    const priorities = [...new Set(lanes.map((l) => l.priority))].sort((a, b) => b - a);
    const out: OutboxMessage[] = [];
    const undecodable: string[] = [];
    let bytes = 0;
    const leasing = opts.lease !== false;
    // Per lane: the rows read so far are all leased (before, or now) up to `next`.
    const floors = new Map<Lane, { open: boolean; next: number }>();
    const seqs: number[] = [];
    // Stryker disable next-line MethodExpression: the chunk is how many rows one read fetches; a larger one returns the same messages
    const chunk = Math.min(512, maxCount + Math.min(exclude.size, 448) + 8);
    const time = { wallOf: (c: number, b: number | null, m: number | null) => this.o.queueClock.wallOf(c, b, m), offset: this.o.queueClock.wallOffset() };
    /** Takes or skips one row; false once the batch is complete. */
    const visit = (lane: Lane, r: LaneRow): boolean => {
      const seq = r[0];
      let floor = floors.get(lane);
      if (!floor) floors.set(lane, (floor = { open: leasing, next: lane.leasedBelow }));
      if (this.o.leases.isLeased(seq)) {
        if (floor.open) floor.next = seq + 1;
        return true;
      }
      const id = r[1];
      if (exclude.has(id)) {
        floor.open = false;
        return true;
      }
      const rowBytes = r[6];
      if (out.length > 0 && bytes + rowBytes > maxBytes) return false;
      let msg: OutboxMessage;
      try {
        msg = messageOf(lane, r, time);
      } catch (err) {
        this.o.logger.error({ id, channel: lane.channel, err: errorMessage(err) }, `outbox message ${id} cannot be decoded; parking it`);
        undecodable.push(id);
        floor.open = false;
        return true;
      }
      out.push(msg);
      seqs.push(seq);
      if (floor.open) floor.next = seq + 1;
      bytes += rowBytes;
      return out.length < maxCount;
    };
    // Raw rows (arrays) of the columns the lane does not already tell: half the cost of row objects.
    const read = (lane: Lane, after: number, limit: number): LaneRow[] => this.o.q.peekRows.all(lane.channel, lane.priority, after, limit) as LaneRow[];
    outer: for (const p of priorities) {
      const at = lanes.filter((l) => l.priority === p);
      // Stryker disable next-line ConditionalExpression: merging a single lane yields the same rows; this path only saves the merge's cost
      const only = at.length === 1 ? at[0] : undefined;
      // Stryker disable next-line ConditionalExpression,BlockStatement: as above, the merge below reads a single lane the same way
      if (only) {
        // One lane at this priority (the usual case): read it in order, no merging.
        for (let after = only.leasedBelow - 1; ; ) {
          const rows = read(only, after, chunk);
          for (const r of rows) if (!visit(only, r)) break outer;
          if (rows.length < chunk) break;
          after = (rows[rows.length - 1] as LaneRow)[0];
        }
        continue;
      }
      const merged = mergeLanes(at, (lane, after, limit) => read(lane, after, limit).map((r) => ({ seq: r[0], lane, r })), chunk, (l) => l.leasedBelow);
      for (const { lane, r } of merged) if (!visit(lane, r)) break outer;
    }
    if (leasing) {
      const until = this.o.leases.untilFromNow();
      out.forEach((m, i) => this.o.leases.grant(m.id, { seq: seqs[i] as number, channel: m.channel, priority: m.priority, bytes: m.storedBytes }, until));
      for (const [lane, floor] of floors) this.o.lanes.leasedUpTo(lane, floor.next);
    }
    return { batch: out, undecodable };
  }

  /** Messages of one channel in delivery order, oldest first, at most `limit`, with their lease state. */
  readChannel(channel: string, limit: number): (OutboxMessage & { leased: boolean })[] {
    const lanes = this.o.lanes.nonEmpty().filter((l) => l.channel === channel);
    const out: (OutboxMessage & { leased: boolean })[] = [];
    const time = { wallOf: (c: number, b: number | null, m: number | null) => this.o.queueClock.wallOf(c, b, m), offset: this.o.queueClock.wallOffset() };
    if (limit <= 0) return out;
    // Stryker disable next-line MethodExpression: the chunk size of the reads; a larger one returns the same rows
    for (const row of mergeLanes(lanes, (lane, after, n) => this.o.q.laneRows.all(lane.channel, lane.priority, after, n) as Row[], Math.min(limit, 512))) {
      out.push({ ...toMessage(row, time), leased: this.o.leases.isLeased(row.seq) });
      if (out.length >= limit) break;
    }
    return out;
  }
}

/** How a read turns stored times into wall times: `wallOf` for when it was queued, `offset` for its expiry. */
export interface WallTimes {
  wallOf: QueueClock['wallOf'];
  offset: number;
}

/** A queue-clock expiry as the wall time it falls at (as the wall clock reads now). */
export function expiryWall(expiresAt: number | null, offset: number): number | null {
  return expiresAt === null ? null : Math.round(expiresAt + offset);
}

function messageOf(lane: Lane, r: LaneRow, time: WallTimes): OutboxMessage {
  return {
    id: r[1],
    channel: lane.channel,
    priority: lane.priority,
    createdAt: time.wallOf(r[2], r[8], r[9]),
    expiresAt: expiryWall(r[3], time.offset),
    coalesceKey: r[4],
    payload: decodePayload(r[5], r[7]),
    storedBytes: r[6],
    compressed: r[5] === 1,
  };
}

function toMessage(r: Row, time: WallTimes): OutboxMessage {
  return {
    id: r.id,
    channel: r.channel,
    priority: r.priority,
    createdAt: time.wallOf(r.created_at, r.boot, r.mono),
    expiresAt: expiryWall(r.expires_at, time.offset),
    coalesceKey: r.coalesce_key,
    payload: decodePayload(r.encoding, r.payload),
    storedBytes: r.bytes,
    compressed: r.encoding === 1,
  };
}
