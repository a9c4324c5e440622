import type { Logger } from '../util/logger.js';
import type { DropReason } from './limits.js';
import type { ChannelStats, OutboxStats } from './types.js';

/**
 * The loss ledger (docs/outbox.md, "Loss ledger"): per channel, every message the outbox took is
 * accounted for, exactly and across restarts:
 *
 *   accepted = delivered + queued + parked + dropped (by reason) + expired + superseded
 *
 * `superseded` is what was replaced on purpose: coalesced by a newer message with the same key, or
 * merged into an aggregate by downsampling. Every term is a counter written in the transaction of
 * the change it counts (counters.ts), or the rows themselves (queued, parked), so the two sides
 * agree after any crash. `unaccounted` is the difference: anything but 0 means messages left the
 * database by a way the outbox did not count (a row deleted behind its back, pages lost with a
 * corrupt file whose loss could not be told by channel).
 *
 * The `digest` lets the cloud check `delivered` against what it stored: the sum, modulo 2^52, of a
 * 52-bit hash of every delivered id (`idHash`). A sum does not depend on order, so the cloud computes
 * the same over the ids it holds for the channel, in any order (docs/protocol.md, "Loss ledger").
 */

/**
 * The counters the ledger's right side sums, besides the rows queued and parked: delivered, every drop
 * reason (`overflow` is the count drops of older databases), expired, and what was superseded. Not
 * `parked` (messages ever parked: those still parked are rows, the rest moved on and are counted there).
 */
export const ACCOUNTED_COUNTERS = ['delivered', 'overflow', 'count', 'bytes', 'disk', 'expired', 'parkedLimit', 'purged', 'corrupt', 'coalesced', 'downsampled', 'offline'] as const;

/** The digest's modulus: sums of two values below it stay exact in a double. */
export const DIGEST_MODULUS = 2 ** 52;

const FNV_PRIME = 0x01000193;
/** Two FNV-1a passes with different offset bases, each finished with an avalanche: 20 + 32 bits. */
const BASIS_HIGH = 0x811c9dc5;
const BASIS_LOW = 0x050c5d1f;

/** Both FNV-1a passes in one walk over the id: [high basis, low basis]. */
function fnv1aPair(id: string): [number, number] {
  let a = BASIS_HIGH;
  let b = BASIS_LOW;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    // Ids are ASCII in practice; anything else is hashed as its UTF-8 bytes, so every implementation agrees.
    if (c >= 0x80) return fnv1aBytes(Buffer.from(id, 'utf8'));
    a = Math.imul(a ^ c, FNV_PRIME);
    b = Math.imul(b ^ c, FNV_PRIME);
  }
  return [avalanche(a), avalanche(b)];
}

function fnv1aBytes(bytes: Uint8Array): [number, number] {
  let a = BASIS_HIGH;
  let b = BASIS_LOW;
  for (const c of bytes) {
    a = Math.imul(a ^ c, FNV_PRIME);
    b = Math.imul(b ^ c, FNV_PRIME);
  }
  return [avalanche(a), avalanche(b)];
}

/** Spreads FNV's weak low bits over the word (xor-shift and multiply). */
function avalanche(x: number): number {
  let h = x;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The 52-bit hash of one message id that the digest sums: (high pass mod 2^20) x 2^32 + low pass. */
export function idHash(id: string): number {
  const [high, low] = fnv1aPair(id);
  return (high % 0x100000) * 0x100000000 + low;
}

/** `digest` with `id` added. */
export function addToDigest(digest: number, id: string): number {
  return (digest + idHash(id)) % DIGEST_MODULUS;
}

/** The digest of a set of ids (what the cloud computes over what it stored). */
export function digestOf(ids: Iterable<string>): number {
  let d = 0;
  for (const id of ids) d = addToDigest(d, id);
  return d;
}

/** As the ledger shows a digest: 13 hex digits. */
export function digestHex(digest: number): string {
  return digest.toString(16).padStart(13, '0');
}

export interface ChannelLedger {
  accepted: number;
  delivered: number;
  /** In the queue now, in flight included. */
  queued: number;
  /** In the parked table now. */
  parked: number;
  /** By reason (ttl apart: that is `expired`). */
  dropped: Record<Exclude<DropReason, 'ttl'>, number>;
  expired: number;
  /** Replaced on purpose: coalesced by a newer message with the same key, merged by downsampling. */
  superseded: number;
  /** accepted minus every other term: 0 when every message is accounted for. */
  unaccounted: number;
  /** Of the delivered ids (13 hex digits), for the cloud to check `delivered` against what it stored. */
  digest: string;
}

export interface OutboxLedger {
  /** Every channel's `unaccounted` is 0. */
  balanced: boolean;
  channels: Record<string, ChannelLedger>;
}

/** A channel's ledger from its stats and digest. */
export function channelLedger(s: ChannelStats, digest: number): ChannelLedger {
  const { ttl: _ttl, ...dropped } = s.drops;
  const droppedTotal = Object.values(dropped).reduce((a, b) => a + b, 0);
  const superseded = s.coalesced + s.downsampled;
  return {
    accepted: s.accepted,
    delivered: s.delivered,
    queued: s.depth,
    parked: s.parked,
    dropped,
    expired: s.expired,
    superseded,
    unaccounted: s.accepted - (s.delivered + s.depth + s.parked + droppedTotal + s.expired + superseded),
    digest: digestHex(digest),
  };
}

/** Every channel's ledger from the outbox's stats and each channel's digest. */
export function outboxLedger(stats: Pick<OutboxStats, 'channels'>, digestOfChannel: (channel: string) => number): OutboxLedger {
  const channels: OutboxLedger['channels'] = {};
  let balanced = true;
  for (const [name, s] of Object.entries(stats.channels)) {
    const l = (channels[name] = channelLedger(s, digestOfChannel(name)));
    if (l.unaccounted !== 0) balanced = false;
  }
  return { balanced, channels };
}

/** Says in the log, once per change, that a channel's ledger does not balance. */
export class LedgerLog {
  /** Per channel, the `unaccounted` last seen. */
  private readonly seen = new Map<string, number>();

  constructor(private readonly logger: Logger) {}

  note(ledger: OutboxLedger): void {
    for (const [name, l] of Object.entries(ledger.channels)) {
      if ((this.seen.get(name) ?? 0) === l.unaccounted) continue;
      this.seen.set(name, l.unaccounted);
      if (l.unaccounted === 0) continue;
      this.logger.error(
        { channel: name, ledger: l },
        `outbox: the loss ledger of ${name} does not balance: ${l.unaccounted} message(s) taken are neither delivered, queued, parked, dropped nor expired (removed from the database behind the agent's back?)`,
      );
    }
  }
}
