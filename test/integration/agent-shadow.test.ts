import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { observe } from '../helpers/mqtt.js';
import { join } from 'node:path';
import { Shadow } from '../../src/shadow/shadow.js';
import { Store } from '../helpers/store.js';
import { systemClock } from '../../src/util/clock.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// The built agent, a real Mosquitto (behind a fault proxy to take the device offline) and the devcloud.
const dirs = tempDirs();
let cloud: DevCloud;
let broker: Mosquitto;
const agents: AgentProcess[] = [];
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
  broker = await startMosquitto();
});
const cleanup = cleanupsAfterEach({
  before: async () => {
    for (const a of agents.splice(0)) await a.stop('SIGKILL');
  },
});
afterAll(async () => {
  await cloud.close();
  await broker.dispose();
  dirs.cleanup();
});

interface Doc {
  desired: Record<string, unknown>;
  reported: Record<string, unknown>;
  reportedVersion: number;
  desiredVersion: number | null;
  delta: Record<string, unknown>;
  overrides: Record<string, unknown> | null;
  conflicts: { path: string[]; local: unknown; cloud: unknown }[];
}

it('keeps the shadow locally, reports it over MQTT, takes the cloud desired state, and merges a local override made offline', async () => {
  const dev = { uuid: `shadow-${process.pid}`, apiKey: 'shadow-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const proxy = await FaultProxy.start({ target: broker });
  cleanup(() => proxy.close());
  const watcher = await observe(broker.url, `iot/${dev.uuid}/shadow/reported`);
  cleanup(() => watcher.close());
  const desiredTopic = `iot/${dev.uuid}/shadow/desired`;
  const dataDir = dirs.make();
  const config = {
    device: dev,
    cloud: { apiUrl: cloud.url, requestTimeoutMs: 2_000 },
    mqtt: { url: proxy.url, keepAliveSeconds: 30 },
    features: { metrics: false },
    settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
  };
  const agent = await spawnAgent({ dataDir, config });
  agents.push(agent);
  const doc = async (): Promise<Doc> => (await agent.get('/v2/shadow')).body as Doc;

  // A local app reports; the report reaches the broker as { id, version, state }.
  const r = await agent.send('PATCH', '/v2/shadow', { reported: { temp: 21.5, fw: '1.2' } });
  expect(r.status).toBe(200);
  expect(r.body).toMatchObject({ reported: { temp: 21.5, fw: '1.2' }, reportedVersion: 1 });
  await waitFor('the report on the broker', () => watcher.received.length >= 1);
  expect(JSON.parse(watcher.received[0]!.payload)).toMatchObject({ id: expect.any(String), version: 1, state: { temp: 21.5, fw: '1.2' } });

  // Bad input: a 400 naming the field; nothing changes.
  const bad = await agent.send('PATCH', '/v2/shadow', { reported: [1, 2] });
  expect(bad.status).toBe(400);
  expect((bad.body as { message: string }).message).toMatch(/^reported: expected an object/);
  expect((await doc()).reportedVersion).toBe(1);

  // The cloud's desired state (retained), and what the device still has to do.
  await watcher.client.publishAsync(desiredTopic, JSON.stringify({ version: 3, state: { setpoint: 22, mode: 'auto' } }), { qos: 1, retain: true });
  await waitFor('desired v3', async () => (await doc()).desiredVersion === 3);
  expect((await doc()).delta).toEqual({ setpoint: 22, mode: 'auto' });

  // Offline: the operator overrides both keys locally; the cloud meanwhile changes mode only.
  proxy.refuse(true);
  proxy.cut();
  await waitFor('the agent sees MQTT down', async () => ((await agent.get('/v2/connection')).body as { mqtt: { connected: boolean } }).mqtt.connected === false);
  const o = await agent.send('PATCH', '/v2/shadow', { desired: { mode: 'manual', setpoint: 19 }, reported: { temp: 20 } });
  expect(o.body).toMatchObject({ desired: { mode: 'manual', setpoint: 19 }, overrides: { mode: 'manual', setpoint: 19 } });
  await watcher.client.publishAsync(desiredTopic, JSON.stringify({ version: 4, state: { setpoint: 22, mode: 'eco' } }), { qos: 1, retain: true });

  // Back online: the retained v4 arrives. The cloud changed mode (it wins, the override is recorded as a
  // conflict) but not setpoint (the local override stays). The offline report is delivered.
  proxy.pass();
  await waitFor('desired v4 merged', async () => (await doc()).desiredVersion === 4, 20_000);
  const merged = await doc();
  expect(merged.desired).toEqual({ setpoint: 19, mode: 'eco' });
  expect(merged.overrides).toEqual({ setpoint: 19 });
  expect(merged.conflicts).toMatchObject([{ path: ['mode'], local: 'manual', cloud: 'eco' }]);
  await waitFor('the offline report delivered', () => watcher.received.some((m) => (JSON.parse(m.payload) as { version: number }).version === 2), 20_000);
  const last = JSON.parse(watcher.received.at(-1)!.payload) as { version: number; state: unknown };
  expect(last).toMatchObject({ version: 2, state: { temp: 20, fw: '1.2' } });

  // It survives a restart as it was; the retained v4 delivered again on reconnect is not applied twice.
  await agent.stop('SIGTERM');
  agents.splice(0);
  const again = await spawnAgent({ dataDir, config });
  agents.push(again);
  const reloaded = (await again.get('/v2/shadow')).body as Doc;
  expect(reloaded).toMatchObject({ reportedVersion: 2, desiredVersion: 4, desired: { setpoint: 19, mode: 'eco' }, overrides: { setpoint: 19 } });
  await waitFor('MQTT connected again', async () => ((await again.get('/v2/connection')).body as { mqtt: { connected: boolean; subscribed: boolean } }).mqtt.subscribed);
  await waitFor('the retained desired seen and ignored as stale', () => again.records().some((l) => String(l.msg).includes('stale: version 4 <= 4')), 10_000);
  expect(((await again.get('/v2/shadow')).body as Doc).conflicts).toHaveLength(1);
  const metrics = String((await again.get('/metrics')).body);
  expect(metrics).toMatch(/iotistic_shadow_version\{document="desired"\} 4/);
}, 60_000);

it('without MQTT, sends the reported state to the device API in a messages batch (channel shadow), the latest version last', async () => {
  const dev = { uuid: `shadow-http-${process.pid}`, apiKey: 'shadow-http-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: { device: dev, cloud: { apiUrl: cloud.url }, features: { metrics: false }, settings: { pollIntervalMs: 60_000 } },
  });
  agents.push(agent);
  for (const temp of [18, 19, 20]) expect((await agent.send('PATCH', '/v2/shadow', { reported: { temp } })).status).toBe(200);
  const shadowMessages = () => cloud.admin.messages(dev.uuid).messages.filter((m) => m.channel === 'shadow');
  await waitFor('the latest report at the cloud', () => shadowMessages().some((m) => (m.payload as { version: number }).version === 3), 15_000);
  // Coalesced while waiting: never more than one message per change, and the last one is the latest state.
  expect(shadowMessages().length).toBeLessThanOrEqual(3);
  expect(shadowMessages().at(-1)?.payload).toEqual({ version: 3, state: { temp: 20 } });
});

it('queues at start a reported change whose report the last run did not get to queue (a crash between the two commits)', async () => {
  const dev = { uuid: `shadow-crash-${process.pid}`, apiKey: 'shadow-crash-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  // What such a crash leaves: the shadow committed at version 2, no report of it in the outbox.
  const store = Store.open({ path: join(dataDir, 'agent.db'), logger: silentLogger(), clock: systemClock });
  const shadow = new Shadow({ db: store.db, clock: systemClock, logger: silentLogger() });
  shadow.patch({ reported: { temp: 1 } });
  shadow.patch({ reported: { temp: 2 } });
  store.close();
  const agent = await spawnAgent({ dataDir, config: { device: dev, cloud: { apiUrl: cloud.url }, features: { metrics: false }, settings: { pollIntervalMs: 60_000 } } });
  agents.push(agent);
  await waitFor('the report at the cloud', () => cloud.admin.messages(dev.uuid).messages.some((m) => m.channel === 'shadow'), 15_000);
  expect(cloud.admin.messages(dev.uuid).messages.filter((m) => m.channel === 'shadow').map((m) => m.payload)).toEqual([{ version: 2, state: { temp: 2 } }]);
});

it('serves the shadow to local apps on the local broker: desired retained on local/shadow/desired, reported patches on local/shadow/reported', async () => {
  const dev = { uuid: `shadow-local-${process.pid}`, apiKey: 'shadow-local-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: { device: dev, cloud: { apiUrl: cloud.url }, features: { metrics: false, localBroker: true }, localBroker: { port: 0 }, settings: { pollIntervalMs: 60_000 } },
  });
  agents.push(agent);
  expect((await agent.send('PATCH', '/v2/shadow', { desired: { fan: 'on' } })).status).toBe(200);
  const started = await waitFor('the local broker', () => agent.records().find((r) => r.msg === 'local MQTT broker listening for local apps'));
  const app = await observe(`mqtt://127.0.0.1:${String(started.port)}`, 'local/shadow/desired', { protocolVersion: 4 });
  cleanup(() => app.close());
  // Retained: a late subscriber gets the current desired state and what is left to do.
  const first = await waitFor('the retained desired state', () => app.received.find((m) => m.topic === 'local/shadow/desired'));
  expect(first.retain).toBe(true);
  expect(JSON.parse(first.payload)).toEqual({ version: null, desired: { fan: 'on' }, delta: { fan: 'on' } });
  // The app reports over MQTT; the PUBACK means stored; the delta left to do shrinks and is published again.
  await app.client.publishAsync('local/shadow/reported', JSON.stringify({ fan: 'on', rpm: 900 }), { qos: 1 });
  expect(((await agent.get('/v2/shadow')).body as Doc).reported).toEqual({ fan: 'on', rpm: 900 });
  await waitFor('the new delta', () => app.received.some((m) => JSON.parse(m.payload).delta && Object.keys(JSON.parse(m.payload).delta as object).length === 0));
  // An app may not publish the desired state for the others: acknowledged and dropped, the reason on local/errors/{clientId}.
  const errors = `local/errors/${app.client.options.clientId!}`;
  await app.client.subscribeAsync(errors, { qos: 1 });
  await app.client.publishAsync('local/shadow/desired', JSON.stringify({ desired: { fan: 'off' } }), { qos: 1 });
  const reason = await waitFor('the reason', () => app.received.find((m) => m.topic === errors));
  expect(JSON.parse(reason.payload)).toMatchObject({ topic: 'local/shadow/desired', code: 'LOCAL_TOPIC_FORBIDDEN', acknowledged: true });
  expect(app.received.filter((m) => m.topic === 'local/shadow/desired' && JSON.parse(m.payload).desired?.fan === 'off')).toEqual([]);
  expect(((await agent.get('/v2/shadow')).body as Doc).desired).toEqual({ fan: 'on' });
});

it('without MQTT, polls the desired state from the device API and applies newer versions', async () => {
  const dev = { uuid: `shadow-poll-${process.pid}`, apiKey: 'shadow-poll-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: { device: dev, cloud: { apiUrl: cloud.url }, features: { metrics: false }, settings: { pollIntervalMs: 1_000 } },
  });
  agents.push(agent);
  cloud.admin.setShadowDesired(dev.uuid, { mode: 'eco', setpoint: 21 });
  await waitFor('desired v1', async () => ((await agent.get('/v2/shadow')).body as Doc).desiredVersion === 1, 15_000);
  cloud.admin.setShadowDesired(dev.uuid, { mode: 'boost', setpoint: 21 });
  await waitFor('desired v2', async () => ((await agent.get('/v2/shadow')).body as Doc).desiredVersion === 2, 15_000);
  expect(((await agent.get('/v2/shadow')).body as Doc).desired).toEqual({ mode: 'boost', setpoint: 21 });
  expect((await agent.get('/v2/loops')).body).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'shadow-desired', state: 'running' })]));
});
