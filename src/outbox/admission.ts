import type { ChannelPolicies } from './channel-policies.js';
import type { OutboxCounters } from './counters.js';
import type { DiskWatermark } from './disk-watermark.js';
import type { Expiry } from './expiry.js';
import { LaneHeads, type KeyRow } from './lane-heads.js';
import { mergeLanes, type Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import { diskLowError, fullError, type LimitKind } from './limits.js';
import type { Prepared } from './intake.js';
import type { OutboxStatements, RowRef } from './outbox-sql.js';
import type { StreamHeads } from './stream-heads.js';
import type { Transactor } from './transactor.js';
import { OutboxError, type EnqueueResult } from './types.js';

export interface AdmissionOptions {
  q: Pick<OutboxStatements, 'idExists' | 'coalesceFind' | 'clearKey' | 'deleteSeq' | 'insert' | 'laneKeys'>;
  tx: Pick<Transactor, 'atomic' | 'checkpoint'>;
  lanes: Pick<Lanes, 'add' | 'remove' | 'channel' | 'total' | 'nonEmpty'>;
  counters: Pick<OutboxCounters, 'bump'>;
  leases: Pick<Leases, 'isLeased' | 'supersede'>;
  expiry: Pick<Expiry, 'note'>;
  /** The newest message of each stream (freshness-first drain); none: not kept. */
  heads?: Pick<StreamHeads, 'moved'>;
  disk: Pick<DiskWatermark, 'low' | 'noteWritten' | 'dir' | 'free' | 'minFreeBytes'>;
  policies: Pick<ChannelPolicies, 'get' | 'onLimitOf'>;
  /** Totals over every channel. */
  limits: { maxCount: number; maxBytes: number };
}

/** What admitting a message over a limit changes: the row it replaces (coalescing), a key it takes, what it drops. */
interface Plan {
  replaced: RowRef | undefined;
  unkey: number | undefined;
  victims: { v: RowRef; reason: LimitKind }[];
  freed: number;
}

/** Thrown inside an enqueueMany savepoint to roll back the members already applied. */
class Refused {
  constructor(readonly error: OutboxError) {}
}

/**
 * Admission and limits, inside a group commit's transaction: a message that fits is inserted; one
 * over a limit (count or bytes, of its channel or in total, or free disk under the watermark) drops
 * the oldest messages of the lowest priority (at most its own) within the limit's scope, among the
 * channels whose `onLimit` for that limit is `drop-oldest`, or is refused when nothing may give way.
 * A refused message leaves the queue exactly as it was.
 */
export class Admission {
  /** The lanes' first rows while `admitCalls` runs (one group commit's transaction). */
  private heads: LaneHeads | undefined;

  constructor(private readonly o: AdmissionOptions) {}

  /** A group commit's calls, in order, in the caller's transaction: their drop plans share one read of each lane's first rows. */
  admitCalls(calls: readonly Prepared[][]): (EnqueueResult[] | OutboxError)[] {
    this.heads = new LaneHeads((channel, priority, after, limit) => this.o.q.laneKeys.all(channel, priority, after, limit) as { seq: number; bytes: number }[]);
    try {
      return calls.map((messages) => this.admitCall(messages));
    } finally {
      this.heads = undefined;
    }
  }

  /** One enqueue call: its results, or the error that refused it (an enqueueMany is all or nothing). */
  admitCall(messages: Prepared[]): EnqueueResult[] | OutboxError {
    if (messages.length === 1) {
      const r = this.admit(messages[0] as Prepared);
      return r instanceof OutboxError ? r : [r];
    }
    const restore = this.o.tx.checkpoint();
    try {
      return this.o.tx.atomic(() => {
        const out: EnqueueResult[] = [];
        for (const m of messages) {
          const r = this.admit(m);
          if (r instanceof OutboxError) throw new Refused(r);
          out.push(r);
        }
        return out;
      });
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
      restore();
      this.heads?.clear(); // the savepoint's rollback put back what it had deleted
      return err.error;
    }
  }

  /** Decides whether `m` fits, choosing what to drop first; only then changes anything. */
  admit(m: Prepared): EnqueueResult | OutboxError {
    if (m.idGiven && this.o.q.idExists.get(m.id) !== undefined) return { id: m.id, duplicate: true };
    if (m.coalesceKey === null && this.fits(m)) {
      // The common case: nothing to replace, every limit has room.
      this.insert(m);
      this.o.disk.noteWritten(m.enc.bytes);
      return { id: m.id };
    }
    const plan = this.plan(m);
    if (plan instanceof OutboxError) return plan;
    // Apply: the decision is made, now change rows and the in-memory totals together.
    if (plan.replaced) {
      this.delete(plan.replaced);
      this.o.counters.bump(m.channel, 'coalesced');
    }
    // Stryker disable next-line ConditionalExpression: equivalent: an undefined seq is bound as NULL and matches no row
    if (plan.unkey !== undefined) {
      this.o.q.clearKey.run(plan.unkey);
      this.o.leases.supersede(plan.unkey, m.coalesceKey as string);
    }
    for (const { v, reason } of plan.victims) {
      this.delete(v);
      this.o.counters.bump(v.channel, reason);
    }
    this.insert(m);
    this.o.disk.noteWritten(Math.max(0, m.enc.bytes - plan.freed));
    return { id: m.id };
  }

  /** What must give way for `m`, per scope (its channel's limits, then the totals) and kind, then the disk; or why it is refused. */
  private plan(m: Prepared): Plan | OutboxError {
    const taken = new Set<number>();
    const plan: Plan = { replaced: undefined, unkey: undefined, victims: [], freed: 0 };
    // Stryker disable next-line ConditionalExpression: equivalent: a NULL key matches no row (`= NULL` is never true)
    if (m.coalesceKey !== null) {
      const row = this.o.q.coalesceFind.get(m.channel, m.coalesceKey) as RowRef | undefined;
      if (row && this.o.leases.isLeased(row.seq)) plan.unkey = row.seq; // in flight: let it finish, it just loses its key
      else if (row) {
        plan.replaced = { ...row, channel: m.channel };
        taken.add(row.seq);
      }
    }
    const { replaced } = plan;
    const policy = this.o.policies.get(m.channel);
    const ch = this.o.lanes.channel(m.channel) ?? { count: 0, bytes: 0 };
    let chCount = ch.count - (replaced ? 1 : 0);
    let chBytes = ch.bytes - (replaced?.bytes ?? 0);
    let totCount = this.o.lanes.total.count - (replaced ? 1 : 0);
    let totBytes = this.o.lanes.total.bytes - (replaced?.bytes ?? 0);
    const chMax = { maxCount: policy?.maxCount ?? Infinity, maxBytes: policy?.maxBytes ?? Infinity };
    const b = m.enc.bytes;
    plan.freed = replaced?.bytes ?? 0;
    const take = (v: RowRef, reason: LimitKind): void => {
      plan.victims.push({ v, reason });
      taken.add(v.seq);
      plan.freed += v.bytes;
      totCount--;
      totBytes -= v.bytes;
      if (v.channel === m.channel) {
        chCount--;
        chBytes -= v.bytes;
      }
    };
    const over = (scope: string | null, k: LimitKind): boolean => {
      const [count, bytes, max] = scope === null ? [totCount, totBytes, this.o.limits] : [chCount, chBytes, chMax];
      return k === 'count' ? count + 1 > max.maxCount : bytes + b > max.maxBytes;
    };
    for (const scope of [m.channel, null]) {
      for (const k of ['count', 'bytes'] as const) {
        if (!over(scope, k)) continue;
        for (const v of this.candidates(scope, m.priority, taken, k)) {
          take(v, k);
          if (!over(scope, k)) break;
        }
        if (over(scope, k)) return fullError({ ...m, scope, kind: k, onLimit: this.o.policies.onLimitOf(m.channel) }, scope === null ? this.o.limits : chMax);
      }
    }
    if (this.o.disk.low && plan.freed < b) {
      for (const v of this.candidates(null, m.priority, taken, 'disk')) {
        take(v, 'disk');
        if (plan.freed >= b) break;
      }
      if (plan.freed < b) return diskLowError(m, { dataDir: this.o.disk.dir, freeBytes: this.o.disk.free ?? 0, minFreeBytes: this.o.disk.minFreeBytes });
    }
    return plan;
  }

  /**
   * The fast path only: true lets a message in without planning. A wrong false costs time, never a
   * different outcome (plan() then decides exactly), so the mutants that make it false more often
   * are equivalent; each line says so.
   */
  private fits(m: Prepared): boolean {
    const b = m.enc.bytes;
    const t = this.o.lanes.total;
    // Stryker disable next-line EqualityOperator: equivalent: ">=" only sends an exact fit to plan(), which admits it
    if (t.count + 1 > this.o.limits.maxCount || t.bytes + b > this.o.limits.maxBytes || this.o.disk.low) return false;
    const policy = this.o.policies.get(m.channel);
    // Stryker disable next-line BooleanLiteral: equivalent: false sends the message to plan(), which admits it
    if (policy?.maxCount === undefined && policy?.maxBytes === undefined) return true;
    const ch = this.o.lanes.channel(m.channel) ?? { count: 0, bytes: 0 };
    // Stryker disable next-line EqualityOperator,ConditionalExpression: equivalent: "<" or false only send an exact fit to plan(), which admits it
    return ch.count + 1 <= (policy.maxCount ?? Infinity) && ch.bytes + b <= (policy.maxBytes ?? Infinity);
  }

  private insert(m: Prepared): void {
    const { lastInsertRowid } = this.o.q.insert.run(m.id, m.channel, m.priority, m.createdAt, m.expiresAt, m.coalesceKey, m.enc.encoding, m.enc.bytes, m.enc.data, m.boot, m.mono, m.stream);
    this.o.heads?.moved(m.channel, m.stream, Number(lastInsertRowid));
    this.o.lanes.add(m.channel, m.priority, m.enc.bytes, m.mono, lastInsertRowid);
    this.heads?.inserted(m.channel, m.priority, Number(lastInsertRowid), m.enc.bytes);
    this.o.counters.bump(m.channel, 'accepted');
    this.o.expiry.note(m.expiresAt);
  }

  private delete(v: RowRef): void {
    this.o.q.deleteSeq.run(v.seq);
    this.o.lanes.remove(v);
    this.heads?.deleted(v.channel, v.priority, v.seq);
  }

  /**
   * Drop candidates in drop order: lowest priority first (up to `maxPriority`), oldest first within
   * a priority across the lanes of `channel` (or every channel) that give way at `kind`, skipping in-flight messages.
   */
  private *candidates(channel: string | null, maxPriority: number, skip: Set<number>, kind: LimitKind): Generator<RowRef> {
    const lanes = this.o.lanes
      .nonEmpty()
      .filter((l) => l.priority <= maxPriority && (channel === null || l.channel === channel) && this.o.policies.onLimitOf(l.channel)[kind] === 'drop-oldest');
    const priorities = [...new Set(lanes.map((l) => l.priority))].sort((a, b) => a - b);
    for (const p of priorities) {
      const at = lanes.filter((l) => l.priority === p);
      // One victim is usually enough (a full queue drops one per message): read one row per lane
      // first and more only as needed, each lane from its leased prefix on (rows below it are all in
      // flight, never victims; a flusher keeps a batch or two of a lane's oldest rows leased).
      const rows = mergeLanes(
        at,
        (lane, after, limit) =>
          (this.heads ? this.heads.rows(lane.channel, lane.priority, after, limit) : (this.o.q.laneKeys.all(lane.channel, lane.priority, after, limit) as KeyRow[])).map((r) => ({
            seq: r.seq,
            bytes: r.bytes,
            channel: lane.channel,
            priority: lane.priority,
          })),
        1,
        (lane) => lane.leasedBelow,
      );
      for (const v of rows) if (!skip.has(v.seq) && !this.o.leases.isLeased(v.seq)) yield v;
    }
  }
}
