import { execFile } from 'node:child_process';
import { connectAsync, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Issue 21, fault 2: producers learn what happens to their data. The built agent, the uplink down,
 * a small maxQueueSize, producers on the local API and the local broker: with drop-oldest every
 * acknowledged message is later delivered or counted as dropped (and the log's summary lines add up
 * to the counters, across a kill -9); with refuse nothing is dropped and the refused got 507 / no PUBACK.
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
  for (const c of clients.splice(0)) await c.endAsync(true);
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  await cloud.admin.clearFaults();
});
afterAll(async () => {
  await cloud.close();
  dirs.cleanup();
});

interface Queue {
  dropped: number;
  channels: Record<string, { depth: number; delivered: number; dropped: number; drops: { count: number } & Record<string, number>; onLimit: Record<string, string> }>;
}
interface DropLine {
  msg: string;
  total: number;
  dropped: Record<string, Record<string, number>>;
}

let n = 0;
function device(): { uuid: string; apiKey: string } {
  const dev = { uuid: `limits-${process.pid}-${++n}`, apiKey: `limits-key-${n}-0123456789` };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  return dev;
}

async function start(dataDir: string, dev: { uuid: string; apiKey: string }, offline: Record<string, unknown> = {}): Promise<{ agent: AgentProcess; brokerUrl: string }> {
  const agent = await spawnAgent({
    dataDir,
    config: {
      device: dev,
      cloud: { apiUrl: cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false, localBroker: true },
      localBroker: { port: 0 },
      settings: {
        pollIntervalMs: 60_000,
        reportIntervalMs: 200,
        offline: { maxQueueSize: 100, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, flushBatchMessages: 50, ...offline },
      },
    },
  });
  agents.push(agent);
  const listening = await waitFor('the local broker', () => agent.records().find((r) => r.msg === 'local MQTT broker listening'));
  return { agent, brokerUrl: `mqtt://127.0.0.1:${String(listening.port)}` };
}

async function post(agent: AgentProcess, n: number): Promise<{ status: number; body: { ids?: string[]; error?: string; message?: string; limit?: string } }> {
  const r = await agent.send('POST', '/v2/telemetry', { stream: 'http', payload: { n } });
  return r as { status: number; body: { ids?: string[] } };
}

const queue = async (agent: AgentProcess): Promise<Queue> => (await agent.get('/v2/queue')).body as Queue;

/** Every telemetry message stored at the devcloud: ids, and the `n` of each producer's payloads. */
function stored(uuid: string): { ids: Set<string>; http: Set<number>; mqtt: Set<number> } {
  const out = { ids: new Set<string>(), http: new Set<number>(), mqtt: new Set<number>() };
  let after: number | undefined;
  for (;;) {
    const page = cloud.admin.messages(uuid, { limit: 1000, ...(after !== undefined ? { after } : {}) });
    for (const m of page.messages) {
      out.ids.add(m.id);
      const p = m.payload as { stream?: string; payload?: { n?: number } };
      if (m.channel === 'telemetry' && typeof p.payload?.n === 'number') (p.stream === 'http' ? out.http : out.mqtt).add(p.payload.n);
    }
    if (!page.more) break;
    after = page.nextAfter;
  }
  return out;
}

const dropLines = (agent: AgentProcess): DropLine[] =>
  agent.records().filter((r) => typeof r.msg === 'string' && r.msg.startsWith('outbox dropped')) as unknown as DropLine[];

/** Sums the summary lines per channel and reason. */
function sumLines(lines: DropLine[]): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const l of lines) {
    for (const [ch, d] of Object.entries(l.dropped)) for (const [r, k] of Object.entries(d)) (out[ch] ??= {})[r] = (out[ch]?.[r] ?? 0) + k;
  }
  return out;
}

function countersOf(q: Queue): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const [ch, c] of Object.entries(q.channels)) {
    const d = Object.fromEntries(Object.entries(c.drops).filter(([, k]) => k > 0));
    if (Object.keys(d).length > 0) out[ch] = d;
  }
  return out;
}

async function mqttClient(url: string, clientId: string, reconnectPeriod = 0): Promise<MqttClient & { closes: number }> {
  const c = (await connectAsync(url, { clientId, clean: false, reconnectPeriod, connectTimeout: 5_000 })) as MqttClient & { closes: number };
  c.closes = 0;
  c.on('close', () => c.closes++);
  clients.push(c);
  return c;
}

function mosquittoPub(url: string, payload: string): Promise<{ code: number; stderr: string }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) =>
    execFile('mosquitto_pub', ['-h', hostname, '-p', port, '-q', '1', '-t', 'local/telemetry/mqtt', '-m', payload], { timeout: 15_000 }, (err, _out, stderr) =>
      resolve({ code: typeof err?.code === 'number' ? err.code : err ? -1 : 0, stderr }),
    ),
  );
}

describe('outbox limits on the built agent (uplink down, maxQueueSize 100)', () => {
  it('drop-oldest: every 202 and PUBACK is delivered or counted as dropped by reason; the log adds up, across a kill -9', async () => {
    const dev = device();
    const dataDir = dirs.make();
    await cloud.admin.setFaults({ refuse: true });
    const { agent: first, brokerUrl } = await start(dataDir, dev);
    const httpIds: string[] = [];
    for (let i = 0; i < 150; i++) {
      const r = await post(first, i);
      expect(r.status).toBe(202);
      httpIds.push(...(r.body.ids ?? []));
    }
    const app = await mqttClient(brokerUrl, `limits-drop-${n}`);
    for (let i = 0; i < 150; i++) await app.publishAsync('local/telemetry/mqtt', JSON.stringify({ n: i }), { qos: 1 }); // each PUBACKed
    expect((await mosquittoPub(brokerUrl, JSON.stringify({ n: 150 }))).code).toBe(0);
    const mqttAcked = 151;
    const before = await queue(first);
    expect(before.channels.telemetry?.onLimit).toEqual({ count: 'drop-oldest', bytes: 'drop-oldest', disk: 'refuse' });
    expect(before.channels.telemetry!.drops.count).toBeGreaterThan(150);
    // Drops after the first summary line are not logged yet (one line a minute) when the agent dies.
    expect(dropLines(first).reduce((s, l) => s + l.total, 0)).toBeLessThan(before.dropped);
    await first.stop('SIGKILL');

    await cloud.admin.clearFaults();
    const { agent: second } = await start(dataDir, dev);
    await waitFor('the queue drained', async () => (await queue(second)).channels.telemetry?.depth === 0, 40_000, 250);
    const q = await queue(second);
    const got = stored(dev.uuid);
    const httpDelivered = httpIds.filter((id) => got.ids.has(id)).length;
    const mqttDelivered = got.mqtt.size;
    // Every acknowledged message is accounted for: delivered, or dropped with its reason.
    expect(httpDelivered + mqttDelivered + q.channels.telemetry!.drops.count).toBe(httpIds.length + mqttAcked);
    expect(got.http.size).toBe(httpDelivered);
    expect(q.channels.telemetry!.dropped).toBe(q.channels.telemetry!.drops.count);

    const metrics = String((await second.get('/metrics')).body);
    expect(metrics).toContain(`iotistic_queue_drops_total{channel="telemetry",reason="count"} ${q.channels.telemetry!.drops.count}`);
    await second.stop('SIGTERM');
    const lines = [...dropLines(first), ...dropLines(second)];
    expect(lines.some((l) => /before this start/.test(l.msg))).toBe(true);
    expect(sumLines(lines)).toEqual(countersOf(q));
    expect(lines.reduce((s, l) => s + l.total, 0)).toBe(q.dropped);
  }, 90_000);

  it('refuse: nothing is dropped; refused producers get 507 naming the limit, or no PUBACK and their client resends later', async () => {
    const dev = device();
    await cloud.admin.setFaults({ refuse: true });
    const { agent, brokerUrl } = await start(dirs.make(), dev, { onLimit: { count: 'refuse' } });
    const accepted: string[] = [];
    const refused: number[] = [];
    for (let i = 0; refused.length < 5; i++) {
      expect(i).toBeLessThan(200);
      const r = await post(agent, i);
      if (r.status === 202) accepted.push(...(r.body.ids ?? []));
      else {
        expect(r.status).toBe(507);
        expect(r.body).toMatchObject({ error: 'OUTBOX_FULL', limit: 'settings.offline.maxQueueSize' });
        expect(r.body.message).toMatch(/limit of 100 messages \(settings\.offline\.maxQueueSize\)/);
        refused.push(i);
      }
    }
    expect((await queue(agent)).channels.telemetry?.onLimit).toMatchObject({ count: 'refuse' });
    // The local broker: no PUBACK, the connection closed; mosquitto_pub fails ("connection lost").
    const app = await mqttClient(brokerUrl, `limits-refuse-${n}`, 500);
    let acked = false;
    const published = app.publishAsync('local/telemetry/mqtt', JSON.stringify({ n: 0 }), { qos: 1 }).then(() => (acked = true));
    await waitFor('the local broker closing the connection', () => app.closes > 0, 10_000, 50);
    expect(acked).toBe(false);
    const cli = await mosquittoPub(brokerUrl, JSON.stringify({ n: 1 }));
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(/connection was lost/i);

    // The way opens: the queue drains, and mqtt.js's resend (clean: false) is accepted and acknowledged.
    await cloud.admin.clearFaults();
    await published;
    await waitFor('the queue drained', async () => (await queue(agent)).channels.telemetry?.depth === 0, 40_000, 250);
    const q = await queue(agent);
    expect(q.dropped).toBe(0);
    expect(countersOf(q)).toEqual({});
    const got = stored(dev.uuid);
    expect(accepted.every((id) => got.ids.has(id))).toBe(true);
    for (const i of refused) expect(got.http.has(i)).toBe(false);
    expect([...got.mqtt]).toEqual([0]);
    expect(dropLines(agent)).toEqual([]);
  }, 90_000);
});
