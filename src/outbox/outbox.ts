import type { Database } from 'better-sqlite3';
import type { Store } from '../store/store.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { IdGenerator } from '../util/ids.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import { decodePayload, encodePayload, type EncodedPayload } from './codec.js';
import { DiskWatermark, isDiskFull } from './disk-watermark.js';
import { OutboxCounters, zeroCounters, dropsOf } from './counters.js';
import { DROP_REASONS, DropReporter, diskLowError, fullError, zeroDrops, type DropCounts, type LimitKind, type OnLimit } from './limits.js';
import { CHANNEL_NAME, ChannelPolicies, defaultPriority } from './channel-policies.js';
import { Lanes, mergeLanes, type Lane } from './lanes.js';
import { GroupCommit, type PendingCall } from './group-commit.js';
import { Leases, type Lease } from './leases.js';
import { prepareOutboxStatements, type LaneRow, type OutboxStatements, type ParkedRow, type Row, type RowRef } from './outbox-sql.js';
import {
  OutboxError,
  type ChannelPolicy,
  type ChannelStats,
  type CommitInfo,
  type EnqueueMessage,
  type EnqueueResult,
  type OutboxMessage,
  type OutboxStats,
  type ParkedMessage,
  type PeekOptions,
} from './types.js';

/**
 * The outbox: one durable queue, in the agent's SQLite database, for every cloud-bound message.
 *
 * Durability. `enqueue` resolves only after the transaction holding the message has committed, so
 * the guarantee is the store's `synchronous` setting (`store.synchronous` in the config): with FULL
 * (the default) SQLite fsyncs the WAL at each commit and a resolved enqueue survives a power cut;
 * with NORMAL it survives a crash or kill of the process, and a power cut may lose the last commits.
 * `stats().durability` says which is in force.
 *
 * Group commit. Enqueues are not written one by one: they join a pending batch that is written in
 * one transaction (one fsync) when the batch has waited `groupCommit.windowMs` since its first
 * enqueue, or holds `groupCommit.maxBatch` messages, or (checked once the enqueues of an event-loop
 * turn are in) has as many callers as the previous batch had: producers that await each enqueue
 * come back together after a commit, and holding them for the rest of the window would only idle
 * them. Each caller's promise resolves after the commit that holds its message.
 *
 * Policy (limits.ts). Limits on message count and stored bytes apply per channel and in total,
 * and the queue stops growing below the free-disk watermark. To admit a message over a limit, the
 * oldest messages of the lowest priority (at most the newcomer's) within the limit's scope, among
 * the channels whose `onLimit` for that limit is `drop-oldest`, are dropped; a higher priority is
 * never dropped while a lower one is queued. When nothing may be dropped the newcomer is refused
 * (`OUTBOX_FULL`, `OUTBOX_DISK_LOW`). Every drop (by reason), expiry, delivery and park is counted
 * per channel in `outbox_counters`, in the same transaction as the change, so the counters survive
 * restarts and never disagree with the rows; a DropReporter logs the drops as summary lines.
 *
 * Delivery. `peekBatch` leases messages (highest priority first, arrival order within a channel);
 * `ack` deletes them, `nack` releases them, `park` sets aside what a sink rejects for good. Leases
 * live in memory only: after a restart every undelivered message is eligible again (at-least-once;
 * receivers dedupe on the id).
 *
 * Memory does not grow with the backlog: the outbox keeps per-(channel, priority) totals and
 * counters in memory and reads rows in small chunks through the `outbox_lane` index.
 */

export interface OutboxOptions {
  store: Pick<Store, 'db' | 'path' | 'walCheckpointPages'>;
  clock: Clock;
  ids: Pick<IdGenerator, 'next'>;
  logger: Logger;
  /** Totals over every channel: `settings.offline.maxQueueSize` and `maxQueueBytes`. */
  limits: { maxCount: number; maxBytes: number };
  channels?: Record<string, ChannelPolicy>;
  /** What gives at each limit for channels without their own `onLimit` (default: limits.ts DEFAULT_ON_LIMIT). */
  onLimit?: Partial<OnLimit>;
  /** At most one drop summary line per this many ms (default 60 s). */
  dropLogIntervalMs?: number;
  /** Payload JSON larger than this is stored gzipped (default 1024). */
  compressAboveBytes?: number;
  groupCommit?: { windowMs?: number; maxBatch?: number };
  disk?: {
    /** The watermark (default 64 MiB; 0 disables). */
    minFreeBytes?: number;
    /** Re-check free space at most this often (default 5 s) ... */
    checkIntervalMs?: number;
    /** ... or after this many payload bytes were written (default 1 MiB), whichever first. */
    checkEveryBytes?: number;
    /** Free bytes of the filesystem holding `dir` (default: statfs). Tests inject one. */
    freeBytes?: (dir: string) => number;
  };
  /** A lease not acked or nacked in this time is released (default 5 min). */
  leaseMs?: number;
  /** Most parked messages kept; beyond, the oldest parked are dropped (default 10,000). */
  maxParked?: number;
  /** Called after every committed enqueue transaction (tests and metrics). */
  onCommit?: (info: CommitInfo) => void;
}

interface Prepared {
  id: string;
  idGiven: boolean;
  channel: string;
  priority: number;
  createdAt: number;
  expiresAt: number | null;
  coalesceKey: string | null;
  enc: EncodedPayload;
}

/** Thrown (and caught) inside `ack`'s savepoint: a leased row was not there to delete. */
class LeaseMismatch extends Error {}

/** Thrown inside an enqueueMany savepoint to roll back the members already applied. */
class Refused {
  constructor(readonly error: OutboxError) {}
}

export class Outbox {
  private readonly db: Database;
  private readonly clock: Clock;
  private readonly ids: Pick<IdGenerator, 'next'>;
  private readonly logger: Logger;
  private readonly limits: { maxCount: number; maxBytes: number };
  private readonly policies: ChannelPolicies;
  private readonly drops: DropReporter;
  private readonly compressAboveBytes: number;
  private readonly leaseMs: number;
  private readonly maxParked: number;
  private readonly onCommit: ((info: CommitInfo) => void) | undefined;
  private readonly durability: OutboxStats['durability'];
  private readonly q: OutboxStatements;
  private readonly tx: (fn: () => unknown) => unknown;
  private readonly deleteLeased: (ids: string[]) => void;

  private readonly lanes: Lanes;
  private readonly counters: OutboxCounters;
  private readonly leases: Leases;
  /** The earliest expires_at of a queued message (a lower bound): nothing expires before it, so the check is free until then. */
  private nextExpiryAt = Infinity;

  private readonly group: GroupCommit<Prepared>;
  private commits = 0;
  private closed = false;

  private readonly disk: DiskWatermark;

  constructor(opts: OutboxOptions) {
    this.db = opts.store.db;
    this.clock = opts.clock;
    this.ids = opts.ids;
    this.logger = opts.logger;
    this.limits = { ...opts.limits };
    this.policies = new ChannelPolicies(opts.channels, opts.onLimit);
    this.compressAboveBytes = opts.compressAboveBytes ?? 1024;
    this.leaseMs = opts.leaseMs ?? 300_000;
    this.maxParked = opts.maxParked ?? 10_000;
    this.onCommit = opts.onCommit;
    this.durability = durabilityOf(this.db.pragma('synchronous', { simple: true }) as number);
    const pageSize = this.db.pragma('page_size', { simple: true }) as number;
    this.disk = new DiskWatermark({
      db: this.db,
      path: opts.store.path,
      clock: this.clock,
      logger: this.logger,
      pageSize,
      walBudget: opts.store.walCheckpointPages * pageSize,
      ...opts.disk,
    });
    this.q = prepareOutboxStatements(this.db);
    this.group = new GroupCommit<Prepared>({
      windowMs: opts.groupCommit?.windowMs ?? 2,
      maxBatch: opts.groupCommit?.maxBatch ?? 512,
      inTransaction: () => this.db.inTransaction,
      commit: (batch, messages) => this.commitBatch(batch, messages),
    });
    const t = this.db.transaction((fn: () => unknown) => fn());
    this.tx = (fn) => t(fn);
    // Inside `write`'s transaction this is a savepoint: a mismatch undoes the delete alone.
    this.deleteLeased = this.db.transaction((ids: string[]) => {
      const { changes } = this.q.deleteIds.run(JSON.stringify(ids));
      if (changes !== ids.length) throw new LeaseMismatch(`${changes} of ${ids.length} leased rows deleted`);
    });
    this.lanes = new Lanes((channel, priority) => (this.q.laneOldest.get(channel, priority) as { created_at: number } | undefined)?.created_at);
    this.counters = new OutboxCounters((channel, counter, value) => this.q.counterSet.run(channel, counter, value));
    this.leases = new Leases(this.lanes, this.clock, this.leaseMs);
    this.load();
    const totals = (): [string, DropCounts][] => this.counters.dropTotals();
    this.drops = new DropReporter({ db: this.db, clock: this.clock, logger: this.logger, intervalMs: opts.dropLogIntervalMs ?? 60_000, totals });
    this.drops.report(true);
  }

  /** The policy in force at each limit for `channel`. */
  onLimitOf(channel: string): OnLimit {
    return this.policies.onLimitOf(channel);
  }

  // ---------------------------------------------------------------- enqueue

  /**
   * Queues one message; resolves with its id once it is committed to disk (see the class comment
   * for what survives what). Rejects with an OutboxError: OUTBOX_INVALID, OUTBOX_TOO_LARGE,
   * OUTBOX_FULL, OUTBOX_DISK_LOW, OUTBOX_DISK_FULL, OUTBOX_CLOSED.
   */
  enqueue(msg: EnqueueMessage): Promise<EnqueueResult> {
    let m: Prepared;
    try {
      m = this.prepare(msg);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return new Promise<EnqueueResult>((resolve, reject) => {
      this.group.add({ messages: [m], resolve: (r) => resolve(r[0] as EnqueueResult), reject });
    });
  }

  /** Queues several messages all or none (one savepoint in the group's transaction); ids in order. */
  enqueueMany(msgs: readonly EnqueueMessage[]): Promise<EnqueueResult[]> {
    let ms: Prepared[];
    try {
      ms = msgs.map((m) => this.prepare(m));
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (ms.length === 0) return Promise.resolve([]);
    return new Promise<EnqueueResult[]>((resolve, reject) => this.group.add({ messages: ms, resolve, reject }));
  }

  private prepare(msg: EnqueueMessage): Prepared {
    if (this.closed) throw new OutboxError('OUTBOX_CLOSED', 'the outbox is closed (the agent is stopping)');
    const { channel } = msg;
    if (typeof channel !== 'string' || !CHANNEL_NAME.test(channel)) {
      throw new OutboxError('OUTBOX_INVALID', `channel: expected 1-64 letters, digits, ".", "_" or "-", got ${JSON.stringify(channel)}`);
    }
    const policy = this.policies.get(channel);
    const priority = msg.priority ?? policy?.priority ?? defaultPriority(channel);
    if (!Number.isSafeInteger(priority)) throw new OutboxError('OUTBOX_INVALID', `priority: expected an integer, got ${String(priority)}`);
    const ttlMs = msg.ttlMs ?? policy?.ttlMs;
    if (ttlMs !== undefined && !(typeof ttlMs === 'number' && ttlMs > 0 && Number.isFinite(ttlMs))) {
      throw new OutboxError('OUTBOX_INVALID', `ttlMs: expected a positive number of milliseconds, got ${String(ttlMs)}`);
    }
    if (msg.id !== undefined && !(typeof msg.id === 'string' && msg.id.length > 0 && msg.id.length <= 128)) {
      throw new OutboxError('OUTBOX_INVALID', `id: expected a string of 1-128 characters, got ${JSON.stringify(msg.id)}`);
    }
    if (msg.coalesceKey !== undefined && !(typeof msg.coalesceKey === 'string' && msg.coalesceKey.length > 0 && msg.coalesceKey.length <= 256)) {
      throw new OutboxError('OUTBOX_INVALID', `coalesceKey: expected a string of 1-256 characters, got ${JSON.stringify(msg.coalesceKey)}`);
    }
    let enc: EncodedPayload;
    try {
      enc = encodePayload(msg.payload, this.compressAboveBytes);
    } catch (err) {
      throw new OutboxError('OUTBOX_INVALID', `payload: expected a JSON value (${errorMessage(err)})`, { cause: err });
    }
    const maxBytes = Math.min(this.limits.maxBytes, policy?.maxBytes ?? Infinity);
    if (enc.bytes > maxBytes) {
      throw new OutboxError('OUTBOX_TOO_LARGE', `a ${channel} message of ${enc.bytes} bytes (stored) is larger than the outbox may hold (${maxBytes} bytes)`);
    }
    const createdAt = Math.round(this.clock.now());
    return {
      id: msg.id ?? this.ids.next(),
      idGiven: msg.id !== undefined,
      channel,
      priority,
      createdAt,
      expiresAt: ttlMs === undefined ? null : createdAt + Math.ceil(ttlMs),
      coalesceKey: msg.coalesceKey ?? null,
      enc,
    };
  }

  /** Writes a group commit's batch in one transaction and settles its calls. */
  private commitBatch(batch: PendingCall<Prepared>[], messages: number): void {
    const t0 = performance.now();
    const restore = this.checkpoint();
    let outcomes: (EnqueueResult[] | OutboxError)[] = [];
    const attempt = (): void => {
      outcomes = [];
      this.tx(() => {
        this.leases.releaseExpired();
        this.expireDue();
        this.disk.check();
        for (const call of batch) outcomes.push(call.messages.length === 1 ? this.admitOne(call.messages[0] as Prepared) : this.admitGroup(call.messages));
        this.counters.write();
      });
    };
    try {
      try {
        attempt();
      } catch (err) {
        restore();
        // A full disk may only be a full WAL: fold it back, re-read free space, and try once more.
        if (!isDiskFull(err) || !this.disk.reclaimWal()) throw err;
        attempt();
      }
    } catch (err) {
      restore();
      this.counters.discardDrops();
      const e = this.writeError(err, `writing ${messages} message(s)`);
      this.logger.error({ err: errorMessage(err), code: e.code, messages }, e.message);
      for (const call of batch) call.reject(e);
      return;
    }
    this.commits++;
    this.disk.afterWrite();
    this.dropsCommitted();
    batch.forEach((call, i) => {
      const o = outcomes[i];
      if (o instanceof OutboxError) call.reject(o);
      else call.resolve(o as EnqueueResult[]);
    });
    try {
      this.onCommit?.({ calls: batch.length, messages, ms: performance.now() - t0 });
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, 'outbox: onCommit hook failed');
    }
  }

  private admitOne(m: Prepared): EnqueueResult[] | OutboxError {
    const r = this.admit(m);
    return r instanceof OutboxError ? r : [r];
  }

  private admitGroup(ms: Prepared[]): EnqueueResult[] | OutboxError {
    const restore = this.checkpoint();
    try {
      return this.tx(() => {
        const out: EnqueueResult[] = [];
        for (const m of ms) {
          const r = this.admit(m);
          if (r instanceof OutboxError) throw new Refused(r);
          out.push(r);
        }
        return out;
      }) as EnqueueResult[];
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
      restore();
      return err.error;
    }
  }

  /**
   * Decides whether `m` fits, choosing what to drop first; only then changes anything, so a refused
   * message leaves the queue exactly as it was. Runs inside the batch's transaction.
   */
  private admit(m: Prepared): EnqueueResult | OutboxError {
    if (m.idGiven && this.q.idExists.get(m.id) !== undefined) return { id: m.id, duplicate: true };
    if (m.coalesceKey === null && this.fits(m)) {
      // The common case: nothing to replace, every limit has room.
      this.insert(m);
      this.disk.noteWritten(m.enc.bytes);
      return { id: m.id };
    }
    const taken = new Set<number>();
    let replaced: RowRef | undefined;
    let unkey: number | undefined;
    if (m.coalesceKey !== null) {
      const row = this.q.coalesceFind.get(m.channel, m.coalesceKey) as RowRef | undefined;
      if (row && this.leases.isLeased(row.seq)) unkey = row.seq; // in flight: let it finish, it just loses its key
      else if (row) {
        replaced = { ...row, channel: m.channel };
        taken.add(row.seq);
      }
    }
    const policy = this.policies.get(m.channel);
    const ch = this.lanes.channel(m.channel) ?? { count: 0, bytes: 0 };
    let chCount = ch.count - (replaced ? 1 : 0);
    let chBytes = ch.bytes - (replaced?.bytes ?? 0);
    let totCount = this.lanes.total.count - (replaced ? 1 : 0);
    let totBytes = this.lanes.total.bytes - (replaced?.bytes ?? 0);
    const chMax = { maxCount: policy?.maxCount ?? Infinity, maxBytes: policy?.maxBytes ?? Infinity };
    const b = m.enc.bytes;
    const victims: { v: RowRef; reason: LimitKind }[] = [];
    let freed = replaced?.bytes ?? 0;
    const take = (v: RowRef, reason: LimitKind): void => {
      victims.push({ v, reason });
      taken.add(v.seq);
      freed += v.bytes;
      totCount--;
      totBytes -= v.bytes;
      if (v.channel === m.channel) {
        chCount--;
        chBytes -= v.bytes;
      }
    };
    // Per scope (the channel's own limits, then the totals) and kind: drop what may give way, else refuse.
    const over = (scope: string | null, k: LimitKind): boolean => {
      const [count, bytes, max] = scope === null ? [totCount, totBytes, this.limits] : [chCount, chBytes, chMax];
      return k === 'count' ? count + 1 > max.maxCount : bytes + b > max.maxBytes;
    };
    for (const scope of [m.channel, null]) {
      for (const k of ['count', 'bytes'] as const) {
        if (!over(scope, k)) continue;
        for (const v of this.candidates(scope, m.priority, taken, k)) {
          take(v, k);
          if (!over(scope, k)) break;
        }
        if (over(scope, k)) return fullError({ ...m, scope, kind: k, onLimit: this.onLimitOf(m.channel) }, scope === null ? this.limits : chMax);
      }
    }
    if (this.disk.low && freed < b) {
      for (const v of this.candidates(null, m.priority, taken, 'disk')) {
        take(v, 'disk');
        if (freed >= b) break;
      }
      if (freed < b) return diskLowError(m, { dataDir: this.disk.dir, freeBytes: this.disk.free ?? 0, minFreeBytes: this.disk.minFreeBytes });
    }

    // Apply: the decision is made, now change rows and the in-memory totals together.
    if (replaced) {
      this.q.deleteSeq.run(replaced.seq);
      this.lanes.remove(replaced);
      this.counters.bump(m.channel, 'coalesced');
    }
    if (unkey !== undefined) this.q.clearKey.run(unkey);
    for (const { v, reason } of victims) {
      this.q.deleteSeq.run(v.seq);
      this.lanes.remove(v);
      this.counters.bump(v.channel, reason);
    }
    this.insert(m);
    this.disk.noteWritten(Math.max(0, b - freed));
    return { id: m.id };
  }

  private fits(m: Prepared): boolean {
    const b = m.enc.bytes;
    const t = this.lanes.total;
    if (t.count + 1 > this.limits.maxCount || t.bytes + b > this.limits.maxBytes || this.disk.low) return false;
    const policy = this.policies.get(m.channel);
    if (policy?.maxCount === undefined && policy?.maxBytes === undefined) return true;
    const ch = this.lanes.channel(m.channel) ?? { count: 0, bytes: 0 };
    return ch.count + 1 <= (policy.maxCount ?? Infinity) && ch.bytes + b <= (policy.maxBytes ?? Infinity);
  }

  private insert(m: Prepared): void {
    const { lastInsertRowid } = this.q.insert.run(m.id, m.channel, m.priority, m.createdAt, m.expiresAt, m.coalesceKey, m.enc.encoding, m.enc.bytes, m.enc.data);
    this.lanes.add(m.channel, m.priority, m.enc.bytes, m.createdAt, lastInsertRowid);
    this.counters.bump(m.channel, 'accepted');
    if (m.expiresAt !== null && m.expiresAt < this.nextExpiryAt) this.nextExpiryAt = m.expiresAt;
  }

  /**
   * Drop candidates in drop order: lowest priority first (up to `maxPriority`), oldest first within
   * a priority across the lanes of `channel` (or every channel) that give way at `kind`, skipping in-flight messages.
   */
  private *candidates(channel: string | null, maxPriority: number, skip: Set<number>, kind: LimitKind): Generator<RowRef> {
    const lanes = this.lanes.nonEmpty().filter(
      (l) => l.priority <= maxPriority && (channel === null || l.channel === channel) && this.onLimitOf(l.channel)[kind] === 'drop-oldest',
    );
    const priorities = [...new Set(lanes.map((l) => l.priority))].sort((a, b) => a - b);
    for (const p of priorities) {
      const at = lanes.filter((l) => l.priority === p);
      // Usually one victim is enough: start with a few rows per lane and read more only as needed.
      const rows = mergeLanes(
        at,
        (lane, after, limit) =>
          (this.q.laneKeys.all(lane.channel, lane.priority, after, limit) as { seq: number; bytes: number }[]).map((r) => ({
            seq: r.seq,
            bytes: r.bytes,
            channel: lane.channel,
            priority: lane.priority,
          })),
        4,
      );
      for (const v of rows) if (!skip.has(v.seq) && !this.leases.isLeased(v.seq)) yield v;
    }
  }

  // ---------------------------------------------------------------- delivery

  /**
   * The next batch for a sink: highest priority first, arrival order within a channel (lanes of the
   * same priority interleave by arrival). Stops before a message that would pass `maxBytes` (never
   * skips it, which would reorder its channel). Leases what it returns unless `lease: false`.
   */
  peekBatch(opts: PeekOptions): OutboxMessage[] {
    this.maintain();
    const maxCount = Math.max(0, Math.floor(opts.maxCount));
    const maxBytes = opts.maxBytes ?? Infinity;
    if (maxCount === 0) return [];
    const exclude = new Set(opts.excludeIds ?? []);
    const wanted = opts.channels ? new Set(opts.channels) : undefined;
    const unwanted = new Set(opts.excludeChannels ?? []);
    const lanes = this.lanes.nonEmpty().filter((l) => (!wanted || wanted.has(l.channel)) && !unwanted.has(l.channel));
    const priorities = [...new Set(lanes.map((l) => l.priority))].sort((a, b) => b - a);
    const out: OutboxMessage[] = [];
    const undecodable: string[] = [];
    let bytes = 0;
    const leasing = opts.lease !== false;
    // Per lane: the rows read so far are all leased (before, or now) up to `next`.
    const floors = new Map<Lane, { open: boolean; next: number }>();
    const seqs: number[] = [];
    const chunk = Math.min(512, maxCount + Math.min(exclude.size, 448) + 8);
    /** Takes or skips one row; false once the batch is complete. */
    const visit = (lane: Lane, r: LaneRow): boolean => {
      const seq = r[0];
      let floor = floors.get(lane);
      if (!floor) floors.set(lane, (floor = { open: leasing, next: lane.leasedBelow }));
      if (this.leases.isLeased(seq)) {
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
        msg = messageOf(lane, r);
      } catch (err) {
        this.logger.error({ id, channel: lane.channel, err: errorMessage(err) }, `outbox message ${id} cannot be decoded; parking it`);
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
    const read = (lane: Lane, after: number, limit: number): LaneRow[] => this.q.peekRows.all(lane.channel, lane.priority, after, limit) as LaneRow[];
    outer: for (const p of priorities) {
      const at = lanes.filter((l) => l.priority === p);
      const only = at.length === 1 ? at[0] : undefined;
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
      const until = this.leases.untilFromNow();
      out.forEach((m, i) => this.leases.grant(m.id, { seq: seqs[i] as number, channel: m.channel, priority: m.priority, bytes: m.storedBytes }, until));
      for (const [lane, floor] of floors) this.lanes.leasedUpTo(lane, floor.next);
    }
    if (undecodable.length > 0) this.park(undecodable, 'undecodable payload');
    return out;
  }

  /** The sink accepted these: deletes them (counted as delivered). Unknown ids are ignored. Returns how many were deleted. */
  ack(ids: Iterable<string>): number {
    const list = [...ids];
    if (list.length === 0) return 0;
    // An acknowledgement is committed without its own fsync: losing one to a power cut costs a
    // duplicate delivery (same id, deduplicated by the receiver), never a message. The next durable
    // commit (any enqueue) syncs it anyway. This takes an fsync off every delivered batch.
    const relax = this.durability === 'power-loss';
    // db.pragma, not a prepared statement: SQLite applies `PRAGMA synchronous = X` when the
    // statement is compiled, so a prepared one does nothing when run (and forces X once prepared).
    if (relax) this.db.pragma('synchronous = NORMAL');
    let n: number;
    try {
      n = this.ackRows(list);
    } finally {
      if (relax) this.db.pragma('synchronous = FULL');
    }
    for (const id of list) this.leases.release(id);
    return n;
  }

  /**
   * Leased messages (what a sink acks) are deleted in one statement, accounted from their leases
   * (channel, priority, bytes) without reading them back; others one by one. A leased row always
   * exists (nothing deletes a leased row without releasing its lease), but should one be missing the
   * bulk delete is undone (savepoint) and every message is taken the slow way.
   */
  private ackRows(list: string[]): number {
    return this.write(`acknowledging ${list.length} message(s)`, () => {
      const leased: Lease[] = [];
      const leasedIds: string[] = [];
      const rest: string[] = [];
      for (const id of list) {
        const l = this.leases.get(id);
        if (l) {
          leased.push(l);
          leasedIds.push(id);
        } else rest.push(id);
      }
      let deleted = 0;
      if (leased.length > 0) {
        try {
          this.deleteLeased(leasedIds);
          for (const l of leased) {
            this.lanes.remove(l);
            this.counters.bump(l.channel, 'delivered');
          }
          deleted += leased.length;
        } catch (err) {
          if (!(err instanceof LeaseMismatch)) throw err;
          this.logger.error({ err: err.message }, 'outbox: a leased message was missing at its ack; acknowledging one by one');
          rest.push(...leasedIds);
        }
      }
      for (const id of rest) {
        const row = this.q.deleteById.get(id) as RowRef | undefined;
        if (!row) continue;
        this.lanes.remove(row);
        this.counters.bump(row.channel, 'delivered');
        deleted++;
      }
      return deleted;
    });
  }

  /** The send failed: the messages go back to the queue, in their place. Returns how many leases were released. */
  nack(ids: Iterable<string>): number {
    let n = 0;
    for (const id of ids) if (this.leases.release(id, true)) n++;
    return n;
  }

  /**
   * The sink rejected these for good (a 4xx): they move to the parked table, are counted, are
   * visible through `parked()`, and are not retried until an operator calls `retryParked`.
   */
  park(ids: Iterable<string>, reason: string): number {
    const list = [...ids];
    if (list.length === 0) return 0;
    const at = Math.round(this.clock.now());
    const n = this.write(`parking ${list.length} message(s)`, () => {
      let parked = 0;
      for (const id of list) {
        const row = this.q.findById.get(id) as RowRef | undefined;
        if (!row) continue;
        this.q.parkInsert.run(at, reason.slice(0, 1000), row.seq);
        this.q.deleteSeq.run(row.seq);
        this.lanes.remove(row);
        this.counters.addParked(row.channel, 1);
        this.counters.bump(row.channel, 'parked');
        parked++;
      }
      const over = this.counters.parkedTotal() - this.maxParked;
      if (over > 0) {
        for (const r of this.q.parkedOldest.all(over) as { parked_seq: number; channel: string }[]) {
          this.q.parkedDelete.run(r.parked_seq);
          this.counters.addParked(r.channel, -1);
          this.counters.bump(r.channel, 'parkedLimit');
        }
      }
      return parked;
    });
    for (const id of list) this.leases.release(id);
    if (n > 0) this.logger.warn({ count: n, reason }, `parked ${n} outbox message(s): ${reason}`);
    return n;
  }

  /** Parked messages, oldest first. */
  parked(opts: { channel?: string; limit?: number } = {}): ParkedMessage[] {
    const limit = opts.limit ?? 100;
    const rows = (opts.channel === undefined ? this.q.parkedList.all(limit) : this.q.parkedListChannel.all(opts.channel, limit)) as ParkedRow[];
    return rows.map((r) => {
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
        createdAt: r.created_at,
        expiresAt: r.expires_at,
        payload,
        storedBytes: r.bytes,
        compressed: r.encoding === 1,
        parkedAt: r.parked_at,
        reason: r.reason,
        ...(payloadError === undefined ? {} : { payloadError }),
      };
    });
  }

  /** Operator action: puts parked messages (all, or these ids) back at the end of the queue. Limits apply at the next enqueue. */
  retryParked(ids?: Iterable<string>): number {
    const list = ids === undefined ? (this.q.parkedIds.all() as { id: string }[]).map((r) => r.id) : [...ids];
    return this.write(`retrying ${list.length} parked message(s)`, () => {
      let n = 0;
      for (const id of list) {
        const row = this.q.parkedGet.get(id) as ParkedRow | undefined;
        if (!row) continue;
        const inserted = this.q.unparkInsert.run(id);
        this.q.parkedDelete.run(row.parked_seq);
        this.counters.addParked(row.channel, -1);
        if (inserted.changes === 0) continue; // already queued under that id
        this.lanes.add(row.channel, row.priority, row.bytes, row.created_at, inserted.lastInsertRowid);
        this.lanes.forgetOldest(row.channel, row.priority);
        if (row.expires_at !== null && row.expires_at < this.nextExpiryAt) this.nextExpiryAt = row.expires_at;
        n++;
      }
      return n;
    });
  }

  /** Operator action: deletes parked messages (all, or these ids). */
  purgeParked(ids?: Iterable<string>): number {
    const list = ids === undefined ? (this.q.parkedIds.all() as { id: string }[]).map((r) => r.id) : [...ids];
    return this.write(`purging ${list.length} parked message(s)`, () => {
      let n = 0;
      for (const id of list) {
        const row = this.q.parkedGet.get(id) as ParkedRow | undefined;
        if (!row) continue;
        this.q.parkedDelete.run(row.parked_seq);
        this.counters.addParked(row.channel, -1);
        n++;
      }
      return n;
    });
  }

  // ---------------------------------------------------------------- maintenance

  /** Removes expired messages now (counted as expired); also done at enqueue and peek time. */
  expire(): number {
    return this.write('expiring messages', () => {
      this.nextExpiryAt = -Infinity; // force a look
      return this.expireDue();
    });
  }

  /** Commits what is pending and refuses further enqueues. Does not close the store. */
  close(): Promise<void> {
    this.closed = true;
    this.group.flush();
    this.drops.close();
    return Promise.resolve();
  }

  // ---------------------------------------------------------------- downsampling support

  /** Messages of one channel in delivery order, oldest first, at most `limit`, with their lease state. */
  readChannel(channel: string, limit: number): (OutboxMessage & { leased: boolean })[] {
    const lanes = this.lanes.nonEmpty().filter((l) => l.channel === channel);
    const out: (OutboxMessage & { leased: boolean })[] = [];
    if (limit <= 0) return out;
    for (const row of mergeLanes(lanes, (lane, after, n) => this.q.laneRows.all(lane.channel, lane.priority, after, n) as Row[], Math.min(limit, 512))) {
      out.push({ ...toMessage(row), leased: this.leases.isLeased(row.seq) });
      if (out.length >= limit) break;
    }
    return out;
  }

  /**
   * Downsampling in one transaction: each `replace` entry gets a new payload and a new id (a
   * receiver that already stored the old id must not drop the aggregate as a duplicate) but keeps
   * its place in the queue; `remove` entries are deleted and counted as downsampled. In-flight
   * messages are left alone. Returns the new ids of the replaced messages (undefined when skipped).
   */
  rewrite(channel: string, change: { replace: { id: string; payload: Json }[]; remove: string[] }): (string | undefined)[] {
    const encoded = change.replace.map((r) => ({ id: r.id, enc: encodePayload(r.payload, this.compressAboveBytes) }));
    return this.write(`downsampling ${channel}`, () => {
      const ids: (string | undefined)[] = [];
      for (const { id, enc } of encoded) {
        const row = this.q.findById.get(id) as RowRef | undefined;
        if (!row || row.channel !== channel || this.leases.isLeased(row.seq)) {
          ids.push(undefined);
          continue;
        }
        const newId = this.ids.next();
        this.q.updatePayload.run(newId, enc.encoding, enc.bytes, enc.data, row.seq);
        this.lanes.resize(row.channel, row.priority, enc.bytes - row.bytes);
        ids.push(newId);
      }
      for (const id of change.remove) {
        const row = this.q.findById.get(id) as RowRef | undefined;
        if (!row || row.channel !== channel || this.leases.isLeased(row.seq)) continue;
        this.q.deleteSeq.run(row.seq);
        this.lanes.remove(row);
        this.counters.bump(channel, 'downsampled');
      }
      return ids;
    });
  }

  /** Messages of a channel, committed and pending. */
  channelDepth(channel: string): number {
    let n = this.lanes.channel(channel)?.count ?? 0;
    for (const m of this.group.queued()) if (m.channel === channel) n++;
    return n;
  }

  // ---------------------------------------------------------------- stats

  /** Depth, bytes, age and counters per channel and in total; from memory (plus an index probe per changed lane). */
  stats(): OutboxStats {
    this.leases.releaseExpired();
    const now = this.clock.now();
    const names = new Set<string>([...this.lanes.channelNames(), ...this.counters.channelNames(), ...this.policies.names()]);
    const leasedBy = this.leases.countByChannel();
    const oldestBy = new Map<string, number>();
    for (const lane of this.lanes.nonEmpty()) {
      const o = this.lanes.oldest(lane);
      if (o !== undefined) oldestBy.set(lane.channel, Math.min(oldestBy.get(lane.channel) ?? Infinity, o));
    }
    const channels: Record<string, ChannelStats> = {};
    const total = emptyChannelStats();
    let oldest = Infinity;
    for (const name of [...names].sort()) {
      const t = this.lanes.channel(name) ?? { count: 0, bytes: 0 };
      const c = this.counters.of(name) ?? zeroCounters();
      const o = oldestBy.get(name);
      if (o !== undefined) oldest = Math.min(oldest, o);
      const cs: ChannelStats = {
        depth: t.count,
        bytes: t.bytes,
        oldestAgeMs: o === undefined ? 0 : Math.max(0, now - o),
        leased: leasedBy.get(name) ?? 0,
        delivered: c.delivered,
        dropped: c.overflow + c.count + c.bytes + c.disk + c.parkedLimit + c.corrupt,
        drops: { ...dropsOf(c), count: c.count + c.overflow },
        onLimit: { ...this.onLimitOf(name) },
        expired: c.expired,
        parked: this.counters.parkedOf(name),
        parkedTotal: c.parked,
        coalesced: c.coalesced,
        downsampled: c.downsampled,
        accepted: c.accepted,
      };
      channels[name] = cs;
      addInto(total, cs);
    }
    total.oldestAgeMs = oldest === Infinity ? 0 : Math.max(0, now - oldest);
    return {
      ...total,
      channels,
      commits: this.commits,
      pending: this.group.messages,
      // Read each time (db.pragma: a prepared pragma can answer from when it was compiled), so a setting left weaker shows.
      durability: durabilityOf(this.db.pragma('synchronous', { simple: true }) as number),
      disk: { freeBytes: this.disk.free, minFreeBytes: this.disk.minFreeBytes, low: this.disk.low },
    };
  }

  // ---------------------------------------------------------------- internals

  /** The ledger, counters and next expiry of what the database holds, at open. */
  private load(): void {
    this.lanes.load(this.q.loadLanes.all() as { channel: string; priority: number; n: number; b: number }[]);
    this.counters.load(this.q.loadCounters.all() as { channel: string; counter: string; value: number }[], this.q.loadParked.all() as { channel: string; n: number }[]);
    this.nextExpiryAt = (this.q.minExpiry.get() as { t: number | null }).t ?? Infinity;
    const total = this.lanes.total;
    if (total.count > 0) this.logger.info({ depth: total.count, bytes: total.bytes }, `outbox holds ${total.count} undelivered message(s) from before`);
  }

  /** Saves everything in memory that a transaction changes; the returned function restores it (as often as called). */
  private checkpoint(): () => void {
    const lanes = this.lanes.checkpoint();
    const counters = this.counters.checkpoint();
    const nextExpiryAt = this.nextExpiryAt;
    return () => {
      lanes();
      counters();
      this.nextExpiryAt = nextExpiryAt;
    };
  }

  /** Runs `fn` in a transaction with counters written at its end; on failure restores memory and throws an OutboxError. */
  private write<T>(what: string, fn: () => T): T {
    const restore = this.checkpoint();
    const run = (): T =>
      this.tx(() => {
        const out = fn();
        this.counters.write();
        return out;
      }) as T;
    try {
      let r: T;
      try {
        r = run();
      } catch (err) {
        restore();
        // As for enqueues: a full WAL is folded back and the write tried once more (an ack frees space).
        if (!isDiskFull(err) || !this.disk.reclaimWal()) throw err;
        r = run();
      }
      this.disk.afterWrite();
      this.dropsCommitted();
      return r;
    } catch (err) {
      restore();
      this.counters.discardDrops();
      throw this.writeError(err, what);
    }
  }

  private dropsCommitted(): void {
    if (this.counters.takeDrops()) this.drops.noteDrops();
  }

  private writeError(err: unknown, what: string): OutboxError {
    if (err instanceof OutboxError) return err;
    if (isDiskFull(err)) return this.disk.full(err, what);
    return new OutboxError('OUTBOX_WRITE_FAILED', `${what} failed: ${errorMessage(err)}`, { cause: err });
  }

  /** Expiry and lease upkeep before a read. */
  private maintain(): void {
    this.leases.releaseExpired();
    if (this.clock.now() < this.nextExpiryAt) return;
    try {
      this.write('expiring messages', () => this.expireDue());
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, 'outbox: expiring messages failed; will retry');
    }
  }

  /** Deletes expired messages (in the caller's transaction). In-flight ones too: their ack becomes a no-op. */
  private expireDue(): number {
    const now = this.clock.now();
    if (now < this.nextExpiryAt) return 0;
    let n = 0;
    for (;;) {
      const rows = this.q.expiredRows.all(now, 256) as (RowRef & { id: string })[];
      for (const r of rows) {
        this.q.deleteSeq.run(r.seq);
        this.lanes.remove(r);
        this.counters.bump(r.channel, 'expired');
        this.leases.release(r.id);
        n++;
      }
      if (rows.length < 256) break;
    }
    this.nextExpiryAt = (this.q.minExpiry.get() as { t: number | null }).t ?? Infinity;
    if (n > 0) this.logger.debug({ count: n }, `outbox: ${n} message(s) expired`);
    return n;
  }
}

function messageOf(lane: Lane, r: LaneRow): OutboxMessage {
  return {
    id: r[1],
    channel: lane.channel,
    priority: lane.priority,
    createdAt: r[2],
    expiresAt: r[3],
    coalesceKey: r[4],
    payload: decodePayload(r[5], r[7]),
    storedBytes: r[6],
    compressed: r[5] === 1,
  };
}

function toMessage(r: Row): OutboxMessage {
  return {
    id: r.id,
    channel: r.channel,
    priority: r.priority,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    coalesceKey: r.coalesce_key,
    payload: decodePayload(r.encoding, r.payload),
    storedBytes: r.bytes,
    compressed: r.encoding === 1,
  };
}

function emptyChannelStats(): ChannelStats {
  return {
    depth: 0,
    bytes: 0,
    oldestAgeMs: 0,
    leased: 0,
    delivered: 0,
    dropped: 0,
    drops: zeroDrops(),
    onLimit: { count: 'refuse', bytes: 'refuse', disk: 'refuse' },
    expired: 0,
    parked: 0,
    parkedTotal: 0,
    coalesced: 0,
    downsampled: 0,
    accepted: 0,
  };
}

function addInto(t: ChannelStats, c: ChannelStats): void {
  t.depth += c.depth;
  t.bytes += c.bytes;
  t.leased += c.leased;
  t.delivered += c.delivered;
  t.dropped += c.dropped;
  for (const r of DROP_REASONS) t.drops[r] += c.drops[r];
  t.expired += c.expired;
  t.parked += c.parked;
  t.parkedTotal += c.parkedTotal;
  t.coalesced += c.coalesced;
  t.downsampled += c.downsampled;
  t.accepted += c.accepted;
}

function durabilityOf(synchronous: number): OutboxStats['durability'] {
  return synchronous >= 2 ? 'power-loss' : synchronous === 1 ? 'process-crash' : 'none';
}
