import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { decodePayload } from './codec.js';
import type { FreshEpisode } from './episode.js';
import { mergeLanes, type Lane, type Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import type { HeadRow, LaneRow, OutboxStatements, Row } from './outbox-sql.js';
import type { QueueClock } from './queue-clock.js';
import type { OutboxMessage, PeekOptions } from './types.js';

export interface ReaderOptions {
  q: Pick<OutboxStatements, 'peekRows' | 'laneRows' | 'headRow'>;
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
   * which would reorder its channel). Leases what it returns unless `lease: false`. With an
   * `episode` (a freshness-first drain), its streams' newest messages come first, and in the lanes
   * it orders what was queued after the return goes before the history, which is marked `backfill`.
   */
  peek(opts: PeekOptions): Peeked {
    const maxCount = Math.max(0, Math.floor(opts.maxCount));
    if (maxCount === 0) return { batch: [], undecodable: [] };
    const wanted = opts.channels ? new Set(opts.channels) : undefined;
    const unwanted = new Set(opts.excludeChannels ?? []);
    const lanes = this.o.lanes.nonEmpty().filter((l) => (!wanted || wanted.has(l.channel)) && !unwanted.has(l.channel));
    const episode = opts.episode?.active ? opts.episode : undefined;
    const exclude = new Set(opts.excludeIds ?? []);
    const p: Peek = {
      maxCount,
      maxBytes: opts.maxBytes ?? Infinity,
      leasing: opts.lease !== false,
      exclude,
      episode,
      out: [],
      seqs: [],
      undecodable: [],
      bytes: 0,
      taken: new Set(),
      // Stryker disable next-line MethodExpression: the chunk is how many rows one read fetches; a larger one returns the same messages
      chunk: Math.min(512, maxCount + Math.min(exclude.size, 448) + 8),
      time: { wallOf: (c, b, m) => this.o.queueClock.wallOf(c, b, m), offset: this.o.queueClock.wallOffset() },
    };
    const segments: Segment[] = [];
    if (!episode || this.heads(p, episode, lanes)) {
      const priorities = [...new Set(lanes.map((l) => l.priority))].sort((a, b) => b - a);
      for (const priority of priorities) {
        const groups = segmentsOf(
          lanes.filter((l) => l.priority === priority),
          episode,
          p.leasing,
        );
        segments.push(...groups.flat());
        if (!groups.every((g) => this.readGroup(p, g))) break;
      }
    }
    if (p.leasing) {
      const until = this.o.leases.untilFromNow();
      p.out.forEach((m, i) => this.o.leases.grant(m.id, { seq: p.seqs[i] as number, channel: m.channel, priority: m.priority, bytes: m.storedBytes }, until));
      for (const seg of segments) if (seg.floor) this.o.lanes.leasedUpTo(seg.lane, seg.next);
    }
    return { batch: p.out, undecodable: p.undecodable };
  }

  /** The episode's heads still queued and not in flight, first; false once the batch is complete. */
  private heads(p: Peek, episode: FreshEpisode, lanes: Lane[]): boolean {
    const byKey = new Map(lanes.map((l) => [`${l.channel}\u0000${l.priority}`, l]));
    for (const h of episode.heads()) {
      if (this.o.leases.isLeased(h.seq)) continue;
      const r = this.o.q.headRow.get(h.seq) as HeadRow | undefined;
      // Its seq may hold another row now (SQLite reuses the highest seqs once deleted).
      if (!r || r[10] !== h.channel || (r[12] ?? '') !== h.stream) {
        episode.isGone(h.seq);
        continue;
      }
      const lane = byKey.get(`${h.channel}\u0000${r[11]}`);
      if (!lane || p.exclude.has(r[1])) continue;
      const took = this.take(p, lane, r as unknown as LaneRow, false);
      if (took === 'undecodable') episode.isGone(h.seq);
      if (took === 'full') return false;
      if (took === 'taken') p.taken.add(h.seq);
      if (p.out.length >= p.maxCount) return false;
    }
    return true;
  }

  /** Reads a group of segments merged by seq; false once the batch is complete. */
  private readGroup(p: Peek, group: Segment[]): boolean {
    if (group.length === 0) return true;
    const read = (seg: Segment, after: number, limit: number): LaneRow[] =>
      this.o.q.peekRows.all(seg.lane.channel, seg.lane.priority, after, seg.upTo, limit) as LaneRow[];
    // Stryker disable next-line ConditionalExpression: merging a single segment yields the same rows; this path only saves the merge's cost
    if (group.length === 1) {
      const seg = group[0] as Segment;
      for (let after = seg.from - 1; ; ) {
        const rows = read(seg, after, p.chunk);
        for (const r of rows) if (!this.visit(p, seg, r)) return false;
        if (rows.length < p.chunk) break;
        after = (rows[rows.length - 1] as LaneRow)[0];
      }
    } else {
      const merged = mergeLanes(group, (seg, after, limit) => read(seg, after, limit).map((r) => ({ seq: r[0], seg, r })), p.chunk, (seg) => seg.from);
      for (const { seg, r } of merged) if (!this.visit(p, seg, r)) return false;
    }
    // Read to its end: every row of a bounded segment is leased (or taken) if its floor is still open.
    for (const seg of group) if (seg.floor && seg.upTo < NO_BOUND) seg.next = Math.max(seg.next, seg.upTo + 1);
    return true;
  }

  /** Takes or skips one row of a segment; false once the batch is complete. */
  private visit(p: Peek, seg: Segment, r: LaneRow): boolean {
    const seq = r[0];
    if (this.o.leases.isLeased(seq) || p.taken.has(seq)) {
      if (seg.floor) seg.next = seq + 1;
      return true;
    }
    if (p.exclude.has(r[1])) {
      seg.floor = false;
      return true;
    }
    const took = this.take(p, seg.lane, r, seg.history && !(p.episode as FreshEpisode).isHead(seq));
    if (took === 'full') return false;
    if (took === 'undecodable') seg.floor = false;
    else if (seg.floor) seg.next = seq + 1;
    return p.out.length < p.maxCount;
  }

  /** Adds one row to the batch unless it would pass `maxBytes` ('full') or cannot be decoded (to be parked). */
  private take(p: Peek, lane: Lane, r: LaneRow, backfill: boolean): 'taken' | 'full' | 'undecodable' {
    const rowBytes = r[6];
    if (p.out.length > 0 && p.bytes + rowBytes > p.maxBytes) return 'full';
    let msg: OutboxMessage;
    try {
      msg = messageOf(lane, r, p.time);
    } catch (err) {
      this.o.logger.error({ id: r[1], channel: lane.channel, err: errorMessage(err) }, `outbox message ${r[1]} cannot be decoded; parking it`);
      p.undecodable.push(r[1]);
      return 'undecodable';
    }
    if (backfill) msg.backfill = true;
    p.out.push(msg);
    p.seqs.push(r[0]);
    p.bytes += rowBytes;
    return 'taken';
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

/** The largest seq a read is bounded by when it is not. */
const NO_BOUND = Number.MAX_SAFE_INTEGER;

/** One peek's batch in the making. */
interface Peek {
  maxCount: number;
  maxBytes: number;
  leasing: boolean;
  exclude: Set<string>;
  episode: FreshEpisode | undefined;
  out: OutboxMessage[];
  seqs: number[];
  undecodable: string[];
  bytes: number;
  /** Heads this peek took (leased only at its end): skipped when their lane is read. */
  taken: Set<number>;
  chunk: number;
  time: WallTimes;
}

/**
 * A range (from, upTo] of one lane to read in seq order. `floor`: the range starts at the lane's
 * leased prefix and every row read so far was leased (before, or now) up to `next`, so the prefix
 * may be raised there. `history`: rows queued before an episode's return (marked backfill).
 */
interface Segment {
  lane: Lane;
  from: number;
  upTo: number;
  history: boolean;
  floor: boolean;
  next: number;
}

/**
 * The segments of one priority's lanes, in two groups read one after the other: without an episode
 * (or for a lane it does not order) the whole lane from its leased prefix in the second; with one,
 * what came after the return in the first and the history in the second (beside the other lanes, by seq).
 */
function segmentsOf(lanes: readonly Lane[], episode: FreshEpisode | undefined, leasing: boolean): [Segment[], Segment[]] {
  const live: Segment[] = [];
  const rest: Segment[] = [];
  const seg = (lane: Lane, from: number, upTo: number, history: boolean): Segment => ({ lane, from, upTo, history, floor: leasing && from === lane.leasedBelow, next: lane.leasedBelow });
  for (const lane of lanes) {
    if (!episode?.orders(lane.channel)) {
      rest.push(seg(lane, lane.leasedBelow, NO_BOUND, false));
      continue;
    }
    const line = episode.liveFrom;
    live.push(seg(lane, Math.max(line + 1, lane.leasedBelow), NO_BOUND, false));
    if (lane.leasedBelow <= line) rest.push(seg(lane, lane.leasedBelow, line, true));
  }
  return [live, rest];
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
