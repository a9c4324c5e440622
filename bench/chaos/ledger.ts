import type { DropCounts, StartRecord } from './agent.js';
import { readLog } from './append-log.js';
import type { Delivery } from './cloud-store.js';
import type { FaultRecord } from './faults.js';
import type { Ingress } from './producers.js';

/**
 * The end-of-run accounting. Per producer (agent x ingress): accepted (acknowledged), delivered
 * (stored by the cloud), undelivered. Per agent: dropped by reason (the agent's own counters), still
 * queued or parked, and lost = undelivered that no counter explains (must be 0). Duplicates stored:
 * a message id stored under two device uuids (the cloud dedups per device), or a producer's
 * single request stored under two message ids; either defeats the cloud's dedup (must be 0).
 */

export interface ProducerInput {
  agent: string;
  ingress: Ingress;
  ledgerPath: string;
  refused: Record<string, number>;
}

export interface AgentInput {
  agent: string;
  drops: DropCounts;
  queued: number;
  parked: number;
  uuids: string[];
  starts: StartRecord[];
  /** The agent could not be asked for its queue at the end (not running): queued and parked read 0. */
  queueUnknown?: boolean;
}

export interface ChannelLedger {
  agent: string;
  ingress: Ingress;
  accepted: number;
  delivered: number;
  undelivered: number;
  refused: Record<string, number>;
}

export interface AgentLedger {
  agent: string;
  accepted: number;
  delivered: number;
  dropped: DropCounts & { total: number };
  queued: number;
  parked: number;
  lost: number;
  duplicatesStored: number;
  /** Local-broker messages stored under two ids because the producer re-sent after a lost PUBACK. */
  producerResends: number;
  uuids: string[];
  starts: number;
  brickedStarts: number;
  queueUnknown: boolean;
}

export interface FaultOutcome extends FaultRecord {
  /** From the end of the fault to the first telemetry of an affected agent stored by the cloud. */
  deliveringMs: Record<string, number | null>;
}

export interface Ledger {
  channels: ChannelLedger[];
  agents: AgentLedger[];
  faults: FaultOutcome[];
  duplicatesSuppressed: number;
  /** Stored telemetry no producer saw acknowledged (a request the agent took as the answer was cut). */
  unacknowledgedStored: number;
}

export function computeLedger(producers: ProducerInput[], agents: AgentInput[], stored: Delivery[], suppressed: number, faults: FaultRecord[]): Ledger {
  const byPid = new Map<string, Delivery[]>();
  for (const d of stored) {
    const list = byPid.get(d.pid);
    if (list) list.push(d);
    else byPid.set(d.pid, [d]);
  }
  const acceptedPids = new Set<string>();
  const channels: ChannelLedger[] = [];
  const agentLedgers = new Map<string, AgentLedger>();
  for (const a of agents) {
    const dropped = { ...a.drops, total: a.drops.count + a.drops.bytes + a.drops.disk + a.drops.ttl + a.drops.parkedLimit + a.drops.corrupt };
    const bricked = a.starts.filter((s) => !s.ok).length;
    agentLedgers.set(a.agent, {
      agent: a.agent, accepted: 0, delivered: 0, dropped, queued: a.queued, parked: a.parked, lost: 0,
      duplicatesStored: 0, producerResends: 0, uuids: a.uuids, starts: a.starts.length, brickedStarts: bricked, queueUnknown: a.queueUnknown ?? false,
    });
  }
  for (const p of producers) {
    const ch: ChannelLedger = { agent: p.agent, ingress: p.ingress, accepted: 0, delivered: 0, undelivered: 0, refused: p.refused };
    const al = agentLedgers.get(p.agent);
    for (const [tag, pid] of readLog(p.ledgerPath)) {
      if (tag !== 'A' || pid === undefined || acceptedPids.has(pid)) continue;
      acceptedPids.add(pid);
      ch.accepted++;
      const copies = byPid.get(pid) ?? [];
      if (copies.length > 0) ch.delivered++;
      const ids = new Set(copies.map((c) => c.id)).size;
      if (al) {
        al.duplicatesStored += copies.length - ids;
        if (p.ingress === 'api') al.duplicatesStored += Math.max(0, ids - 1);
        else al.producerResends += Math.max(0, ids - 1);
      }
    }
    ch.undelivered = ch.accepted - ch.delivered;
    channels.push(ch);
    if (al) {
      al.accepted += ch.accepted;
      al.delivered += ch.delivered;
    }
  }
  for (const al of agentLedgers.values()) {
    al.lost = Math.max(0, al.accepted - al.delivered - al.dropped.total - al.queued - al.parked);
  }
  let unacknowledgedStored = 0;
  for (const pid of byPid.keys()) if (!acceptedPids.has(pid)) unacknowledgedStored++;

  const firstAfter = deliveryIndex(stored);
  const outcomes = faults.map((f): FaultOutcome => {
    const deliveringMs: Record<string, number | null> = {};
    for (const agent of f.affects) {
      const at = firstAfter(agent, f.endAt);
      deliveringMs[agent] = at === undefined ? null : at - f.endAt;
    }
    return { ...f, deliveringMs };
  });
  return { channels, agents: [...agentLedgers.values()], faults: outcomes, duplicatesSuppressed: suppressed, unacknowledgedStored };
}

/** For an agent, the time of its first stored telemetry at or after a given time. */
function deliveryIndex(stored: Delivery[]): (agent: string, from: number) => number | undefined {
  const times = new Map<string, number[]>();
  for (const d of stored) {
    const agent = d.pid.slice(0, d.pid.indexOf('.'));
    const list = times.get(agent);
    if (list) list.push(d.at);
    else times.set(agent, [d.at]);
  }
  for (const list of times.values()) list.sort((a, b) => a - b);
  return (agent, from) => {
    const list = times.get(agent) ?? [];
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((list[mid] as number) < from) lo = mid + 1;
      else hi = mid;
    }
    return list[lo];
  };
}
