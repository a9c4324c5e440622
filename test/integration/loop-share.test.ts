import { connectAsync, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../devcloud/ports.js';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Local ingest and delivery share the agent's event loop (outbox/loop-share.ts): while the outbox
 * delivers, each ingest turn is followed by a pause as long. What a user sees: a flood through the
 * local broker and the API loses and duplicates nothing, and ingest is paused while a drain runs
 * (`GET /v2/queue`'s `ingestShare`), not once nothing is being delivered.
 */

const dirs = tempDirs();
const agents: AgentProcess[] = [];
const clients: MqttClient[] = [];
let cloud: DevCloud;
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
});
afterEach(async () => {
  for (const c of clients.splice(0)) await c.endAsync(true).catch(() => undefined);
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  await cloud.admin.clearFaults();
});
afterAll(async () => {
  await cloud.close();
  dirs.cleanup();
});

let n = 0;
async function agentFor(): Promise<{ agent: AgentProcess; uuid: string; brokerPort: number }> {
  const dev = { uuid: `share-${process.pid}-${++n}`, apiKey: `share-key-${n}-0123456789` };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const brokerPort = await freePort();
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: {
      device: dev,
      cloud: { apiUrl: cloud.url, requestTimeoutMs: 20_000 },
      localBroker: { port: brokerPort },
      // info: the start line spawnAgent waits for; not debug, whose lines would cost the flood.
      logging: { level: 'info', format: 'json' },
      features: { metrics: false, jobs: false, shadow: false, localBroker: true },
      settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, flushBatchMessages: 100 } },
    },
    timeoutMs: 120_000,
  });
  agents.push(agent);
  return { agent, uuid: dev.uuid, brokerPort };
}

interface Share {
  pauses: number;
  pausedMs: number;
}

async function queue(agent: AgentProcess): Promise<{ share: Share; leased: number; depth: number }> {
  const q = (await agent.get('/v2/queue')).body as { ingestShare: Share; channels: Record<string, { leased: number; depth: number } | undefined> };
  return { share: q.ingestShare, leased: q.channels.telemetry?.leased ?? 0, depth: q.channels.telemetry?.depth ?? 0 };
}

/** QoS 1 publishes of `{ seq }` on local/telemetry/flood, `window` unacknowledged, until `stop`; the acknowledged seqs. */
async function mqttFlood(port: number, tag: string, window: number, stop: AbortSignal): Promise<string[]> {
  const c = await connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 10_000, clientId: `flood-${tag}` });
  clients.push(c);
  const acked: string[] = [];
  let i = 0;
  await new Promise<void>((resolve, reject) => {
    let out = 0;
    const one = (): void => {
      const seq = `${tag}-${i++}`;
      out++;
      c.publish('local/telemetry/flood', JSON.stringify({ seq, pad: 'x'.repeat(64) }), { qos: 1 }, (err) => {
        out--;
        if (err) return reject(err);
        acked.push(seq);
        if (!stop.aborted) one();
        else if (out === 0) resolve();
      });
    };
    for (let k = 0; k < window; k++) one();
  });
  return acked;
}

/** POSTs of `batch` items `{ seq }` to /v2/telemetry, one at a time, until `stop`; the seqs of 202 answers. */
async function httpFlood(agent: AgentProcess, tag: string, batch: number, stop: AbortSignal): Promise<string[]> {
  const acked: string[] = [];
  for (let i = 0; !stop.aborted; i++) {
    const seqs = Array.from({ length: batch }, (_, k) => `${tag}-${i}-${k}`);
    const r = await agent.send('POST', '/v2/telemetry', seqs.map((seq) => ({ stream: 'flood', payload: { seq } })));
    expect(r.status).toBe(202);
    acked.push(...seqs);
  }
  return acked;
}

/** How many times each telemetry seq is stored at the devcloud. */
function storedSeqs(uuid: string): Map<string, number> {
  const seen = new Map<string, number>();
  let after: number | undefined;
  for (;;) {
    const page = cloud.admin.messages(uuid, { limit: 1000, ...(after !== undefined ? { after } : {}) });
    for (const m of page.messages) {
      const seq = (m.payload as { payload?: { seq?: string } }).payload?.seq;
      if (m.channel === 'telemetry' && seq !== undefined) seen.set(seq, (seen.get(seq) ?? 0) + 1);
    }
    if (!page.more) return seen;
    after = page.nextAfter;
  }
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
const WINDOW_MS = 3_000;

describe('local ingest shares the event loop with delivery', () => {
  it('a flood through the local broker and POST /v2/telemetry while the outbox delivers: pauses, and every acknowledged message reaches the cloud once', async () => {
    const { agent, uuid, brokerPort } = await agentFor();
    await waitFor('online', async () => ((await agent.get('/v2/connection')).body as { status: string }).status === 'online', 30_000);
    const before = (await queue(agent)).share;
    const ac = new AbortController();
    const floods = [mqttFlood(brokerPort, 'm1', 50, ac.signal), mqttFlood(brokerPort, 'm2', 50, ac.signal), httpFlood(agent, 'h', 20, ac.signal)];
    // The drain runs as the flood comes in (the cloud is up): ingest is paused on the way.
    await waitFor('ingest paused while the outbox delivers', async () => (await queue(agent)).share.pauses > before.pauses + 10, 60_000, 200);
    await delay(1_000);
    ac.abort();
    const acked = (await Promise.all(floods)).flat();
    expect(acked.length).toBeGreaterThan(100);
    await waitFor('every acknowledged message at the devcloud', () => {
      const stored = storedSeqs(uuid);
      return acked.every((seq) => stored.has(seq));
    }, 120_000, 500);
    const stored = storedSeqs(uuid);
    const twice = [...stored].filter(([, count]) => count > 1).map(([seq]) => seq);
    expect(twice).toEqual([]);
    await waitFor('an empty queue', async () => (await queue(agent)).depth === 0, 60_000, 200);
  });

  it('ingest pauses while a drain holds its leases, and no longer once nothing is being delivered', async () => {
    const { agent, brokerPort } = await agentFor();
    await waitFor('online', async () => ((await agent.get('/v2/connection')).body as { status: string }).status === 'online', 30_000);
    // Every device request is answered after 3 s: a batch sent stays leased that long, a drain "under way".
    await cloud.admin.setFaults({ latencyMs: 3_000 });
    /** The flood's intake over `ms` and the time ingest was paused in it. */
    const measure = async (tag: string, ms: number): Promise<{ rate: number; pausedMs: number }> => {
      const ac = new AbortController();
      const flood = mqttFlood(brokerPort, tag, 100, ac.signal);
      await delay(500);
      const s0 = (await queue(agent)).share;
      const t0 = performance.now();
      await delay(ms);
      ac.abort();
      const acked = (await flood).length;
      const s1 = (await queue(agent)).share;
      return { rate: (acked / (performance.now() - t0 + 500)) * 1000, pausedMs: s1.pausedMs - s0.pausedMs };
    };
    await mqttFlood(brokerPort, 'seed', 10, AbortSignal.abort());
    await waitFor('a batch leased (a delivery under way)', async () => (await queue(agent)).leased > 0, 30_000, 100);
    const draining = await measure('drain', WINDOW_MS);
    // Nothing delivered any more: the cloud refuses connections, the flusher backs off with no lease held.
    await cloud.admin.setFaults({ latencyMs: null, refuse: true });
    await waitFor('no lease held', async () => (await queue(agent)).leased === 0, 60_000, 100);
    const idle = await measure('idle', WINDOW_MS);
    // Paused for a good part of the window while a delivery runs (about half of it on an idle machine),
    // hardly at all once none is. The intake rates are not compared: on a machine whose CPUs are
    // oversubscribed the scheduler hands a process that slept its share back afterwards, and the
    // rates then move with the load, not with the pauses (bench:fairness measures what they do).
    expect(draining.pausedMs).toBeGreaterThan(0.25 * WINDOW_MS);
    expect(idle.pausedMs).toBeLessThan(0.05 * WINDOW_MS);
    expect(idle.rate).toBeGreaterThan(0);
  });
});
