import type { Database } from 'better-sqlite3';
import type { Store } from '../store/store.js';
import { commitWithoutFsync, syncLevel } from '../store/sync-level.js';
import { WalSync, type WalSyncFs } from '../store/wal-sync.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { IdGenerator } from '../util/ids.js';
import type { Logger } from '../util/logger.js';
import { Acks } from './ack.js';
import { Admission } from './admission.js';
import { ChannelPolicies } from './channel-policies.js';
import { OutboxCounters } from './counters.js';
import { dropOffline } from './offline-drops.js';
import { DiskWatermark } from './disk-watermark.js';
import type { FreshEpisode } from './episode.js';
import { Episodes, type EpisodeScope } from './episodes.js';
import { Expiry } from './expiry.js';
import { GroupCommit, type PendingCall } from './group-commit.js';
import { Intake, type Prepared } from './intake.js';
import { Lanes } from './lanes.js';
import { LedgerLog, outboxLedger, type OutboxLedger } from './ledger.js';
import { Leases } from './leases.js';
import { DropReporter, type OnLimit } from './limits.js';
import { LANE_TOTALS_MISMATCH_SQL } from './migration.js';
import { prepareOutboxStatements, type OutboxStatements } from './outbox-sql.js';
import { QueueClock } from './queue-clock.js';
import { Parking } from './parking.js';
import { Reader } from './reader.js';
import { recoverOutbox } from './recovery.js';
import { Rewriter, type ChannelRewrite } from './rewrite.js';
import { durabilityOf, outboxStats } from './stats.js';
import { Superseded } from './superseded.js';
import { Transactor } from './transactor.js';
import {
  OutboxError,
  type ChannelPolicy,
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
 * This class is its front; each job is a part of its own (docs/outbox.md):
 *
 * - intake.ts checks and encodes a message; group-commit.ts gathers enqueues into one transaction
 *   (store/wal-sync.ts makes it durable off the event loop); admission.ts admits each within the limits, dropping what may give way (limits.ts;
 *   lane-heads.ts reads the lanes' first rows once per commit for it);
 * - transactor.ts runs every write, keeping the in-memory ledger (lanes.ts, counters.ts, expiry.ts)
 *   in step with the rows and restoring it on a rollback; disk-watermark.ts watches free space;
 * - reader.ts reads batches in delivery order; leases.ts holds what is in flight; ack.ts deletes
 *   what was delivered; parking.ts keeps what a sink refused for good; rewrite.ts is downsampling's;
 * - queue-clock.ts is the time TTLs and ages run on (no wall-clock step moves it, reboots carry it) and
 *   corrects the wall times of messages queued before the clock was synced;
 * - recovery.ts rebuilds the ledger at open; stats.ts reports it; outbox-sql.ts holds every statement.
 *
 * Durability. `enqueue` resolves only once the transaction holding the message is as durable as
 * the store's `synchronous` setting (`store.synchronous` in the config) asks: with FULL (the
 * default) a resolved enqueue survives a power cut: the transaction commits without an fsync of its
 * own and resolves after the WAL's next fdatasync, which runs off the event loop (store/wal-sync.ts)
 * and covers every commit made before it; with NORMAL it resolves at the commit and survives a crash
 * or kill of the process, and a power cut may lose the last commits. `stats().durability` says
 * which is in force.
 *
 * Delivery. `peekBatch` leases messages (highest priority first, arrival order within a channel);
 * `ack` deletes them, `nack` releases them, `park` sets aside what a sink rejects for good. Leases
 * live in memory only: after a restart every undelivered message is eligible again (at-least-once;
 * receivers dedupe on the id). Memory does not grow with the backlog.
 */

export interface OutboxOptions {
  store: Pick<Store, 'db' | 'path' | 'walCheckpointPages' | 'quarantine' | 'integrityChecked' | 'verifyLater' | 'distrust'>;
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
  /** The file calls that sync the WAL after an enqueue's commit (default node:fs; tests inject failures). */
  walSyncFs?: WalSyncFs;
  /** Whether the wall clock is synced now (clock-sync.ts): what the queue clock trusts it for (docs/outbox.md, "Time"). Default: never. */
  clockSynced?: () => boolean;
  /** Called after every committed enqueue transaction (tests and metrics). */
  onCommit?: (info: CommitInfo) => void;
  /**
   * `settings.offline.enableQueue: false`: while this answers true (the cloud is unreachable), a
   * new message is not queued: its enqueue is refused with OUTBOX_OFFLINE and counted as an
   * `offline` drop of its channel. What was queued before stays and is delivered.
   */
  refuseWhileOffline?: () => boolean;
  /** The rows were counted again after the start (a background check found the totals wrong): the loss ledger may have changed. */
  onRecount?: () => void;
}

/** Runs the `alongside` of each admitted call, in the commit's transaction; returns the outcomes. */
function runAlongside<T>(batch: readonly PendingCall<Prepared>[], outcomes: T[]): T[] {
  batch.forEach((call, i) => {
    if (!(outcomes[i] instanceof OutboxError)) call.alongside?.();
  });
  return outcomes;
}

export class Outbox {
  private readonly db: Database;
  private readonly store: OutboxOptions['store'];
  private readonly q: OutboxStatements;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly onCommit: ((info: CommitInfo) => void) | undefined;
  private readonly refuseWhileOffline: (() => boolean) | undefined;
  private readonly policies: ChannelPolicies;
  private readonly lanes: Lanes;
  private readonly counters: OutboxCounters;
  private readonly leases: Leases;
  private readonly expiry: Expiry;
  private readonly queueClock: QueueClock;
  private readonly disk: DiskWatermark;
  private readonly tx: Transactor;
  private readonly intake: Intake;
  private readonly admission: Admission;
  private readonly group: GroupCommit<Prepared>;
  private readonly reader: Reader;
  private readonly acks: Acks;
  private readonly parking: Parking;
  private readonly rewriter: Rewriter;
  private readonly superseded: Superseded;
  private readonly drops: DropReporter;
  private readonly episodes: Episodes;
  /** The connection's `synchronous` at open: at FULL or above, enqueues are fsynced off the loop (walSync). */
  private readonly syncLevel: number;
  private readonly walSync: WalSync;
  private readonly onRecount: (() => void) | undefined;
  private readonly ledgerLog: LedgerLog;
  private commits = 0;
  private closed = false;
  private closing: Promise<void> | undefined;

  constructor(opts: OutboxOptions) {
    const { clock, logger, ids } = opts;
    const db = (this.db = opts.store.db);
    this.clock = clock;
    this.logger = logger;
    this.onCommit = opts.onCommit;
    this.refuseWhileOffline = opts.refuseWhileOffline;
    this.onRecount = opts.onRecount;
    this.ledgerLog = new LedgerLog(logger);
    const limits = { ...opts.limits };
    const compressAboveBytes = opts.compressAboveBytes ?? 1024;
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    const q = (this.q = prepareOutboxStatements(db));
    this.store = opts.store;
    const policies = (this.policies = new ChannelPolicies(opts.channels, opts.onLimit));
    const lanes = (this.lanes = new Lanes(
      (channel, priority) => (q.laneOldest.get(channel, priority) as { at: number } | undefined)?.at,
      {
        set: (channel, priority, count, bytes) => (count > 0 ? q.laneTotalSet.run(channel, priority, count, bytes) : q.laneTotalDelete.run(channel, priority)),
        clear: () => q.laneTotalsClear.run(),
      },
      (seq) => this.episodes.inserted(seq),
    ));
    const episodes = (this.episodes = new Episodes({ q, lanes, policies, logger, clock }));
    const heads = episodes.heads;
    const counters = (this.counters = new OutboxCounters((channel, counter, value) => q.counterSet.run(channel, counter, value)));
    const leases = (this.leases = new Leases(lanes, clock, opts.leaseMs ?? 300_000));
    const queueClock = (this.queueClock = new QueueClock({ clock, synced: opts.clockSynced ?? (() => false), logger }));
    const expiry = (this.expiry = new Expiry({ q, lanes, counters, leases, clock: queueClock, logger }));
    const disk = (this.disk = new DiskWatermark({ db, path: opts.store.path, clock, logger, pageSize, walBudget: opts.store.walCheckpointPages * pageSize, ...opts.disk }));
    const checkpoint = (): (() => void) => {
      const restores = [lanes.checkpoint(), counters.checkpoint(), expiry.checkpoint(), queueClock.checkpoint(), heads.checkpoint()];
      return () => restores.forEach((restore) => restore());
    };
    const tx = (this.tx = new Transactor({ db, checkpoint, counters, lanes, heads, queueClock, disk, onDrops: () => this.drops.noteDrops() }));
    this.intake = new Intake({ policies, limits, compressAboveBytes, clock, queueClock, ids });
    this.admission = new Admission({ q, tx, lanes, counters, leases, expiry, heads, disk, policies, limits });
    const level = (this.syncLevel = syncLevel(db));
    const walSync = (this.walSync = new WalSync(opts.store.path, { onIdle: () => this.group.release(), fs: opts.walSyncFs }));
    this.group = new GroupCommit<Prepared>({
      windowMs: opts.groupCommit?.windowMs ?? 2,
      maxBatch: opts.groupCommit?.maxBatch ?? 512,
      inTransaction: () => db.inTransaction,
      commit: (batch, messages) => this.commitBatch(batch, messages),
      hold: level >= 2 ? () => walSync.busy : undefined,
    });
    this.reader = new Reader({ q, lanes, leases, queueClock, logger });
    this.acks = new Acks({ db, q, tx, lanes, counters, leases, logger, syncLevel: level });
    this.parking = new Parking({ q, tx, lanes, counters, leases, expiry, clock, queueClock, logger, maxParked: opts.maxParked ?? 10_000 });
    this.rewriter = new Rewriter({ q, tx, lanes, counters, leases, ids, compressAboveBytes });
    this.superseded = new Superseded({
      q,
      tx,
      lanes,
      counters,
      leases,
      onError: (err) => logger.warn({ err: errorMessage(err) }, 'outbox: superseded messages could not be deleted; they are sent again'),
    });
    const store = this.store;
    // A salvage copies the totals of the damaged file beside fewer rows: always counted again then.
    const trustTotals = !store.quarantine && (!store.integrityChecked || store.verifyLater({ name: 'outbox lane totals', sql: LANE_TOTALS_MISMATCH_SQL }, (row) => this.recount(row)));
    recoverOutbox({ q, lanes, counters, expiry, logger, trustTotals });
    this.openQueueClock();
    if (lanes.unwritten) this.persistTotals('counted at open');
    const totals = () => counters.dropTotals();
    this.drops = new DropReporter({ db, clock, logger, intervalMs: opts.dropLogIntervalMs ?? 60_000, totals });
    this.drops.report(true);
    // A loss found at open (rows removed while the agent was stopped) is logged now, not at the first look.
    this.ledger();
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
    if (this.refuseWhileOffline?.()) return Promise.reject(dropOffline({ tx: this.tx, counters: this.counters, logger: this.logger }, [m.channel]));
    return new Promise<EnqueueResult>((resolve, reject) => {
      this.group.add({ messages: [m], resolve: (r) => resolve(r[0] as EnqueueResult), reject });
    });
  }

  /**
   * Queues several messages all or none (one savepoint in the group's transaction); ids in order.
   * `alongside` runs in the same transaction once they are admitted: a producer's own bookkeeping
   * (a read cursor) that must be on disk exactly when its messages are.
   */
  enqueueMany(msgs: readonly EnqueueMessage[], opts?: { alongside?: () => void }): Promise<EnqueueResult[]> {
    let ms: Prepared[];
    try {
      ms = msgs.map((m) => this.prepare(m));
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (ms.length === 0) return Promise.resolve([]);
    if (this.refuseWhileOffline?.()) return Promise.reject(dropOffline({ tx: this.tx, counters: this.counters, logger: this.logger }, ms.map((m) => m.channel)));
    return new Promise<EnqueueResult[]>((resolve, reject) => this.group.add({ messages: ms, resolve, reject, ...(opts?.alongside ? { alongside: opts.alongside } : {}) }));
  }

  private prepare(msg: EnqueueMessage): Prepared {
    if (this.closed) throw new OutboxError('OUTBOX_CLOSED', 'the outbox is closed (the agent is stopping)');
    return this.intake.prepare(msg);
  }

  /** Writes a group commit's batch in one transaction (upkeep first) and settles its calls. */
  private commitBatch(batch: PendingCall<Prepared>[], messages: number): void {
    const t0 = performance.now();
    let outcomes: (EnqueueResult[] | OutboxError)[];
    // With FULL, the commit itself skips the fsync and WalSync does it on the thread pool: the loop
    // goes on reading while the disk works, and what arrives meanwhile shares the next fsync.
    const deferSync = this.syncLevel >= 2 && !this.db.inTransaction;
    try {
      outcomes = commitWithoutFsync(this.db, deferSync ? this.syncLevel : 0, () =>
        this.tx.run(`writing ${messages} message(s)`, () => {
          this.leases.releaseExpired();
          this.expiry.expireDue();
          this.disk.check();
          return runAlongside(batch, this.admission.admitCalls(batch.map((call) => call.messages)));
        }),
      );
    } catch (err) {
      const e = err as OutboxError;
      this.logger.error({ err: errorMessage(e.cause ?? e), code: e.code, messages }, e.message);
      for (const call of batch) call.reject(e);
      return;
    }
    this.commits++;
    const settle = (syncErr?: OutboxError): void =>
      batch.forEach((call, i) => {
        const o = outcomes[i];
        if (o instanceof OutboxError) call.reject(o);
        else if (syncErr) call.reject(syncErr);
        else call.resolve(o as EnqueueResult[]);
      });
    if (deferSync) this.walSync.after((err) => settle(err && this.syncFailed(err, messages)));
    else settle();
    try {
      this.onCommit?.({ calls: batch.length, messages, ms: performance.now() - t0 });
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, 'outbox: onCommit hook failed');
    }
  }

  /**
   * The commit is in the WAL but its fsync failed: the messages are queued (and will be delivered)
   * but were never on disk as promised, so their producers are told. A retry may duplicate them.
   */
  private syncFailed(err: Error, messages: number): OutboxError {
    const e = new OutboxError('OUTBOX_WRITE_FAILED', `writing ${messages} message(s): ${err.message}; they are queued but may not survive a power cut`, { cause: err });
    this.logger.error({ err: err.message, code: e.code, messages }, e.message);
    return e;
  }

  // ---------------------------------------------------------------- delivery

  /**
   * The next batch for a sink: highest priority first, arrival order within a channel (lanes of the
   * same priority interleave by arrival). Stops before a message that would pass `maxBytes` (never
   * skips it, which would reorder its channel). Leases what it returns unless `lease: false`.
   */
  peekBatch(opts: PeekOptions): OutboxMessage[] {
    this.maintain();
    const { batch, undecodable } = this.reader.peek(opts);
    if (undecodable.length > 0) this.park(undecodable, 'undecodable payload');
    return batch;
  }

  /**
   * The cloud is back (a flusher's first send, or its first after a failure): a freshness-first
   * drain of the opt-in channels `scope` carries. Pass it to `peekBatch` (`episode`); close it when
   * a new one begins or the flusher stops.
   */
  beginEpisode(scope: EpisodeScope = {}): FreshEpisode {
    return this.episodes.begin(scope);
  }

  /** The sink accepted these: deletes them (counted as delivered). Unknown ids are ignored. Returns how many were deleted. */
  ack(ids: Iterable<string>): number {
    return this.acks.ack(ids);
  }

  /** Messages leased to a sink and not yet acked, nacked or parked: a delivery is under way while it is above 0. */
  get leased(): number {
    return this.leases.size;
  }

  /**
   * The send failed: the messages go back to the queue, in their place (those a newer message with
   * the same coalesce key replaced while in flight are deleted: superseded.ts). Returns how many leases were released.
   */
  nack(ids: Iterable<string>): number {
    return this.superseded.nack(ids);
  }

  /**
   * The sink rejected these for good (a 4xx): they move to the parked table, are counted, are
   * visible through `parked()`, and are not retried until an operator calls `retryParked`.
   */
  park(ids: Iterable<string>, reason: string): number {
    return this.parking.park(ids, reason);
  }

  /** Parked messages, oldest first. */
  parked(opts: { channel?: string; limit?: number } = {}): ParkedMessage[] {
    return this.parking.list(opts);
  }

  /** Operator action: puts parked messages (all, or these ids) back at the end of the queue. Limits apply at the next enqueue. */
  retryParked(ids?: Iterable<string>): number {
    return this.parking.retry(ids);
  }

  /** Operator action: deletes parked messages (all, or these ids). */
  purgeParked(ids?: Iterable<string>): number {
    return this.parking.purge(ids);
  }

  // ---------------------------------------------------------------- maintenance

  /** Removes expired messages now (counted as expired); also done at enqueue and peek time. */
  expire(): number {
    return this.tx.run('expiring messages', () => {
      this.expiry.force();
      return this.expiry.expireDue();
    });
  }

  /** Commits what is pending, refuses further enqueues, and resolves once what was committed is synced. Does not close the store. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    this.group.flush();
    this.episodes.close(this.tx);
    this.drops.close();
    this.closing =
      this.syncLevel < 2
        ? Promise.resolve()
        : new Promise((resolve) =>
            this.walSync.after(() => {
              this.walSync.close();
              resolve();
            }),
          );
    return this.closing;
  }

  /**
   * The persisted lane totals disagreed with the rows (`mismatch`: the first lane that did, from
   * the background check): the rows are counted again, in a transaction, and the totals replaced.
   */
  private recount(mismatch: unknown): boolean {
    if (this.closed) return false;
    this.logger.warn({ mismatch }, 'outbox: the per-lane totals kept in the database did not match its rows (was it written by something else?); counting the rows again');
    this.lanes.recount(this.q.loadLanes.all() as { channel: string; priority: number; n: number; b: number }[]);
    const persisted = this.persistTotals('recounted');
    this.onRecount?.();
    return persisted;
  }

  /** Writes the lane totals whole; on failure the next start must count again (the store is told). */
  private persistTotals(why: string): boolean {
    try {
      this.tx.run(`writing the outbox's lane totals (${why})`, () => undefined);
      return true;
    } catch (err) {
      this.logger.error({ err: errorMessage(err) }, `outbox: the lane totals (${why}) could not be written; they are counted again at the next start`);
      this.store.distrust();
      return false;
    }
  }

  /** Finds or starts this boot's row; on failure ages are kept in memory only (the next open carries on from the last write). */
  private openQueueClock(): void {
    try {
      this.db.transaction(() => this.queueClock.open(this.q))();
    } catch (err) {
      this.logger.error({ err: errorMessage(err) }, 'outbox: the boot of the queue clock could not be written; message ages carry on from the last one written');
    }
  }

  /** Expiry, lease upkeep and a first clock sync (so what is read next carries corrected times) before a read. */
  private maintain(): void {
    this.leases.releaseExpired();
    if (this.queueClock.syncPending) {
      try {
        this.tx.run('noting the clock synced', () => undefined);
      } catch (err) {
        this.logger.warn({ err: errorMessage(err) }, 'outbox: noting the clock synced failed; will retry');
      }
    }
    if (!this.expiry.due()) return;
    try {
      this.tx.run('expiring messages', () => this.expiry.expireDue());
    } catch (err) {
      this.logger.warn({ err: errorMessage(err) }, 'outbox: expiring messages failed; will retry');
    }
  }

  // ---------------------------------------------------------------- downsampling support

  /** Messages of one channel in delivery order, oldest first, at most `limit`, with their lease state. */
  readChannel(channel: string, limit: number): (OutboxMessage & { leased: boolean })[] {
    return this.reader.readChannel(channel, limit);
  }

  /** Downsampling in one transaction (rewrite.ts). Returns the new ids of the replaced messages (undefined when skipped). */
  rewrite(channel: string, change: ChannelRewrite): (string | undefined)[] {
    return this.rewriter.rewrite(channel, change);
  }

  /** Messages of a channel, committed and pending. */
  channelDepth(channel: string): number {
    let n = this.lanes.channel(channel)?.count ?? 0;
    for (const m of this.group.queued()) if (m.channel === channel) n++;
    return n;
  }

  // ---------------------------------------------------------------- stats

  /**
   * The loss ledger per channel (ledger.ts): every message taken, accounted for. A channel whose
   * `unaccounted` changes to anything but 0 is logged as an error, once per change.
   */
  ledger(): OutboxLedger {
    const l = outboxLedger(this.stats(), (channel) => this.counters.of(channel)?.digest ?? 0);
    this.ledgerLog.note(l);
    return l;
  }

  /** Depth, bytes, age and counters per channel and in total; from memory (plus an index probe per changed lane). */
  stats(): OutboxStats {
    this.leases.releaseExpired();
    return outboxStats({
      lanes: this.lanes,
      counters: this.counters,
      leases: this.leases,
      policies: this.policies,
      now: this.queueClock.now(),
      totals: {
        commits: this.commits,
        pending: this.group.messages,
        // Read each time (db.pragma: a prepared pragma can answer from when it was compiled), so a setting left weaker shows.
        durability: durabilityOf(syncLevel(this.db)),
        disk: { freeBytes: this.disk.free, minFreeBytes: this.disk.minFreeBytes, low: this.disk.low },
      },
    });
  }
}
