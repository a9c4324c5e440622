import type { ChannelPolicies } from './channel-policies.js';
import { dropsOf, zeroCounters, type OutboxCounters } from './counters.js';
import type { Lanes } from './lanes.js';
import type { Leases } from './leases.js';
import { DROP_REASONS, zeroDrops } from './limits.js';
import type { ChannelStats, OutboxStats } from './types.js';

export interface StatsSources {
  lanes: Pick<Lanes, 'nonEmpty' | 'oldest' | 'channel' | 'channelNames'>;
  counters: Pick<OutboxCounters, 'of' | 'parkedOf' | 'channelNames'>;
  leases: Pick<Leases, 'countByChannel'>;
  policies: Pick<ChannelPolicies, 'names' | 'onLimitOf'>;
  /** The queue clock now (queue-clock.ts): ages no wall-clock step changes. */
  now: number;
  /** What is not per channel: commits, pending, durability, disk. */
  totals: Pick<OutboxStats, 'commits' | 'pending' | 'durability' | 'disk'>;
}

/** Depth, bytes, age and counters per channel and in total, from the ledger in memory (plus an index probe per lane whose first row changed). */
export function outboxStats(src: StatsSources): OutboxStats {
  const { lanes, counters, now } = src;
  const names = new Set<string>([...lanes.channelNames(), ...counters.channelNames(), ...src.policies.names()]);
  const leasedBy = src.leases.countByChannel();
  const oldestBy = new Map<string, number>();
  for (const lane of lanes.nonEmpty()) {
    const o = lanes.oldest(lane);
    if (o !== undefined) oldestBy.set(lane.channel, Math.min(oldestBy.get(lane.channel) ?? Infinity, o));
  }
  const channels: Record<string, ChannelStats> = {};
  const total = emptyChannelStats();
  let oldest = Infinity;
  for (const name of [...names].sort()) {
    const t = lanes.channel(name) ?? { count: 0, bytes: 0 };
    const c = counters.of(name) ?? zeroCounters();
    const o = oldestBy.get(name);
    if (o !== undefined) oldest = Math.min(oldest, o);
    const cs: ChannelStats = {
      depth: t.count,
      bytes: t.bytes,
      oldestAgeMs: o === undefined ? 0 : Math.max(0, now - o),
      leased: leasedBy.get(name) ?? 0,
      delivered: c.delivered,
      dropped: c.overflow + c.count + c.bytes + c.disk + c.parkedLimit + c.purged + c.corrupt + c.offline,
      drops: { ...dropsOf(c), count: c.count + c.overflow },
      onLimit: { ...src.policies.onLimitOf(name) },
      expired: c.expired,
      parked: counters.parkedOf(name),
      parkedTotal: c.parked,
      coalesced: c.coalesced,
      downsampled: c.downsampled,
      accepted: c.accepted,
    };
    channels[name] = cs;
    addInto(total, cs);
  }
  // Stryker disable next-line ConditionalExpression: equivalent: Math.max(0, now - Infinity) is 0 too
  total.oldestAgeMs = oldest === Infinity ? 0 : Math.max(0, now - oldest);
  return { ...total, channels, ...src.totals };
}

/** What a `PRAGMA synchronous` value means for a resolved enqueue. */
export function durabilityOf(synchronous: number): OutboxStats['durability'] {
  return synchronous >= 2 ? 'power-loss' : synchronous === 1 ? 'process-crash' : 'none';
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
