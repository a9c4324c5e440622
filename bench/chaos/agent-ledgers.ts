import type { LedgerCheck } from '../../devcloud/ledger-check.js';
import type { AdminClient } from '../../devcloud/spawn.js';
import type { OutboxLedger } from '../../src/outbox/ledger.js';
import type { AgentUnderTest } from './agent.js';

/**
 * The agents' own loss ledgers at the end of a run (docs/outbox.md, "Loss ledger"): each agent's
 * `/v2/queue` ledger must balance on every channel, and the devcloud's check of the agent's latest
 * health report (made after the drain) must find no channel whose delivered ids it lacks.
 */

export interface AgentLedgerCheck {
  agent: string;
  uuid: string | null;
  /** The agent's ledger; null when it could not be read. */
  local: OutboxLedger | null;
  /** The devcloud's check of a health report received after the drain; null when none came in time. */
  cloud: LedgerCheck | null;
  /** What fails the run. */
  findings: string[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads every agent's ledger, and waits (up to `waitMs`) for a health report made after `since` to check at the devcloud. */
export async function checkAgentLedgers(agents: readonly AgentUnderTest[], admin: AdminClient, since: number, waitMs: number): Promise<AgentLedgerCheck[]> {
  return Promise.all(agents.map((a) => checkOne(a, admin, since, waitMs)));
}

async function checkOne(a: AgentUnderTest, admin: AdminClient, since: number, waitMs: number): Promise<AgentLedgerCheck> {
  const uuid = a.uuids.at(-1) ?? null;
  const findings: string[] = [];
  let local: OutboxLedger | null = null;
  try {
    const r = await a.get('/v2/queue', 5_000);
    local = (r.body as { ledger?: OutboxLedger }).ledger ?? null;
  } catch {
    local = null;
  }
  if (!local) findings.push(`agent ${a.name}: its ledger could not be read`);
  else {
    for (const [channel, l] of Object.entries(local.channels)) {
      if (l.unaccounted !== 0) findings.push(`agent ${a.name}: the ledger of ${channel} does not balance (${l.unaccounted} unaccounted)`);
    }
  }
  let cloud: LedgerCheck | null = null;
  if (uuid !== null) {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const c = await admin.ledger(uuid).catch(() => null);
      if (c?.reported && (c.reportedAt ?? 0) > since) {
        cloud = c;
        break;
      }
      if (Date.now() > deadline) break;
      await sleep(500);
    }
  }
  if (!cloud) findings.push(`agent ${a.name}: no health report with its ledger reached the devcloud after the drain`);
  else {
    for (const [channel, c] of Object.entries(cloud.channels)) {
      if (c.verdict === 'mismatch') findings.push(`agent ${a.name}: the devcloud's ledger check of ${channel}: ${c.reason ?? 'mismatch'}`);
    }
  }
  return { agent: a.name, uuid, local, cloud, findings };
}
