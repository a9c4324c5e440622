import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import type { BootRow, OutboxStatements } from './outbox-sql.js';

/** Boots kept in `outbox_boots` (a row each; older ones only lose their wall-clock origin). */
const KEEP_BOOTS = 1_000;

export type BootStatements = Pick<OutboxStatements, 'bootById' | 'bootLast' | 'bootInsert' | 'bootSeen' | 'bootSynced' | 'bootOrigins' | 'bootsPrune'>;

export interface QueueClockOptions {
  clock: Pick<Clock, 'now' | 'uptime' | 'bootId'>;
  /** Whether the wall clock is synced now (clock-sync.ts); a wall clock not known to be synced is never trusted. */
  synced: () => boolean;
  logger: Logger;
}

/** Where a message was queued in time: its boot (`outbox_boots.boot`) and the queue clock then. */
export interface Stamp {
  boot: number;
  mono: number;
}

/** A boot whose wall clock got synced: its wall time at queue-clock time t is `wallOrigin + t`, for t before `syncedAt`. */
interface Origin {
  syncedAt: number;
  wallOrigin: number;
}

/**
 * The queue clock: elapsed milliseconds that no wall-clock step moves, carried across process
 * restarts and reboots by the database (docs/outbox.md, "Time"). TTLs and ages are measured on it.
 *
 * - Within a boot it is the boot's uptime (the kernel's monotonic clock) plus the boot's `base`,
 *   so a restart of the agent in the same boot continues it exactly.
 * - A new boot continues from where the last boot was last seen (`seen_at`, written with every
 *   outbox transaction) plus this boot's uptime before the agent opened; the downtime between is
 *   added only when the wall clock was synced both when last seen and now (else it is not known,
 *   and a message lives longer rather than expiring on a guess).
 * - The first clock ever is the wall clock's value, so rows queued before the stamps keep their expiry.
 *
 * When the wall clock is first seen synced in a boot, the boot's wall origin is kept, and the wall
 * time of a message queued earlier in that boot is read as `wallOrigin + mono`: wall_now − (mono_now − mono).
 */
export class QueueClock {
  private boot = 0;
  private base: number;
  private syncedAt: number | undefined;
  private origins = new Map<number, Origin>();
  private q: BootStatements | undefined;

  /** Before `open` the clock reads the wall clock's value of now, in boot 0 (nothing is persisted). */
  constructor(private readonly o: QueueClockOptions) {
    this.base = o.clock.now() - o.clock.uptime();
  }

  /** At the outbox's open, in a transaction: finds this boot's row, or starts it from the last boot's. */
  open(q: BootStatements): void {
    this.q = q;
    const { clock } = this.o;
    const id = clock.bootId();
    const up = clock.uptime();
    const wall = clock.now();
    const synced = this.o.synced();
    const same = q.bootById.get(id) as BootRow | undefined;
    if (same) {
      this.boot = same.boot;
      this.base = same.base;
      this.syncedAt = same.synced_at ?? undefined;
    } else {
      const last = q.bootLast.get() as BootRow | undefined;
      let at = wall;
      if (last) {
        const down = last.seen_synced === 1 && synced ? wall - last.seen_wall : 0;
        at = last.seen_at + Math.max(up, down);
        this.o.logger.info(
          { bootId: id, carriedMs: Math.round(at - last.seen_at), downtimeCounted: down > up },
          down > up
            ? 'outbox: a new boot; message ages carry on from the last boot with the downtime (the wall clock was synced then and now)'
            : 'outbox: a new boot; message ages carry on from the last boot, without the downtime (the wall clock was not synced then and now)',
        );
      }
      this.base = Math.round(at - up);
      this.boot = Number(q.bootInsert.run(id, this.base, Math.round(at), Math.round(wall), synced ? 1 : 0).lastInsertRowid);
      this.syncedAt = undefined;
      q.bootsPrune.run(this.boot - KEEP_BOOTS);
    }
    this.origins = new Map((q.bootOrigins.all() as BootRow[]).map((r) => [r.boot, { syncedAt: r.synced_at ?? 0, wallOrigin: r.wall_origin ?? 0 }]));
  }

  /** The queue clock now (ms). */
  now(): number {
    return this.base + this.o.clock.uptime();
  }

  /** What a message queued now is stamped with. */
  stamp(): Stamp {
    return { boot: this.boot, mono: Math.round(this.now()) };
  }

  /** The wall clock was synced in this boot and that is not yet noted: the next `write` notes it. */
  get syncPending(): boolean {
    return this.syncedAt === undefined && this.o.synced();
  }

  /**
   * In the caller's transaction (at the end of every outbox write): where this boot was last seen,
   * and the boot's wall origin once the wall clock is first seen synced.
   */
  write(): void {
    const q = this.q;
    if (!q) return;
    const now = this.now();
    const wall = this.o.clock.now();
    const synced = this.o.synced();
    if (synced && this.syncedAt === undefined) {
      const origin = { syncedAt: Math.round(now), wallOrigin: Math.round(wall - now) };
      q.bootSynced.run(origin.syncedAt, origin.wallOrigin, this.boot);
      this.syncedAt = origin.syncedAt;
      this.origins.set(this.boot, origin);
    }
    q.bootSeen.run(Math.round(now), Math.round(wall), synced ? 1 : 0, this.boot);
  }

  /** Wall clock minus queue clock now: turns a queue-clock time (an expiry) into the wall time it falls at, as the wall clock reads now. */
  wallOffset(): number {
    return this.o.clock.now() - this.now();
  }

  /** The wall time a message was queued at: corrected when its boot's clock got synced after it, else as stamped. */
  wallOf(createdAt: number, boot: number | null, mono: number | null): number {
    if (boot === null || mono === null) return createdAt;
    const o = this.origins.get(boot);
    return o !== undefined && mono < o.syncedAt ? o.wallOrigin + mono : createdAt;
  }

  /** Saves what a transaction may change; the returned function puts it back (a rollback). */
  checkpoint(): () => void {
    const syncedAt = this.syncedAt;
    const origins = new Map(this.origins);
    return () => {
      this.syncedAt = syncedAt;
      this.origins = new Map(origins);
    };
  }
}
