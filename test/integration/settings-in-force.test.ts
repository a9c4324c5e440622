import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Issue 20: settings from the config file reach the part they configure on the built agent, each
 * observed by its effect (the queue's stats, a 507 naming the limit, the connection's status), not by
 * reading the config back. The uplink is a closed port: nothing is ever delivered.
 */

const dirs = tempDirs();
const agents: AgentProcess[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
});
afterAll(() => dirs.cleanup());

interface Queue {
  durability: string;
  channels: Record<string, { depth: number }>;
}
interface Connection {
  status: string;
  channels: Record<string, { status: string; consecutiveFailures: number }>;
}

let n = 0;
async function start(config: { store?: Record<string, unknown>; offline?: Record<string, unknown> }): Promise<AgentProcess> {
  requireBuilt();
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: {
      device: { uuid: `settings-${process.pid}-${++n}`, apiKey: `settings-key-${n}-0123456789` },
      // Port 9 on loopback: refused at once, every request fails fast.
      cloud: { apiUrl: 'http://127.0.0.1:9', requestTimeoutMs: 1_000 },
      features: { metrics: false },
      ...(config.store ? { store: config.store } : {}),
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 200, offline: { minBackoffSeconds: 0.1, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, ...config.offline } },
    },
  });
  agents.push(agent);
  return agent;
}

const queue = async (agent: AgentProcess): Promise<Queue> => (await agent.get('/v2/queue')).body as Queue;

describe('settings in force on the built agent', () => {
  it('store.synchronous reaches the database: the queue says how durable an accepted message is, before and after traffic', async () => {
    const [full, normal] = await Promise.all([start({}), start({ store: { synchronous: 'normal' } })]);
    for (const [agent, said] of [
      [full, 'power-loss'],
      [normal, 'process-crash'],
    ] as const) {
      expect((await queue(agent)).durability).toBe(said);
      for (let i = 0; i < 5; i++) expect((await agent.send('POST', '/v2/telemetry', { stream: 's', payload: { i } })).status).toBe(202);
      expect(await queue(agent)).toMatchObject({ durability: said, channels: { telemetry: { depth: 5 } } });
    }
  });

  it('settings.offline.maxQueueBytes: a producer over it gets 507 naming the setting, and what was queued stays', async () => {
    // Incompressible and stored as is: 128 KiB a message, 1 MiB total.
    const agent = await start({ offline: { maxQueueBytes: 1_048_576, onLimit: { bytes: 'refuse' }, compressAboveBytes: 1_000_000_000 } });
    let accepted = 0;
    for (;;) {
      const r = (await agent.send('POST', '/v2/telemetry', { stream: 's', payload: randomBytes(64 * 1024).toString('hex') })) as {
        status: number;
        body: { error?: string; limit?: string };
      };
      if (r.status !== 202) {
        expect(r).toMatchObject({ status: 507, body: { error: 'OUTBOX_FULL', limit: 'settings.offline.maxQueueBytes' } });
        break;
      }
      accepted++;
      // The default (256 MiB) would take thousands.
      expect(accepted).toBeLessThan(9);
    }
    expect(accepted).toBeGreaterThanOrEqual(6);
    expect((await queue(agent)).channels.telemetry?.depth).toBe(accepted);
  });

  it('settings.offline.enableQueue false: said at start; while the cloud is unreachable nothing new is queued: a producer gets 503 naming the setting, and it is counted (drops.offline)', async () => {
    const agent = await start({ offline: { enableQueue: false, offlineAfterFailures: 1 } });
    expect(agent.records().some((l) => String(l.msg).startsWith('settings.offline.enableQueue is false'))).toBe(true);
    await waitFor('offline', async () => ((await agent.get('/v2/connection')).body as Connection).status === 'offline');
    const r = (await agent.send('POST', '/v2/telemetry', { stream: 's', payload: 1 })) as { status: number; body: { error?: string; message?: string } };
    expect(r.status).toBe(503);
    expect(r.body.error).toBe('OUTBOX_OFFLINE');
    expect(r.body.message).toContain('settings.offline.enableQueue is false');
    const q = (await agent.get('/v2/queue')).body as { channels: Record<string, { depth: number; drops: Record<string, number> }> };
    expect(q.channels['telemetry']).toMatchObject({ depth: 0, drops: { offline: 1 } });
  });

  it('settings.offline.shareLoopWithDrain: the loop share the agent builds is off when set false, on by default', async () => {
    const [on, off] = await Promise.all([start({}), start({ offline: { shareLoopWithDrain: false } })]);
    const share = async (agent: AgentProcess) => ((await agent.get('/v2/queue')).body as { ingestShare: { enabled: boolean; pauses: number } }).ingestShare;
    expect(await share(on)).toMatchObject({ enabled: true, pauses: 0 });
    // Off, it never pauses local ingest (test/unit/loop-share.test.ts); on, it does while a drain runs (test/integration/loop-share.test.ts).
    expect(await share(off)).toMatchObject({ enabled: false, pauses: 0 });
  });

  it('settings.offline.offlineAfterFailures: a channel failing fewer times than it is degraded, not offline', async () => {
    const agent = await start({ offline: { offlineAfterFailures: 1000 } });
    const conn = await waitFor(
      'the api channel to fail 6 times in a row',
      async () => {
        const c = (await agent.get('/v2/connection')).body as Connection;
        return (c.channels.api?.consecutiveFailures ?? 0) >= 6 ? c : undefined;
      },
      45_000,
      200,
    );
    // The default (3) would have made it offline at the third failure.
    expect(conn.channels.api?.status).toBe('degraded');
    expect(conn.status).not.toBe('offline');
  });
});
