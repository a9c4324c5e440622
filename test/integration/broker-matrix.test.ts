import { connectAsync } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { BROKER_MATRIX, type BrokerConfiguration, type Device, type MatrixBroker } from '../helpers/broker-matrix.js';
import { observe, type Observer } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The broker compatibility matrix (issue #19): the built agent against each broker configuration
 * (test/helpers/broker-matrix.ts), started privately once per configuration. For each: it connects,
 * telemetry accepted while the broker is down arrives at QoS 1 once it is back, a broker restart in
 * the middle of a stream loses nothing, the shadow and jobs topics work through it, and what the broker
 * does with a "." in a topic level is as docs/mqtt.md ("Supported brokers") says. The cloud's
 * side is a stock mqtt.js client with a persistent session (it gets what arrives while it is away)
 * plus the devcloud, which serves the jobs (a jobs/notify only makes the agent ask it at once).
 */

const dirs = tempDirs();
let cloud: DevCloud;
/** Brokers that are slow to start (RabbitMQ), started while the configurations before them run. */
const early = new Map<string, Promise<MatrixBroker>>();

const deviceOf = (c: BrokerConfiguration): Device => {
  const slug = c.name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
  return { uuid: `matrix-${slug}-${process.pid}`, apiKey: `matrix-key-${slug}-0123456789` };
};

beforeAll(async () => {
  requireBuilt();
  for (const c of BROKER_MATRIX.filter((x) => x.slowStart)) {
    const booting = c.start(deviceOf(c));
    booting.catch(() => undefined); // awaited, and reported, by the configuration's own setup
    early.set(c.name, booting);
  }
  cloud = await startDevCloud();
});
afterAll(async () => {
  // A broker started ahead whose configuration never ran (a filtered run) is stopped all the same.
  for (const booting of early.values()) await (await booting.catch(() => undefined))?.dispose();
  await cloud?.close();
  dirs.cleanup();
});

interface ConnectionView {
  channels: Record<string, { status: string }>;
  mqtt: { connected: boolean; subscribed: boolean; reconnects: number; connectionFailures: number; lastError: string | null; protocol: unknown } | null;
}
interface ShadowView {
  desired: Record<string, unknown>;
  desiredVersion: number | null;
  delta: Record<string, unknown>;
}

const JOBS_NEXT = 'GET /device/v1/:uuid/jobs/next';
/** A test that stops and starts its broker: a RabbitMQ node takes 20 s to start here, more on a loaded machine. */
const BROKER_CYCLE_MS = 180_000;

async function connection(agent: AgentProcess): Promise<ConnectionView> {
  return (await agent.get('/v2/connection')).body as ConnectionView;
}

async function postTelemetry(agent: AgentProcess, count: number, tag: string, accepted: Set<string>, stream = 'matrix'): Promise<string[]> {
  const r = await agent.send('POST', '/v2/telemetry', Array.from({ length: count }, (_, i) => ({ stream, payload: { tag, i } })));
  expect(r.status, JSON.stringify(r.body)).toBe(202);
  const ids = (r.body as { ids: string[] }).ids;
  for (const id of ids) accepted.add(id);
  return ids;
}

/** Every copy the cloud's client received on the telemetry topic, by message id. */
function telemetryCopies(sub: Observer, uuid: string): string[] {
  return sub.received
    .filter((m) => m.topic === `iot/${uuid}/telemetry/matrix`)
    .map((m) => (JSON.parse(m.payload) as { id: string }).id);
}

/**
 * Waits until every id reached the cloud's client; returns how many extra copies came (QoS 1: at least
 * once). A restart can cost an id at most two extra copies: the agent's re-send of what it had in flight
 * when the connection dropped, and the broker's re-send of what it had in flight to the cloud's client.
 */
async function delivered(sub: Observer, uuid: string, ids: string[], what: string): Promise<number> {
  const missing = (): string[] => {
    const seen = new Set(telemetryCopies(sub, uuid));
    return ids.filter((id) => !seen.has(id));
  };
  await waitFor(what, () => missing().length === 0, 60_000, 100).catch((err: unknown) => {
    throw new Error(`${String(err)}: ${missing().length} of ${ids.length} missing`);
  });
  const copies = telemetryCopies(sub, uuid).filter((id) => ids.includes(id));
  const perId = new Map<string, number>();
  for (const id of copies) perId.set(id, (perId.get(id) ?? 0) + 1);
  expect(Math.max(...perId.values())).toBeLessThanOrEqual(3);
  return copies.length - perId.size;
}

for (const config of BROKER_MATRIX) {
  describe(config.name, () => {
    const dev = deviceOf(config);
    let broker: MatrixBroker;
    let agent: AgentProcess;
    let sub: Observer;
    /** Every telemetry id the agent accepted in this configuration. */
    const accepted = new Set<string>();
    let t0 = 0;

    beforeAll(async () => {
      t0 = Date.now();
      broker = await (early.get(config.name) ?? config.start(dev));
      early.delete(config.name);
      cloud.admin.createDevice(dev);
      cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
      // The cloud's side: a persistent session on everything the device publishes.
      sub = await observe(broker.url, `iot/${dev.uuid}/#`, { clientId: `cloud-${dev.uuid}`, clean: false, ...broker.clientOptions });
      agent = await spawnAgent({
        dataDir: dirs.make(),
        config: {
          device: dev,
          cloud: { apiUrl: cloud.url, requestTimeoutMs: 2_000 },
          mqtt: { url: broker.url, connectTimeoutMs: 3_000, keepAliveSeconds: 10, ...broker.agentMqtt },
          features: { metrics: false },
          logs: { enabled: false },
          // Jobs only on a notify (or at start): a 10-minute poll never comes during the test.
          jobs: { pollIntervalMs: 600_000, allowedCommands: ['/bin/echo'] },
          settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
        },
      });
    }, 120_000);
    afterAll(async () => {
      await agent?.stop('SIGKILL');
      await sub?.close();
      await broker?.dispose();
      console.log(`broker matrix: ${config.name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    });

    it(`connects, speaking MQTT ${config.protocol.version === 4 ? '3.1.1' : '5'}, and says so`, async () => {
      const view = await waitFor('MQTT connected and subscribed', async () => {
        const c = await connection(agent);
        return c.mqtt?.subscribed && c.channels.mqtt?.status === 'online' ? c : undefined;
      }, 30_000, 100).catch((err: unknown) => {
        throw new Error(`${String(err)}\n${JSON.stringify(agent.records().filter((r) => r.part === 'mqtt').slice(-6))}\n${broker.log().slice(-1_000)}`);
      });
      expect(view.mqtt?.connected).toBe(true);
      expect(view.mqtt?.protocol).toEqual(config.protocol);
      await waitFor('the birth message at the cloud', () => sub.received.some((m) => m.topic === `iot/${dev.uuid}/status` && m.payload.includes('"online"')));
    });

    it('shadow: the desired state the cloud publishes reaches the agent; the reported state comes back', async () => {
      await sub.client.publishAsync(`iot/${dev.uuid}/shadow/desired`, JSON.stringify({ version: 1, state: { setpoint: 21 } }), { qos: 1, retain: true });
      const doc = await waitFor('desired v1 applied', async () => {
        const d = (await agent.get('/v2/shadow')).body as ShadowView;
        return d.desiredVersion === 1 ? d : undefined;
      });
      expect(doc.desired).toEqual({ setpoint: 21 });
      expect(doc.delta).toEqual({ setpoint: 21 });
      expect((await agent.send('PATCH', '/v2/shadow', { reported: { setpoint: 21, fw: '1.0' } })).status).toBe(200);
      const reported = await waitFor('the reported state at the cloud', () =>
        sub.received.find((m) => m.topic === `iot/${dev.uuid}/shadow/reported`),
      );
      expect(JSON.parse(reported.payload)).toMatchObject({ id: expect.any(String), version: 1, state: { setpoint: 21, fw: '1.0' } });
    });

    it('jobs: a jobs/notify makes the agent fetch the job at once; it runs and its result reaches the cloud', async () => {
      // The poll at start has been answered (nothing to do); the next one would be 10 minutes away.
      await waitFor('the first jobs poll', () => (cloud.admin.received(dev.uuid).requests.byRoute[JOBS_NEXT] ?? 0) >= 1);
      const polls = cloud.admin.received(dev.uuid).requests.byRoute[JOBS_NEXT] ?? 0;
      const { id } = cloud.admin.createJob(dev.uuid, { type: 'run-command', params: { command: ['/bin/echo', 'via', 'mqtt'] } });
      expect(cloud.admin.job(dev.uuid, id).status).toBe('QUEUED');
      await sub.client.publishAsync(`iot/${dev.uuid}/jobs/notify`, JSON.stringify({ jobId: id }), { qos: 1 });
      await waitFor('the job done', () => cloud.admin.job(dev.uuid, id).status === 'SUCCEEDED', 15_000);
      const job = cloud.admin.job(dev.uuid, id);
      expect(job.updates.map((u) => u.status)).toEqual(['IN_PROGRESS', 'SUCCEEDED']);
      expect(job.updates[1]?.details).toMatchObject({ exitCode: 0, stdout: 'via mqtt\n' });
      expect(cloud.admin.received(dev.uuid).requests.byRoute[JOBS_NEXT]).toBeGreaterThan(polls);
    });

    it('delivers telemetry accepted while the broker is down, at QoS 1, once it is back', async () => {
      const before = (await connection(agent)).mqtt?.reconnects ?? 0;
      await broker.stop();
      await waitFor('the agent sees the broker gone', async () => (await connection(agent)).mqtt?.connected === false);
      const ids: string[] = [];
      for (let batch = 0; batch < 5; batch++) ids.push(...(await postTelemetry(agent, 10, `outage-${batch}`, accepted)));
      expect(new Set(ids).size).toBe(50);
      const queue = (await agent.get('/v2/queue')).body as { channels: Record<string, { depth: number }> };
      expect(queue.channels.telemetry?.depth).toBeGreaterThanOrEqual(50);
      expect(telemetryCopies(sub, dev.uuid).filter((id) => ids.includes(id))).toEqual([]);

      await broker.start();
      const duplicates = await delivered(sub, dev.uuid, ids, 'every message accepted during the outage at the cloud');
      console.log(`broker matrix: ${config.name}: outage: ${ids.length} messages, ${duplicates} duplicates`);
      const after = await connection(agent);
      expect(after.mqtt?.connected).toBe(true);
      expect(after.mqtt?.reconnects).toBeGreaterThan(before);
    }, BROKER_CYCLE_MS);

    it('survives a broker restart in the middle of a stream: reconnects by itself, loses nothing, subscribes again', async () => {
      // The retained desired state (v1, from the shadow test) comes again with every subscription, and is ignored as stale.
      const staleV1 = (): number => agent.records().filter((r) => String(r.msg).includes('(stale: version 1 <= 1)')).length;
      const ids: string[] = [];
      let producing = true;
      const producer = (async () => {
        for (let batch = 0; producing; batch++) {
          ids.push(...(await postTelemetry(agent, 5, `restart-${batch}`, accepted)));
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      try {
        await waitFor('a stream flowing', () => telemetryCopies(sub, dev.uuid).filter((id) => ids.includes(id)).length >= 20);
        const before = (await connection(agent)).mqtt?.reconnects ?? 0;
        const staleBefore = staleV1();
        await broker.stop();
        await broker.start();
        await waitFor('the agent reconnected by itself', async () => {
          const c = await connection(agent);
          return c.mqtt?.subscribed && c.mqtt.reconnects > before;
          // A RabbitMQ node takes its time to start again on a loaded machine.
        }, 60_000);
        const atReconnect = ids.length;
        await waitFor('more accepted after the reconnect', () => ids.length >= atReconnect + 20);
        // The broker kept the retained message across its restart and sent it on the new subscription.
        await waitFor('the retained desired state again, ignored as stale', () => staleV1() > staleBefore);
      } finally {
        producing = false;
        await producer;
      }
      const duplicates = await delivered(sub, dev.uuid, ids, 'every message of the stream at the cloud');
      console.log(`broker matrix: ${config.name}: restart: ${ids.length} messages, ${duplicates} duplicates`);
      // Nothing but accepted messages on the telemetry topic, each with its id: the cloud can deduplicate.
      expect(telemetryCopies(sub, dev.uuid).filter((id) => !accepted.has(id))).toEqual([]);
      // The subscriptions are back: a new desired state reaches the agent.
      await sub.client.publishAsync(`iot/${dev.uuid}/shadow/desired`, JSON.stringify({ version: 2, state: { setpoint: 22 } }), { qos: 1, retain: true });
      await waitFor('desired v2 applied', async () => ((await agent.get('/v2/shadow')).body as ShadowView).desiredVersion === 2);
    }, BROKER_CYCLE_MS);

    it(`a "." in a topic level: the broker ${{ kept: 'keeps it', split: 'turns it into "/"', closes: 'closes the connection' }[config.dottedTopic]} (stock clients)`, async () => {
      // Not the agent's doing: what a device uuid or telemetry stream with a "." meets on this broker (docs/mqtt.md, "Supported brokers").
      const base = `matrix-dots/${dev.uuid}`;
      const options = { ...broker.clientOptions, protocolVersion: config.protocol.version, reconnectPeriod: 0, connectTimeout: 5_000 };
      const watcher = await connectAsync(broker.url, { ...options, clientId: `dots-sub-${process.pid}` });
      const publisher = await connectAsync(broker.url, { ...options, clientId: `dots-pub-${process.pid}` });
      try {
        const topics: string[] = [];
        watcher.on('message', (t) => topics.push(t));
        await watcher.subscribeAsync(`${base}/#`, { qos: 1 });
        let closed = false;
        publisher.on('close', () => (closed = true));
        publisher.on('error', () => undefined);
        const acked = publisher.publishAsync(`${base}/stream.with.dots`, '{}', { qos: 1 }).then(() => true, () => false);
        if (config.dottedTopic === 'closes') {
          await waitFor('the publisher disconnected', () => closed);
          // A message published after it arrives: the dotted one would have come first.
          await watcher.publishAsync(`${base}/plain`, '{}', { qos: 1 });
          await waitFor('the plain message', () => topics.includes(`${base}/plain`));
          expect(topics).toEqual([`${base}/plain`]);
        } else {
          expect(await acked).toBe(true);
          const expected = config.dottedTopic === 'kept' ? `${base}/stream.with.dots` : `${base}/stream/with/dots`;
          await waitFor('the dotted message', () => topics.length > 0);
          expect(topics).toEqual([expected]);
        }
      } finally {
        await watcher.endAsync(true);
        await publisher.endAsync(true);
      }
    });

    it(`the agent's telemetry on a stream with a "." in its name: ${{ kept: 'delivered', split: 'delivered on a topic with "/" for "."', closes: 'stops delivery (a known limit)' }[config.dottedTopic]}`, async () => {
      // Last in the configuration: with NATS the message below never leaves the agent's queue.
      const [dotted] = await postTelemetry(agent, 1, 'dotted', accepted, 'with.dots');
      const at = (topic: string): boolean => sub.received.some((m) => m.topic === topic && m.payload.includes(`"${dotted}"`));
      if (config.dottedTopic !== 'closes') {
        const topic = `iot/${dev.uuid}/telemetry/${config.dottedTopic === 'kept' ? 'with.dots' : 'with/dots'}`;
        await waitFor(`the message on ${topic}`, () => at(topic));
        return;
      }
      // NATS closes the connection at the PUBLISH; the agent sends it again at every reconnect, and what
      // comes after it waits behind it (docs/mqtt.md, "Known limits"). Asserted so that a fix shows here.
      const [plain] = await postTelemetry(agent, 1, 'after-dotted', accepted);
      const failures = (await connection(agent)).mqtt?.connectionFailures ?? 0;
      await waitFor('three more lost connections', async () => ((await connection(agent)).mqtt?.connectionFailures ?? 0) >= failures + 3, 30_000);
      expect(telemetryCopies(sub, dev.uuid)).not.toContain(plain);
      expect((await connection(agent)).mqtt?.lastError).toBe('connection lost: the connection closed');
    });
  });
}
