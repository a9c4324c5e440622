import { addToDigest, digestHex } from '../src/outbox/ledger.js';

/**
 * The cloud's side of the agent's loss ledger (docs/protocol.md, "Loss ledger"): each health report
 * carries, per outbox channel, what the agent took, delivered, still holds or dropped, and a digest of
 * the ids it counts as delivered. Here those are checked against the ids this devcloud stored.
 *
 * Every id the agent counts as delivered was acknowledged by this devcloud, and it acknowledges only
 * what it stored, so what it holds is a superset of the agent's delivered ids. Hence, per channel:
 * - `match`: the cloud holds exactly the agent's delivered ids (same count, same digest);
 * - `ahead`: the cloud holds more (messages in flight when the report was made, or stored before an
 *   acknowledgement that never reached the agent): not a loss, checked again at the next report;
 * - `mismatch`: the agent counts as delivered ids the cloud does not hold (fewer stored, or as many
 *   but other ids), or the agent's own ledger does not balance (`unaccounted` is not 0);
 * - `unchecked`: the channel went over MQTT (the report's `mqttChannels`), which this devcloud does not
 *   see; only the agent's own balance is checked for it.
 */

export type LedgerVerdict = 'match' | 'ahead' | 'mismatch' | 'unchecked';

export interface ChannelCheck {
  verdict: LedgerVerdict;
  /** What the agent's report says. */
  agent: { accepted: number; delivered: number; queued: number; unaccounted: number; digest: string };
  /** What this devcloud holds for the channel. */
  cloud: { stored: number; digest: string };
  /** Why, for anything but a match. */
  reason?: string;
}

export interface LedgerCheck {
  /** No health report with a ledger yet: nothing to check. */
  reported: boolean;
  /** When the report checked was received (epoch ms). */
  reportedAt: number | null;
  /** Any channel's verdict is `mismatch`. */
  mismatch: boolean;
  channels: Record<string, ChannelCheck>;
}

interface ReportedChannel {
  accepted: number;
  delivered: number;
  queued: number;
  unaccounted: number;
  digest: string;
}

/** The channels of a health report's `ledger` member (and those sent over MQTT), or undefined when it has none of that shape. */
export function reportedLedger(health: unknown): { channels: Record<string, ReportedChannel>; mqtt: Set<string> } | undefined {
  const ledger = (health as { ledger?: { channels?: unknown; mqttChannels?: unknown } } | null)?.ledger;
  const channels = ledger?.channels;
  if (channels === null || typeof channels !== 'object') return undefined;
  const mqtt = new Set(Array.isArray(ledger?.mqttChannels) ? ledger.mqttChannels.filter((c): c is string => typeof c === 'string') : []);
  const out: Record<string, ReportedChannel> = {};
  for (const [name, c] of Object.entries(channels as Record<string, Record<string, unknown>>)) {
    const num = (k: string): number => (typeof c?.[k] === 'number' ? (c[k] as number) : NaN);
    out[name] = { accepted: num('accepted'), delivered: num('delivered'), queued: num('queued'), unaccounted: num('unaccounted'), digest: String(c?.digest) };
  }
  return { channels: out, mqtt };
}

/**
 * Checks one report's ledger against the ids stored per channel (`idsOf`: DevCloudStore.idsOf, which
 * takes `state`, `jobs`, `health` and `logs` from their own tables and every other channel from messages).
 */
export function checkLedger(health: unknown, reportedAt: number | null, idsOf: (channel: string) => Iterable<string>): LedgerCheck {
  const reported = reportedLedger(health);
  if (!reported) return { reported: false, reportedAt, mismatch: false, channels: {} };
  const channels: Record<string, ChannelCheck> = {};
  let mismatch = false;
  for (const [name, agent] of Object.entries(reported.channels)) {
    // Sent over MQTT: this cloud holds none of its ids, so only the agent's own balance is checked.
    const unchecked = reported.mqtt.has(name) && agent.unaccounted === 0;
    const cloud = unchecked ? { stored: 0, digest: digestHex(0) } : storedDigest(idsOf(name));
    const check = unchecked ? { verdict: 'unchecked' as const, reason: 'sent over MQTT: this cloud sees only the device API' } : verdictOf(agent, cloud);
    if (check.verdict === 'mismatch') mismatch = true;
    channels[name] = { ...check, agent, cloud };
  }
  return { reported: true, reportedAt, mismatch, channels };
}

function storedDigest(ids: Iterable<string>): { stored: number; digest: string } {
  let stored = 0;
  let digest = 0;
  for (const id of ids) {
    digest = addToDigest(digest, id);
    stored++;
  }
  return { stored, digest: digestHex(digest) };
}

function verdictOf(agent: ReportedChannel, cloud: { stored: number; digest: string }): { verdict: LedgerVerdict; reason?: string } {
  if (agent.unaccounted !== 0) {
    return { verdict: 'mismatch', reason: `the agent's ledger does not balance: ${agent.unaccounted} message(s) taken are not accounted for` };
  }
  if (cloud.stored < agent.delivered) {
    return { verdict: 'mismatch', reason: `the agent counts ${agent.delivered} delivered, the cloud holds ${cloud.stored}` };
  }
  if (cloud.stored === agent.delivered) {
    return cloud.digest === agent.digest
      ? { verdict: 'match' }
      : { verdict: 'mismatch', reason: `as many ids stored as delivered (${cloud.stored}) but not the same ids (digest ${cloud.digest}, the agent's ${agent.digest})` };
  }
  return { verdict: 'ahead', reason: `the cloud holds ${cloud.stored - agent.delivered} id(s) more than the agent counted delivered when it reported (in flight)` };
}
