import { readFileSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import fc from 'fast-check';
import { connectAsync } from 'mqtt';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { tempDirs } from '../helpers/tmp.js';

// Fault 7 of issue #21, on the built agent: what comes in from outside (a target document, local API
// bodies, local broker packets) is bounded by `limits.*`; over a limit it is refused, naming the
// limit, with the memory of the agent bounded and the state in force unchanged.
const dirs = tempDirs();
let cloud: DevCloud;
const agents: AgentProcess[] = [];
const closers: (() => unknown)[] = [];
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
});
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
});
afterAll(async () => {
  await cloud.close();
  dirs.cleanup();
});

const MiB = 1_048_576;

/** Resident memory of a process and its peak so far, in bytes (Linux /proc). */
function memory(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

async function start(config: Record<string, unknown>): Promise<AgentProcess> {
  const agent = await spawnAgent({ dataDir: dirs.make(), config: { features: { metrics: false, jobs: false, shadow: false }, ...config } });
  agents.push(agent);
  return agent;
}

interface StateView {
  target: { version: number } | null;
  lastRejection: { message: string } | null;
}

it('refuses a 60 MB target while reading it: the limit named in /v2/state, memory bounded, the old target kept', async () => {
  const dev = { uuid: `inputs-${process.pid}`, apiKey: 'inputs-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await start({ device: dev, cloud: { apiUrl: cloud.url }, settings: { pollIntervalMs: 1_000 } });
  const state = async () => (await agent.get('/v2/state')).body as StateView;
  await waitFor('target 1 in force', async () => (await state()).target?.version === 1);
  const before = memory(agent.child.pid!);

  // A valid document but for its size: 60 MB of environment values.
  const big = 'x'.repeat(1_000_000);
  const environment = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`V${i}`, big]));
  cloud.admin.setTarget(dev.uuid, { version: 2, apps: { big: { services: { s: { image: 'busybox:1', environment } } } } });

  const rejected = await waitFor('the rejection', async () => (await state()).lastRejection ?? undefined, 30_000);
  expect(rejected.message).toMatch(/limits\.maxTargetBytes \(2097152 bytes\)/);
  expect((await state()).target?.version).toBe(1);
  const after = memory(agent.child.pid!);
  expect(after.hwm - Math.max(before.rss, 0)).toBeLessThan(100 * MiB);
  await waitFor('the refusal logged', () => agent.records().some((r) => String(r.msg).includes('limits.maxTargetBytes')));
  // Nested 3,000 deep (as deep as the devcloud can store): refused the same way, naming the depth limit.
  const deep = JSON.parse(`${'['.repeat(3_000)}${']'.repeat(3_000)}`) as unknown;
  cloud.admin.setTarget(dev.uuid, { version: 3, apps: {}, x: deep });
  await waitFor('the depth rejection', async () => /limits\.maxJsonDepth \(64 levels\)/.test((await state()).lastRejection?.message ?? ''), 30_000);
  expect((await state()).target?.version).toBe(1);
  // The agent stays healthy and keeps polling (the refused ETag answers 304).
  expect((await agent.get('/v1/healthy')).status).toBe(200);
});

it('answers 400 naming the depth limit for JSON nested 100,000 deep and 413 naming the size limit, state unchanged', async () => {
  const agent = await start({});
  const url = agent.apiUrl;
  const post = (path: string, body: string) =>
    fetch(`${url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${agent.key}`, 'content-type': 'application/json' }, body });

  const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
  const r1 = await post('/v2/telemetry', `{"stream":"s","payload":${deep}}`);
  expect(r1.status).toBe(400);
  expect(((await r1.json()) as { message: string }).message).toMatch(/limits\.maxJsonDepth \(64 levels\)/);

  const r2 = await post('/v2/telemetry', JSON.stringify({ stream: 's', payload: 'y'.repeat(2 * MiB) }));
  expect(r2.status).toBe(413);
  expect(((await r2.json()) as { message: string }).message).toMatch(/limits\.maxApiBodyBytes \(1048576 bytes\)/);

  // A local target: its own, larger limit.
  const r3 = await post('/v2/local/target-state', JSON.stringify({ version: 5, apps: {}, pad: 'z'.repeat(3 * MiB) }));
  expect(r3.status).toBe(413);
  expect(((await r3.json()) as { message: string }).message).toMatch(/limits\.maxTargetBytes/);

  // Random and mutated bodies: never a 5xx, and the state in force stays what it was.
  const target = { version: 3, apps: {} };
  expect((await post('/v2/local/target-state', JSON.stringify(target))).status).toBe(200);
  const routes = ['/v2/telemetry', '/v2/local/target-state', '/v1/update', '/v2/shadow'];
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...routes), fc.oneof(fc.json(), fc.string(), fc.jsonValue().map((v) => JSON.stringify({ stream: 's', payload: v }))), async (path, body) => {
      const r = await post(path, body);
      expect(r.status, `${path} ${body.slice(0, 80)}`).toBeLessThan(500);
      if (path === '/v2/local/target-state' && r.status === 200) {
        expect((await agent.send('POST', path, target)).status).toBe(200);
      }
    }),
    { numRuns: 40 },
  );
  expect(((await agent.get('/v2/state')).body as StateView).target?.version).toBe(3);
  expect((await agent.get('/v1/healthy')).status).toBe(200);
});

/** A raw TCP client: sends MQTT CONNECT and resolves once the CONNACK (or the close) comes. */
function rawClient(port: number, id: string): Promise<{ socket: Socket; connack: boolean; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ port, host: '127.0.0.1' });
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => undefined);
    const clientId = Buffer.from(id);
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 60.
    const variable = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3c, clientId.length >> 8, clientId.length & 0xff]);
    const body = Buffer.concat([variable, clientId]);
    socket.once('connect', () => socket.write(Buffer.concat([Buffer.from([0x10, body.length]), body])));
    socket.once('data', (d) => resolve({ socket, connack: d[0] === 0x20, closed }));
    void closed.then(() => resolve({ socket, connack: false, closed }));
    setTimeout(() => reject(new Error('no answer to CONNECT')), 10_000).unref();
  });
}

/** MQTT remaining-length bytes. */
function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/** Announces a PUBLISH of `size` payload bytes and streams zeros until the agent closes the connection. Returns the bytes written. */
async function floodPublish(socket: Socket, size: number, closed: Promise<void>): Promise<number> {
  const topic = Buffer.from('local/bulk');
  const header = Buffer.concat([Buffer.from([0x30]), varint(2 + topic.length + size), Buffer.from([0, topic.length]), topic]);
  let isClosed = false;
  void closed.then(() => (isClosed = true));
  socket.write(header);
  const chunk = Buffer.alloc(MiB);
  let written = 0;
  while (written < size && !isClosed && !socket.destroyed) {
    written += chunk.length;
    if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
  }
  await closed;
  return written;
}

it('disconnects local broker clients that send packets over the limit, refuses connections over the limit, and serves good clients', async () => {
  const agent = await start({ features: { metrics: false, jobs: false, shadow: false, localBroker: true }, localBroker: { port: 0 }, limits: { maxLocalConnections: 6 } });
  const listening = await waitFor('the broker listening', () => agent.records().find((r) => r.msg === 'local MQTT broker listening'));
  const port = listening.port as number;
  const before = memory(agent.child.pid!);

  // Four clients each announce a 200 MB payload.
  const clients = await Promise.all([1, 2, 3, 4].map((i) => rawClient(port, `big-${i}`)));
  expect(clients.every((c) => c.connack)).toBe(true);
  const written = await Promise.all(clients.map((c) => floodPublish(c.socket, 200 * MiB, c.closed)));
  for (const w of written) expect(w).toBeLessThan(64 * MiB);
  expect(memory(agent.child.pid!).hwm - before.rss).toBeLessThan(100 * MiB);
  await waitFor('the log line', () => agent.records().some((r) => String(r.msg).includes('over limits.maxLocalPacketBytes (1114112)')));

  // Six connections at once at most: the seventh is closed without a CONNACK.
  const held = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => rawClient(port, `hold-${i}`)));
  closers.push(() => held.forEach((h) => h.socket.destroy()));
  expect(held.every((h) => h.connack)).toBe(true);
  const extra = await rawClient(port, 'extra');
  expect(extra.connack).toBe(false);
  await waitFor('the drop logged', () => agent.records().some((r) => String(r.msg).includes('limits.maxLocalConnections (6)')));
  held.pop()!.socket.destroy();

  // A good client is still served: its telemetry is acknowledged (on disk) and queued.
  const good = await waitFor('a good client connected', () => connectAsync(`mqtt://127.0.0.1:${port}`, { clientId: 'good', reconnectPeriod: 0 }).catch(() => undefined));
  closers.push(() => good.endAsync(true));
  await good.publishAsync('local/telemetry/temp', JSON.stringify({ c: 21 }), { qos: 1 });
  const queue = (await agent.get('/v2/queue')).body as Record<string, unknown>;
  expect(JSON.stringify(queue)).toMatch(/telemetry/);
  expect((await agent.get('/v1/healthy')).status).toBe(200);
});

for (const protocolVersion of [4, 5] as const) {
  it(`bounds what the cloud broker sends (MQTT ${protocolVersion === 5 ? '5: maximumPacketSize, the broker drops it' : '3.1.1: the connection is closed at the header'}), then takes good messages`, async () => {
    const broker = await startMosquitto();
    closers.push(() => broker.dispose());
    const uuid = `inputs-mqtt-${protocolVersion}-${process.pid}`;
    // A short backoff: under 3.1.1 the agent closes the connection, and the reconnect's first draw of the
    // default 40 s step would often outlast the wait below (this test is about the limits, not the backoff).
    const agent = await start({
      device: { uuid },
      mqtt: { url: broker.url, protocolVersion },
      features: { metrics: false, jobs: false, shadow: true },
      settings: { offline: { minBackoffSeconds: 0.5, maxBackoffSeconds: 2 } },
    });
    const mqttStats = async () => ((await agent.get('/v2/connection')).body as { mqtt: { connected: boolean; droppedIncoming: number; reconnects: number } }).mqtt;
    await waitFor('the agent connected', async () => (await mqttStats()).connected);
    const before = memory(agent.child.pid!);
    const cloud = await connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
    closers.push(() => cloud.endAsync(true));
    const topic = `iot/${uuid}/shadow/desired`;

    await cloud.publishAsync(topic, Buffer.alloc(20 * MiB, 0x20), { qos: 0 });
    if (protocolVersion === 4) {
      await waitFor('the refusal logged', () => agent.records().some((r) => String(r.msg).includes('over limits.maxCloudResponseBytes (1048576)')));
    }
    expect(memory(agent.child.pid!).hwm - before.rss).toBeLessThan(100 * MiB);

    // Good messages still arrive (after a reconnect for 3.1.1).
    const shadow = async () => ((await agent.get('/v2/shadow')).body as { desired: Record<string, unknown> }).desired;
    await waitFor(
      'a good desired state applied',
      async () => {
        if (!(await mqttStats()).connected) return false;
        await cloud.publishAsync(topic, JSON.stringify({ version: 2, state: { mode: 'eco' } }), { qos: 1 });
        return (await shadow()).mode === 'eco';
      },
      30_000,
      500,
    );
    // Nested past limits.maxJsonDepth: dropped and counted.
    const dropped = (await mqttStats()).droppedIncoming;
    await cloud.publishAsync(topic, `{"version":3,"state":{"a":${'['.repeat(5_000)}${']'.repeat(5_000)}}}`, { qos: 1 });
    await waitFor('the deep message dropped', async () => (await mqttStats()).droppedIncoming > dropped);
    await waitFor('the drop logged', () => agent.records().some((r) => String(r.msg).includes('limits.maxJsonDepth (64 levels)')));
    expect((await shadow()).mode).toBe('eco');
  });
}
