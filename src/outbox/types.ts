import type { QueueStats } from '../resilience/connection-monitor.js';
import type { Json } from '../util/json-diff.js';
import type { FreshEpisode } from './episode.js';
import type { DropReason, OnLimit } from './limits.js';

export type { DropReason, LimitAction, LimitKind, OnLimit } from './limits.js';
export { isOutboxError, OutboxError, type OutboxErrorCode } from './errors.js';

/** What a producer hands to `Outbox.enqueue`. */
export interface EnqueueMessage {
  /** Where it goes: `telemetry`, `metrics`, `events`, `state`, `jobs`, `health`, ... (letters, digits, `._-`). */
  channel: string;
  payload: Json;
  /** `JSON.stringify(payload)`, when the producer has it already (a log chunk, also kept in the local tail): stored as given. */
  payloadJson?: string;
  /** Higher is more important. Default: the channel's configured priority, else `DEFAULT_CHANNEL_PRIORITIES`. */
  priority?: number;
  /** Not worth delivering after this long (counted as `expired` when it lapses). Default: the channel's `ttlMs`. */
  ttlMs?: number;
  /** The message id; a UUIDv7 is made when absent. Enqueuing an id that is already queued is a no-op. */
  id?: string;
  /** Replaces any undelivered, not in-flight message of the same channel with the same key. */
  coalesceKey?: string;
  /**
   * The stream it belongs to (a telemetry stream; 1-256 characters): in a channel that drains
   * freshness first, the newest message of each stream goes before the stream's history. Absent:
   * the channel's single stream.
   */
  stream?: string;
}

export interface EnqueueResult {
  id: string;
  /** True when a message with this (given) id was already queued: nothing was written. */
  duplicate?: boolean;
}

/** A queued message as the flusher sees it. */
export interface OutboxMessage {
  id: string;
  channel: string;
  priority: number;
  /** Wall-clock epoch ms of the enqueue (corrected when the clock got synced after it: docs/outbox.md "Time"); the `ts` of PROTOCOL.md. */
  createdAt: number;
  /** When its TTL lapses, as the wall clock reads now (TTLs run on the queue clock: a wall-clock step moves this, never the expiry itself). */
  expiresAt: number | null;
  coalesceKey: string | null;
  payload: Json;
  /** Bytes the payload takes on disk (after compression). */
  storedBytes: number;
  compressed: boolean;
  /**
   * Sent during a freshness-first drain after a newer message of its stream (it was queued before
   * the return and is not its stream's newest): sinks put `backfill: true` on the wire. Absent otherwise.
   */
  backfill?: boolean;
}

export interface ParkedMessage extends Omit<OutboxMessage, 'coalesceKey'> {
  parkedAt: number;
  reason: string;
  /** Set when the stored payload cannot be decoded (it was parked for that): `payload` is then null. */
  payloadError?: string;
}

export interface PeekOptions {
  /** Only these channels; all when absent. */
  channels?: readonly string[];
  /** Not these channels (another sink carries them). */
  excludeChannels?: readonly string[];
  maxCount: number;
  /** Sum of `storedBytes`; the first message is taken even when it alone is larger. */
  maxBytes?: number;
  /** Skipped as if leased (ids the caller already holds). */
  excludeIds?: Iterable<string>;
  /** Lease what is returned (default true): not peeked again until nack, ack, park or the lease runs out. */
  lease?: boolean;
  /** A freshness-first drain under way (`Outbox.beginEpisode`): its order, and `backfill` marks. */
  episode?: FreshEpisode;
}

/** Per channel policy; every field optional (defaults: DEFAULT_CHANNEL_PRIORITIES, the total limits, no TTL). */
export interface ChannelPolicy {
  priority?: number;
  maxCount?: number;
  maxBytes?: number;
  ttlMs?: number;
  /** What gives at each limit (limits.ts); unset kinds: the outbox's `onLimit`, else DEFAULT_ON_LIMIT. */
  onLimit?: Partial<OnLimit>;
  /** After an outage, send each stream's newest message first, then the history oldest first (default: telemetry and metrics). */
  freshFirst?: boolean;
}

export interface ChannelStats {
  depth: number;
  /** Stored payload bytes. */
  bytes: number;
  /** Age of the oldest queued message (0 when empty). */
  oldestAgeMs: number;
  /** Messages peeked and not yet acked or nacked (in flight). */
  leased: number;
  /** Acked by a sink, since the database was created. */
  delivered: number;
  /** Dropped by a limit or lost with a corrupt database: `drops.count + bytes + disk + parkedLimit + purged + corrupt + offline` (expiry, `drops.ttl`, is counted apart, as in QueueStats). */
  dropped: number;
  drops: Record<DropReason, number>;
  /** The policy in force at each limit. */
  onLimit: OnLimit;
  expired: number;
  /** Messages in the parked table now. */
  parked: number;
  /** Messages ever parked. */
  parkedTotal: number;
  /** Undelivered messages replaced by a newer one with the same coalesce key. */
  coalesced: number;
  /** Messages merged into others by metrics downsampling. */
  downsampled: number;
  /** Messages the outbox took: queued, or counted as an `offline` drop on arrival (the loss ledger's left side: ledger.ts). */
  accepted: number;
}

export interface OutboxStats extends QueueStats, Omit<ChannelStats, keyof QueueStats> {
  channels: Record<string, ChannelStats>;
  /** Transactions that committed enqueues (group commit: far fewer than `accepted`). */
  commits: number;
  /** Enqueues waiting for the next group commit. */
  pending: number;
  /** `power-loss`: synchronous=FULL (a resolved enqueue survives a power cut); `process-crash`: NORMAL. */
  durability: 'power-loss' | 'process-crash' | 'none';
  disk: { freeBytes: number | null; minFreeBytes: number; low: boolean };
}

export interface CommitInfo {
  /** Enqueue calls (an enqueueMany is one) in the transaction. */
  calls: number;
  messages: number;
  ms: number;
}
