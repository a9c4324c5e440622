import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import type { LedgerCheck } from '../../devcloud/ledger-check.js';
import type { OutboxLedger } from '../../src/outbox/ledger.js';
import { spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// Issue 14, the loss ledger, on the built agent: every health report carries it, the devcloud checks
// it against the ids it stored, and a message deleted from the database while the agent was stopped
// shows as a mismatch in the next report.
const env = agentsWithDevCloud();
const { dirs, agents } = env;

function configFor(dev: { uuid: string; apiKey: string }) {
  return {
    device: dev,
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 1_000 },
    features: { metrics: false },
    settings: {
      pollIntervalMs: 1_000,
      healthReportIntervalMs: 10_000,
      offline: { offlineAfterFailures: 2, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 },
    },
  };
}

async function start(dataDir: string, dev: { uuid: string; apiKey: string }): Promise<AgentProcess> {
  const agent = await spawnAgent({ dataDir, config: configFor(dev) });
  agents.push(agent);
  return agent;
}

async function post(agent: AgentProcess, items: { stream: string; payload: unknown }[]): Promise<void> {
  const res = await agent.send('POST', '/v2/telemetry', items);
  expect(res.status).toBe(202);
}

const ledgerOf = async (agent: AgentProcess): Promise<OutboxLedger> => ((await agent.get('/v2/queue')).body as { ledger: OutboxLedger }).ledger;

it('the ledger balances, every health report carries it, and the devcloud finds exactly the delivered ids', async () => {
  const dev = { uuid: `ledger-ok-${process.pid}`, apiKey: 'ledger-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await start(dirs.make(), dev);
  await post(agent, Array.from({ length: 40 }, (_, i) => ({ stream: `s${i % 4}`, payload: { i } })));
  await waitFor('all 40 delivered', async () => (await ledgerOf(agent)).channels.telemetry?.delivered === 40, 30_000);
  const local = await ledgerOf(agent);
  expect(local.balanced).toBe(true);
  expect(local.channels.telemetry).toMatchObject({ accepted: 40, delivered: 40, queued: 0, parked: 0, expired: 0, superseded: 0, unaccounted: 0 });

  // The next periodic report (every 10 s here) carries the ledger with the 40; the devcloud checks it.
  const check = await waitFor(
    'a report that counts the 40',
    () => {
      const c = env.cloud.admin.ledger(dev.uuid);
      return c.channels.telemetry?.agent.delivered === 40 ? c : undefined;
    },
    40_000,
  );
  expect(check.mismatch).toBe(false);
  expect(check.channels.telemetry).toMatchObject({ verdict: 'match', cloud: { stored: 40, digest: local.channels.telemetry?.digest } });
  // The health reports delivered before this one are stored under their ids and match too (or the cloud is ahead by the one in flight).
  expect(['match', 'ahead']).toContain(check.channels.health?.verdict);
  const metrics = await (await fetch(`${agent.apiUrl}/metrics`, { headers: { authorization: `Bearer ${agent.key}` } })).text();
  expect(metrics).toMatch(/^iotistic_queue_ledger_balanced 1$/m);
  expect(metrics).toMatch(/^iotistic_queue_accepted_total\{channel="telemetry"\} 40$/m);
}, 90_000);

it('a message deleted from the database while the agent was stopped is a mismatch in the next report, at the devcloud and locally', async () => {
  const dev = { uuid: `ledger-gone-${process.pid}`, apiKey: 'ledger-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  // The cloud is away: five readings wait in the outbox.
  await env.cloud.admin.setFaults({ refuse: true });
  const first = await start(dataDir, dev);
  await post(first, Array.from({ length: 5 }, (_, i) => ({ stream: 'temp', payload: { i } })));
  expect((await ledgerOf(first)).channels.telemetry).toMatchObject({ accepted: 5, queued: 5, unaccounted: 0 });
  await first.stop('SIGTERM');

  // Someone deletes one with sqlite3 while the agent is down.
  const db = new BetterSqlite3(join(dataDir, 'agent.db'));
  const gone = db.prepare("DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox WHERE channel = 'telemetry')").run();
  db.close();
  expect(gone.changes).toBe(1);

  const second = await start(dataDir, dev);
  await env.cloud.admin.clearFaults();
  const check = await waitFor('the devcloud sees the mismatch', () => {
    const c: LedgerCheck = env.cloud.admin.ledger(dev.uuid);
    return c.mismatch ? c : undefined;
  }, 40_000);
  expect(check.channels.telemetry).toMatchObject({ verdict: 'mismatch', agent: { accepted: 5, unaccounted: 1 } });
  expect(check.channels.telemetry?.reason).toContain('does not balance');
  await waitFor('the four left delivered', async () => (await ledgerOf(second)).channels.telemetry?.delivered === 4, 30_000);
  const local = await ledgerOf(second);
  expect(local.balanced).toBe(false);
  expect(local.channels.telemetry).toMatchObject({ accepted: 5, delivered: 4, queued: 0, unaccounted: 1 });
  expect(second.records().some((r) => String(r.msg).startsWith('outbox: the loss ledger of telemetry does not balance: 1 message(s)'))).toBe(true);
  const status = (await second.get('/v2/queue')).body as { ledger: OutboxLedger };
  expect(status.ledger.channels.telemetry?.unaccounted).toBe(1);
}, 120_000);
