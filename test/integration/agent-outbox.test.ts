import { connectAsync } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { join } from 'node:path';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { observe, outgoingRows } from '../helpers/mqtt.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

const env = agentsWithDevCloud();
const { dirs, agents } = env;

let n = 0;
async function agentFor(extra: Record<string, unknown> = {}): Promise<{ agent: AgentProcess; uuid: string }> {
  const dev = { uuid: `outbox-${process.pid}-${++n}`, apiKey: `outbox-key-${n}-0123456789` };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 200, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, flushBatchMessages: 50 } },
      ...extra,
    },
  });
  agents.push(agent);
  return { agent, uuid: dev.uuid };
}

async function post(agent: AgentProcess, body: unknown): Promise<{ status: number; body: { ids?: string[]; message?: string; error?: string } }> {
  const res = await fetch(`${agent.apiUrl}/v2/telemetry`, {
    method: 'POST',
    headers: { authorization: `Bearer ${agent.key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as { ids?: string[] } };
}

function storedIds(uuid: string): Set<string> {
  const ids = new Set<string>();
  let after: number | undefined;
  for (;;) {
    const page = env.cloud.admin.messages(uuid, { limit: 1000, ...(after !== undefined ? { after } : {}) });
    for (const m of page.messages) ids.add(m.id);
    if (!page.more) break;
    after = page.nextAfter;
  }
  return ids;
}

describe('local telemetry through the outbox to the devcloud', () => {
  it('accepts telemetry while the cloud is away and delivers every id once it is back, none stored twice', async () => {
    const { agent, uuid } = await agentFor();
    await waitFor('online', async () => ((await agent.get('/v2/connection')).body as { status: string }).status === 'online');
    await env.cloud.admin.setFaults({ refuse: true });
    const accepted: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await post(agent, Array.from({ length: 10 }, (_, j) => ({ stream: 'temp', payload: { i, j, c: 20 + j / 10 } })));
      expect(r.status).toBe(202);
      accepted.push(...(r.body.ids ?? []));
    }
    expect(new Set(accepted).size).toBe(200);
    const q = (await agent.get('/v2/queue')).body as { depth: number; channels: Record<string, { depth: number; bytes: number; oldestAgeMs: number }> };
    expect(q.channels.telemetry?.depth).toBeGreaterThan(0);
    expect(q.channels.telemetry?.bytes).toBeGreaterThan(0);
    // ConnectionHealth carries the queue too.
    const h = (await agent.get('/v2/connection')).body as { queue: { depth: number } };
    expect(h.queue.depth).toBeGreaterThan(0);

    await env.cloud.admin.clearFaults();
    await waitFor('every accepted id at the devcloud', () => [...accepted].every((id) => storedIds(uuid).has(id)), 40_000, 250);
    const received = env.cloud.admin.received(uuid).messages;
    expect(received.unique).toBeGreaterThanOrEqual(200);
    await waitFor('an empty queue', async () => ((await agent.get('/v2/queue')).body as { channels: Record<string, { depth: number }> }).channels.telemetry?.depth === 0);
    const after = (await agent.get('/v2/queue')).body as { channels: Record<string, { delivered: number }> };
    expect(after.channels.telemetry?.delivered).toBe(200);
  });

  it('parks a message the cloud refuses for good and delivers the others', async () => {
    const { agent, uuid } = await agentFor();
    await env.cloud.admin.setFaults({ refuse: true });
    const r = await post(agent, Array.from({ length: 30 }, (_, i) => ({ stream: 's', payload: { i } })));
    const ids = r.body.ids ?? [];
    const poison = ids[7] as string;
    await env.cloud.admin.setFaults({ refuse: null, poisonMessageIds: [poison] });
    await waitFor('the others delivered', () => ids.filter((id) => id !== poison).every((id) => storedIds(uuid).has(id)), 30_000, 250);
    const q = await waitFor('the poison parked', async () => {
      const v = (await agent.get('/v2/queue')).body as { channels: Record<string, { parked: number; depth: number }>; parkedMessages: { id: string; reason: string }[] };
      return v.channels.s === undefined && v.channels.telemetry?.parked === 1 ? v : undefined;
    });
    expect(q.parkedMessages[0]?.id).toBe(poison);
    expect(q.parkedMessages[0]?.reason).toContain('422');
    expect(storedIds(uuid).has(poison)).toBe(false);
  });

  it('answers 400 naming the field for bad telemetry', async () => {
    const { agent } = await agentFor();
    const bad = await post(agent, { stream: 'has space', payload: 1 });
    expect(bad.status).toBe(400);
    expect(bad.body.message).toContain('body.stream');
    const missing = await post(agent, [{ stream: 'ok', payload: 1 }, { stream: 'ok' }]);
    expect(missing.status).toBe(400);
    expect(missing.body.message).toContain('body.1.payload');
  });

  it('queues connection transitions as events, delivered after the outage', async () => {
    const { agent, uuid } = await agentFor();
    await waitFor('online', async () => ((await agent.get('/v2/connection')).body as { status: string }).status === 'online');
    await env.cloud.admin.setFaults({ refuse: true });
    await fetch(`${agent.apiUrl}/v1/update`, { method: 'POST', headers: { authorization: `Bearer ${agent.key}` } });
    await waitFor('offline', async () => ((await agent.get('/v2/connection')).body as { status: string }).status === 'offline', 20_000);
    await env.cloud.admin.clearFaults();
    await waitFor('the offline transition delivered as an event', () => {
      const msgs = env.cloud.admin.messages(uuid, { limit: 1000 }).messages;
      return msgs.some((m) => m.channel === 'events' && (m.payload as { type?: string; to?: string }).to === 'offline');
    }, 30_000, 250);
  });
});

describe('telemetry over MQTT', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker.dispose();
  });

  it('publishes local telemetry on iot/{uuid}/telemetry/{stream} and polls at once on target/notify', async () => {
    const { agent, uuid } = await agentFor({ mqtt: { url: broker.url, keepAliveSeconds: 10 } });
    const watcher = await observe(broker.url, `iot/${uuid}/#`);
    try {
      await waitFor('the birth message', () => watcher.received.some((r) => r.topic === `iot/${uuid}/status` && r.payload.includes('online')));
      const r = await post(agent, [{ stream: 'vibration', payload: { rms: 0.4 } }, { stream: 'vibration', payload: { rms: 0.5 } }]);
      expect(r.status).toBe(202);
      await waitFor('both on the broker', () => (r.body.ids ?? []).every((id) => watcher.ids().includes(id)));
      const msg = watcher.received.find((m) => m.topic === `iot/${uuid}/telemetry/vibration`);
      expect(JSON.parse(msg?.payload ?? '{}')).toMatchObject({ id: expect.any(String), ts: expect.any(Number), payload: { rms: 0.4 } });

      env.cloud.admin.setTarget(uuid, { version: 9, apps: {} });
      await watcher.client.publishAsync(`iot/${uuid}/target/notify`, '{}', { qos: 1 });
      await waitFor('target v9 (polled at once: the interval is a minute)', async () => ((await agent.get('/v2/state')).body as { target: { version: number } | null }).target?.version === 9, 10_000);
      const health = (await agent.get('/v2/connection')).body as { channels: Record<string, { status: string }>; mqtt: { connected: boolean } };
      expect(health.mqtt.connected).toBe(true);
      expect(health.channels.mqtt?.status).toBe('online');
    } finally {
      await watcher.close();
    }
  });

  it('delivers telemetry that was in flight over MQTT when the agent was SIGKILLed: the outbox re-sends it after the restart', async () => {
    let pubacks = 0;
    const proxy = await FaultProxy.start({
      target: broker,
      onFrame: (f) => {
        if (f.direction === 'down' && f.type === 4) pubacks++;
      },
    });
    const dev = { uuid: `outbox-kill-${process.pid}`, apiKey: 'outbox-kill-key-0123456789' };
    env.cloud.admin.createDevice(dev);
    env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    const dataDir = dirs.make();
    const config = {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      // A long keep-alive: the connection must stay up (PUBACKs lost) until the kill.
      mqtt: { url: proxy.url, keepAliveSeconds: 60 },
      // The agent's own warnings go over MQTT too (logs/agent): one in flight would take one of the 20
      // slots the broker allows, and this test counts 20 telemetry messages in flight.
      logs: { agentLevel: 'off' },
      settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
    };
    const watcher = await observe(broker.url, `iot/${dev.uuid}/telemetry/#`);
    try {
      const first = await spawnAgent({ dataDir, config });
      agents.push(first);
      await waitFor('the birth acknowledged', () => pubacks >= 1);
      // From now on no PUBACK reaches the agent: every message stays in flight.
      proxy.blackhole('down');
      const r = await post(first, Array.from({ length: 20 }, (_, i) => ({ stream: 'flow', payload: { i } })));
      expect(r.status).toBe(202);
      const ids = r.body.ids ?? [];
      expect(ids).toHaveLength(20);
      await waitFor('every message at the broker', () => ids.every((id) => watcher.ids().includes(id)));
      // Held by the outbox alone: leased, not acked, and no second copy in the session's in-flight table.
      const q = (await first.get('/v2/queue')).body as { channels: Record<string, { depth: number; leased: number }> };
      expect(q.channels.telemetry).toMatchObject({ depth: 20, leased: 20 });
      expect(outgoingRows(join(dataDir, 'agent.db'))).toEqual([]);
      await first.stop('SIGKILL');

      proxy.pass();
      const second = await spawnAgent({ dataDir, config });
      agents.push(second);
      await waitFor('the outbox emptied', async () => {
        const q2 = (await second.get('/v2/queue')).body as { channels: Record<string, { depth: number; delivered: number }> };
        return q2.channels.telemetry?.depth === 0 && q2.channels.telemetry.delivered === 20;
      }, 20_000);
      // Each id twice: the copy the broker had before the kill and the one re-sent from the outbox.
      const copies = new Map<string, number>();
      for (const id of watcher.ids()) copies.set(id, (copies.get(id) ?? 0) + 1);
      expect([...copies.entries()].sort()).toEqual([...ids].sort().map((id) => [id, 2]));
    } finally {
      await watcher.close();
      await proxy.close();
    }
  });

  it('takes QoS 1 publishes of local apps on the local broker only once durable, and delivers them to the broker', async () => {
    const { agent, uuid } = await agentFor({ mqtt: { url: broker.url, keepAliveSeconds: 10 }, features: { metrics: false, localBroker: true }, localBroker: { port: 0 } });
    const started = await waitFor('the local broker', () => agent.records().find((r) => r.msg === 'local MQTT broker listening for local apps'));
    // connectAsync listens from the first moment: a CONNACK that comes while the observer below
    // connects is not missed (a 'connect' listener added after that wait never fired).
    const local = await connectAsync(`mqtt://127.0.0.1:${String(started.port)}`, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000 });
    const watcher = await observe(broker.url, `iot/${uuid}/telemetry/#`);
    try {
      await local.publishAsync('local/telemetry/flow', JSON.stringify({ lpm: 12.5 }), { qos: 1 });
      // The PUBACK came: the message is in the outbox on disk, or already delivered from it.
      const q = (await agent.get('/v2/queue')).body as { channels: Record<string, { depth: number; delivered: number }> };
      expect((q.channels.telemetry?.depth ?? 0) + (q.channels.telemetry?.delivered ?? 0)).toBe(1);
      await waitFor('the publish on the cloud broker', () => watcher.received.find((m) => m.topic === `iot/${uuid}/telemetry/flow`));
      const got = watcher.received.find((m) => m.topic === `iot/${uuid}/telemetry/flow`);
      expect(JSON.parse(got?.payload ?? '{}')).toMatchObject({ payload: { lpm: 12.5 } });
      // A local app cannot publish as the device: acknowledged and dropped, the reason on local/errors/{clientId}.
      const rogue = await connectAsync(`mqtt://127.0.0.1:${String(started.port)}`, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, clientId: 'rogue' });
      const reasons: string[] = [];
      rogue.on('message', (_t, p) => reasons.push(p.toString()));
      await rogue.subscribeAsync('local/errors/rogue', { qos: 1 });
      await rogue.publishAsync(`iot/${uuid}/telemetry/flow`, '{}', { qos: 1 });
      await waitFor('the reason', () => reasons.length > 0);
      expect(JSON.parse(reasons[0]!)).toMatchObject({ topic: `iot/${uuid}/telemetry/flow`, code: 'LOCAL_TOPIC_FORBIDDEN' });
      rogue.end(true);
    } finally {
      local.end(true);
      await watcher.close();
    }
  });
});
