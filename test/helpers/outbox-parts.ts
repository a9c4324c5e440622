import { join } from 'node:path';
import { afterEach } from 'vitest';
import { ChannelPolicies } from '../../src/outbox/channel-policies.js';
import { OutboxCounters } from '../../src/outbox/counters.js';
import { DiskWatermark } from '../../src/outbox/disk-watermark.js';
import { Expiry } from '../../src/outbox/expiry.js';
import { Intake } from '../../src/outbox/intake.js';
import { Lanes } from '../../src/outbox/lanes.js';
import { Leases } from '../../src/outbox/leases.js';
import type { OnLimit } from '../../src/outbox/limits.js';
import { prepareOutboxStatements } from '../../src/outbox/outbox-sql.js';
import { QueueClock } from '../../src/outbox/queue-clock.js';
import { Transactor } from '../../src/outbox/transactor.js';
import type { ChannelPolicy, EnqueueMessage } from '../../src/outbox/types.js';
import { Store } from './store.js';
import { FakeClock } from './fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Logger } from '../../src/util/logger.js';
import { silentLogger } from './logger.js';
import { tempDirs } from './tmp.js';

export interface PartsOptions {
  limits?: { maxCount: number; maxBytes: number };
  channels?: Record<string, ChannelPolicy>;
  onLimit?: Partial<OnLimit>;
  /** Free bytes the disk watermark reads (default: plenty). */
  freeBytes?: () => number;
  /** Whether the wall clock counts as synced (default: not). */
  clockSynced?: () => boolean;
  minFreeBytes?: number;
  leaseMs?: number;
  logger?: Logger;
}

/**
 * The outbox's parts on a fresh database, wired as the Outbox wires them, for tests of one part
 * with its real collaborators (no Outbox front, no group commit).
 */
export function outboxParts(dir: string, o: PartsOptions = {}) {
  const clock = new FakeClock();
  const logger = o.logger ?? silentLogger();
  const store = Store.open({ path: join(dir, 'agent.db'), logger: silentLogger(), clock });
  const db = store.db;
  const q = prepareOutboxStatements(db);
  const ids = new IdGenerator(() => clock.now());
  const limits = o.limits ?? { maxCount: 1_000, maxBytes: 1 << 30 };
  const policies = new ChannelPolicies(o.channels, o.onLimit);
  const lanes = new Lanes((channel, priority) => (q.laneOldest.get(channel, priority) as { at: number } | undefined)?.at, {
    set: (channel, priority, count, bytes) => (count > 0 ? q.laneTotalSet.run(channel, priority, count, bytes) : q.laneTotalDelete.run(channel, priority)),
    clear: () => q.laneTotalsClear.run(),
  });
  const counters = new OutboxCounters((channel, counter, value) => q.counterSet.run(channel, counter, value));
  const leases = new Leases(lanes, clock, o.leaseMs ?? 60_000);
  const queueClock = new QueueClock({ clock, synced: o.clockSynced ?? (() => false), logger });
  db.transaction(() => queueClock.open(q))();
  const expiry = new Expiry({ q, lanes, counters, leases, clock: queueClock, logger });
  const disk = new DiskWatermark({
    db,
    path: store.path,
    clock,
    logger,
    pageSize: 4096,
    walBudget: 4 * 1_048_576,
    minFreeBytes: o.minFreeBytes ?? 64 * 1_048_576,
    freeBytes: o.freeBytes ?? (() => 1 << 40),
  });
  const drops: number[] = [];
  const checkpoint = (): (() => void) => {
    const restores = [lanes.checkpoint(), counters.checkpoint(), expiry.checkpoint(), queueClock.checkpoint()];
    return () => restores.forEach((r) => r());
  };
  const tx = new Transactor({ db, checkpoint, counters, lanes, queueClock, disk, onDrops: () => void drops.push(1) });
  const intake = new Intake({ policies, limits, compressAboveBytes: 1024, clock, queueClock, ids });
  const prepare = (m: EnqueueMessage) => intake.prepare(m);
  /** Rows of the outbox table, in seq order: `channel:payload`. */
  const rows = (): string[] =>
    (db.prepare('SELECT channel, payload FROM outbox ORDER BY seq').all() as { channel: string; payload: string }[]).map((r) => `${r.channel}:${r.payload}`);
  return { store, db, q, clock, logger, ids, limits, policies, lanes, counters, leases, queueClock, expiry, disk, tx, intake, prepare, rows, drops };
}

export type OutboxParts = ReturnType<typeof outboxParts>;

/**
 * For a test file: `fresh(o)` gives parts on a temp dir of their own; after each test their stores
 * are closed and the dirs removed.
 */
export function partsPerTest(): (o?: PartsOptions) => OutboxParts {
  const dirs = tempDirs();
  const open: { close: () => void }[] = [];
  afterEach(() => {
    for (const s of open.splice(0)) s.close();
    dirs.cleanup();
  });
  return (o = {}) => {
    const p = outboxParts(dirs.make(), o);
    open.push(p.store);
    return p;
  };
}
