import { connect as tcpConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { connectAsync, type IClientOptions, type MqttClient, type Packet } from 'mqtt';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import mqttPacket from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { OutboxError } from '../../src/outbox/types.js';
import { LocalBroker, type LocalBrokerOptions } from '../../src/telemetry/local-broker.js';
import type { Json } from '../../src/util/json-diff.js';
import { HeldListener } from '../../src/util/held-listener.js';
import { BrokerPersistence } from '../../src/telemetry/broker-persistence.js';
import type { Store } from '../../src/store/store.js';
import { silentLogger } from '../helpers/logger.js';
import { openStore, until } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanup = cleanupsAfterEach();

interface Ingested {
  stream: string;
  payload: Json;
}

async function startBroker(ingest: LocalBrokerOptions['ingest'], extra: Partial<LocalBrokerOptions> = {}): Promise<{ broker: LocalBroker; url: string; port: number }> {
  const broker = new LocalBroker({ port: 0, ingest, logger: silentLogger(), ...extra });
  const { port } = await broker.start();
  cleanup(() => broker.stop());
  return { broker, url: `mqtt://127.0.0.1:${port}`, port };
}

/** A recording ingest that resolves at once. */
function recorder(): { ingested: Ingested[]; ingest: LocalBrokerOptions['ingest'] } {
  const ingested: Ingested[] = [];
  return { ingested, ingest: async (stream, payload) => void ingested.push({ stream, payload }) };
}

/** An MQTT 3.1.1 client (mqtt.js's default protocol) that does not reconnect unless told to. */
type Client = MqttClient & { received: Packet[]; closes: number };

async function client(url: string, opts: IClientOptions = {}): Promise<Client> {
  const c = (await connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5_000, ...opts }, false)) as Client;
  c.received = [];
  c.closes = 0;
  c.on('packetreceive', (p) => c.received.push(p));
  c.on('close', () => c.closes++);
  cleanup(() => c.endAsync(true));
  return c;
}

/**
 * Publishes at QoS 1 and expects a refusal for what the message is: it is acknowledged (so a
 * persistent client does not send it again), the connection stays open, and the reason arrives on
 * local/errors/{clientId}, naming the topic and the code.
 */
async function expectRefused(c: Client, topic: string, payload: string | Buffer, code: string, qos: 1 | 2 = 1): Promise<void> {
  const reasons: Array<Record<string, unknown>> = [];
  const errorsTopic = `local/errors/${encodeURIComponent(c.options.clientId!)}`;
  c.on('message', (t, p) => {
    if (t === errorsTopic) reasons.push(JSON.parse(p.toString()) as Record<string, unknown>);
  });
  await c.subscribeAsync(errorsTopic, { qos: 1 });
  await c.publishAsync(topic, payload, { qos });
  await until(`the reason on ${errorsTopic}`, () => reasons.length > 0, 5_000);
  expect(reasons[0], topic).toMatchObject({ clientId: c.options.clientId, topic, code, acknowledged: true });
  expect(String(reasons[0]!.reason)).toContain(topic);
  await delay(50);
  expect(c.closes, topic).toBe(0);
  expect(c.connected, topic).toBe(true);
}

/**
 * Publishes at QoS 1 and expects a refusal for the agent's state: the broker closes the connection
 * and no PUBACK arrives. (mqtt.js keeps the message in flight for a resend: its promise settles only
 * on reconnect or end.)
 */
async function expectDisconnected(c: Client, topic: string, payload: string | Buffer, opts: { retain?: boolean } = {}): Promise<void> {
  let acked = false;
  c.publishAsync(topic, payload, { qos: 1, ...opts }).then(
    () => (acked = true),
    () => undefined,
  );
  await until(`the connection closed after publishing to ${topic}`, () => c.closes > 0, 5_000);
  await delay(50);
  expect(acked, topic).toBe(false);
  expect(pubacks(c), topic).toEqual([]);
}

/** mqtt-packet's number cache (numbers.js): filled at the first packet written unless turned off. */
const packetNumbers = createRequire(import.meta.url)('mqtt-packet/numbers') as { cache: Record<number, Buffer> };

const pubacks = (c: Client) => c.received.filter((p) => p.cmd === 'puback');
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('LocalBroker (aedes on loopback, mqtt.js clients)', () => {
  it('acknowledges a QoS 1 telemetry publish only after ingest resolved', async () => {
    const events: Array<{ what: string; at: number }> = [];
    const ingested: Ingested[] = [];
    const { broker, url } = await startBroker(async (stream, payload) => {
      events.push({ what: 'ingest called', at: performance.now() });
      await delay(300);
      ingested.push({ stream, payload });
      events.push({ what: 'ingest resolved', at: performance.now() });
    });
    const app = await client(url);
    app.on('packetreceive', (p) => {
      if (p.cmd === 'puback') events.push({ what: 'puback', at: performance.now() });
    });

    const sentAt = performance.now();
    await app.publishAsync('local/telemetry/temp.kitchen', JSON.stringify({ c: 21.5 }), { qos: 1 });

    expect(events.map((e) => e.what)).toEqual(['ingest called', 'ingest resolved', 'puback']);
    const [called, resolved, puback] = events;
    expect(puback!.at).toBeGreaterThanOrEqual(resolved!.at);
    expect(puback!.at - sentAt).toBeGreaterThanOrEqual(250);
    expect(resolved!.at - called!.at).toBeGreaterThanOrEqual(250);
    expect(ingested).toEqual([{ stream: 'temp.kitchen', payload: { c: 21.5 } }]);
    expect(broker.stats()).toEqual({
      clients: 1,
      accepted: 1,
      refused: 0,
      refusedAcknowledged: 0,
      oversizePackets: 0,
      connectionsRefused: 0,
      retained: 0,
      queued: 0,
      retainedDropped: 0,
      queuedDropped: 0,
    });
    // Packets were written (CONNACK, PUBACK) without mqtt-packet's cache of 65,536 number Buffers (6 MiB).
    expect(Object.keys(packetNumbers.cache)).toHaveLength(0);
  });

  it('does not acknowledge when ingest rejects: the client is disconnected and re-sends after reconnecting', async () => {
    let calls = 0;
    const ingested: Ingested[] = [];
    const { broker, url } = await startBroker(async (stream, payload) => {
      calls++;
      if (calls <= 2) throw new OutboxError('OUTBOX_FULL', 'the outbox is full');
      ingested.push({ stream, payload });
    });

    // No reconnects: the publish fails, no PUBACK ever arrives.
    const once = await client(url);
    await expectDisconnected(once, 'local/telemetry/temp', '{"c":1}');
    expect(broker.stats()).toMatchObject({ accepted: 0, refused: 1 });

    // With mqtt.js's reconnects the unacknowledged message is sent again and lands once the queue takes it.
    const retrying = await client(url, { reconnectPeriod: 100 });
    await retrying.publishAsync('local/telemetry/temp', '{"c":2}', { qos: 1 });
    expect(calls).toBe(3);
    expect(retrying.closes).toBe(1);
    expect(ingested).toEqual([{ stream: 'temp', payload: { c: 2 } }]);
    expect(broker.stats()).toMatchObject({ accepted: 1, refused: 2 });
  });

  it('routes local/# between local clients (module to module) without ingesting it', async () => {
    const { ingested, ingest } = recorder();
    const { url } = await startBroker(ingest);
    const sub = await client(url);
    await sub.subscribeAsync('local/sensors/#', { qos: 1 });
    const messages: Array<{ topic: string; payload: Buffer }> = [];
    sub.on('message', (topic, payload) => messages.push({ topic, payload }));

    const pub = await client(url);
    // Module-to-module payloads are opaque bytes, not JSON.
    await pub.publishAsync('local/sensors/kitchen/temp', Buffer.from([0xff, 0x00, 0x2a]), { qos: 1 });
    await until('the message at the subscriber', () => messages.length > 0, 5_000);
    expect(messages[0]!.topic).toBe('local/sensors/kitchen/temp');
    expect([...messages[0]!.payload]).toEqual([0xff, 0x00, 0x2a]);
    expect(ingested).toEqual([]);
  });

  it('refuses publishes outside local/ (and malformed telemetry topics, the shadow\'s topics but reported, local/errors/): acknowledged, the reason on local/errors/{id}, nothing routed or ingested', async () => {
    const { ingested, ingest } = recorder();
    const { broker, url } = await startBroker(ingest);
    const spy = await client(url);
    await spy.subscribeAsync(['#', 'iot/#'], { qos: 1 });
    const seen: string[] = [];
    spy.on('message', (topic) => seen.push(topic));

    // local/shadow/desired is the agent's alone; local/shadow/reported needs the shadow (off here).
    const topics = [
      'iot/device-0001/telemetry/temp',
      'iot/device-0001/status',
      'other',
      'local/telemetry/a/b',
      'local/telemetry/.hidden',
      'local/shadow/desired',
      'local/shadow/x',
      'local/shadow/reported',
      'local/errors/someone',
    ];
    for (const topic of topics) {
      const app = await client(url);
      const code = topic === 'local/shadow/reported' ? 'LOCAL_SHADOW_REFUSED' : topic.startsWith('local/telemetry/') ? 'LOCAL_STREAM_INVALID' : 'LOCAL_TOPIC_FORBIDDEN';
      await expectRefused(app, topic, '{"c":1}', code);
    }
    // QoS 2 the same way: PUBREC, PUBREL, PUBCOMP, and nothing routed.
    const q2 = await client(url);
    await expectRefused(q2, 'iot/device-0001/status', '{"c":2}', 'LOCAL_TOPIC_FORBIDDEN', 2);
    // Nobody may subscribe where acknowledged refusals go.
    const sneaky = await client(url);
    await expect(sneaky.subscribeAsync('$agent/#', { qos: 1 })).rejects.toThrow(/subscribe error/i);
    // A will toward the cloud is refused at CONNECT.
    await expect(client(url, { will: { topic: 'iot/device-0001/status', payload: Buffer.from('{"state":"offline"}'), qos: 1, retain: true } })).rejects.toThrow(/couldn't connect/i);
    await client(url, { will: { topic: 'local/apps/sensor/status', payload: Buffer.from('offline'), qos: 1, retain: false } });

    // The spy is still connected and saw none of it, only the reasons (local/errors/ is under local/).
    await spy.publishAsync('local/ping', 'x', { qos: 1 });
    await until('the spy sees its own local message', () => seen.includes('local/ping'), 5_000);
    expect(seen.filter((t) => !t.startsWith('local/errors/'))).toEqual(['local/ping']);
    expect(seen.filter((t) => t.startsWith('local/errors/'))).toHaveLength(topics.length + 1);
    expect(ingested).toEqual([]);
    expect(broker.stats()).toMatchObject({ refused: topics.length + 1, refusedAcknowledged: topics.length + 1 });
  });

  it('refuses a telemetry payload that is not JSON, not UTF-8, or too large', async () => {
    const { ingested, ingest } = recorder();
    const { broker, url } = await startBroker(ingest, { maxPayloadBytes: 64 });
    const bad: Array<string | Buffer> = ['not json', '', Buffer.from([0x22, 0xff, 0x22]), JSON.stringify({ pad: 'x'.repeat(100) })];
    for (const payload of bad) {
      const app = await client(url);
      await expectRefused(app, 'local/telemetry/temp', payload, typeof payload === 'string' && payload.length > 64 ? 'LOCAL_PAYLOAD_TOO_LARGE' : 'LOCAL_PAYLOAD_INVALID');
    }
    const good = await client(url);
    await good.publishAsync('local/telemetry/temp', '[1,2,3]', { qos: 1 });
    expect(ingested).toEqual([{ stream: 'temp', payload: [1, 2, 3] }]);
    expect(broker.stats()).toMatchObject({ accepted: 1, refused: bad.length });
  });

  it('refuses MQTT 5 clients at CONNECT (aedes speaks 3.1.1)', async () => {
    const { url } = await startBroker(recorder().ingest);
    await expect(client(url, { protocolVersion: 5 })).rejects.toThrow(/unacceptable protocol version/i);
  });

  it('stop() closes every client (connected or not), waits for ingest under way, and frees the port', async () => {
    let release: () => void = () => undefined;
    let ingestCalled = false;
    let ingestSettled = false;
    const { broker, url, port } = await startBroker(async () => {
      ingestCalled = true;
      await new Promise<void>((r) => (release = r));
      ingestSettled = true;
    });
    const a = await client(url);
    const b = await client(url);
    // A connection that never sends CONNECT is not an aedes client yet; stop() must close it too.
    const raw: Socket = tcpConnect(port, '127.0.0.1');
    raw.on('error', () => undefined);
    cleanup(() => void raw.destroy());
    const rawClosed = new Promise<void>((r) => raw.once('close', () => r()));
    await until('two clients', () => broker.stats().clients === 2, 5_000);

    let acked = false;
    a.publishAsync('local/telemetry/temp', '{"c":1}', { qos: 1 }).then(
      () => (acked = true),
      () => undefined,
    );
    await until('ingest under way', () => ingestCalled, 5_000);
    let stopDone = false;
    const stopped = broker.stop().then(() => (stopDone = true));
    await until('the clients closed', () => a.closes > 0 && b.closes > 0, 5_000);
    await delay(100);
    expect(stopDone).toBe(false); // still waiting for the ingest under way
    release();
    await stopped;
    expect(ingestSettled).toBe(true);

    await rawClosed;
    expect(acked).toBe(false);
    expect(pubacks(a)).toEqual([]);
    expect(broker.stats().clients).toBe(0);
    await expect(connectAsync(url, { reconnectPeriod: 0, connectTimeout: 2_000 }, false)).rejects.toThrow(/ECONNREFUSED/);
  });
});

describe('LocalBroker on a port bound early in the start (HeldListener)', () => {
  it('a client that connected while the agent was starting gets its CONNACK once the broker is up, then its PUBACKs', async () => {
    const held = await HeldListener.bind('127.0.0.1', 0);
    if (!held) throw new Error('could not bind a port');
    cleanup(() => held.close());
    // mqtt.js connects at once: accepted, not refused; its CONNECT waits in the held connection.
    const early = connectAsync(`mqtt://127.0.0.1:${held.port}`, { reconnectPeriod: 0, connectTimeout: 30_000 }, false);
    const { ingested, ingest } = recorder();
    const broker = new LocalBroker({ port: 0, ingest, logger: silentLogger() });
    const { port } = await broker.start(held);
    cleanup(() => broker.stop());
    expect(port).toBe(held.port);
    const c = await early;
    cleanup(() => c.endAsync(true));
    await c.publishAsync('local/telemetry/early', JSON.stringify({ v: 1 }), { qos: 1 });
    expect(ingested).toEqual([{ stream: 'early', payload: { v: 1 } }]);
  });
});

/** An MQTT 3.1.1 client on a raw socket: it acknowledges nothing unless told to. */
async function rawClient(port: number, clientId: string): Promise<{ socket: Socket; packets: mqttPacket.Packet[]; send: (p: mqttPacket.Packet) => void }> {
  const socket = tcpConnect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  cleanup(() => void socket.destroy());
  const packets: mqttPacket.Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  parser.on('packet', (p) => packets.push(p));
  socket.on('data', (chunk) => parser.parse(chunk));
  const send = (p: mqttPacket.Packet) => void socket.write(mqttPacket.generate(p));
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: false, clientId, keepalive: 60 });
  await until('the CONNACK', () => packets.some((p) => p.cmd === 'connack'), 5_000);
  return { socket, packets, send };
}

describe('LocalBroker with its persistence (the agent database)', () => {
  const dirs = tempDirs();
  afterEach(() => dirs.cleanup());

  /** A broker on the database file at `path`, as the agent builds it at each start. */
  async function brokerOn(path: string): Promise<{ broker: LocalBroker; persistence: BrokerPersistence; port: number; store: Store }> {
    const store = openStore(path);
    const persistence = new BrokerPersistence({ db: store.db, clock: { now: () => Date.now() }, logger: silentLogger(), maxRetained: 10, maxQueuedPerClient: 10 });
    const broker = new LocalBroker({ port: 0, ingest: recorder().ingest, logger: silentLogger(), persistence });
    const { port } = await broker.start();
    cleanup(async () => {
      await broker.stop();
      if (store.db.open) store.close();
    });
    return { broker, persistence, port, store };
  }

  it('acknowledges a retained publish only once it is stored: one the database refuses gets no PUBACK, and the reason', async () => {
    const path = join(dirs.make(), 'agent.db');
    const { broker, port, store } = await brokerOn(path);
    const first = await client(`mqtt://127.0.0.1:${port}`);
    await first.publishAsync('local/config/a', 'kept', { qos: 1, retain: true });
    expect(broker.stats().retained).toBe(1);
    // A real SQLite failure on the next retained write (as a full disk or a damaged page would give).
    store.db.exec("CREATE TRIGGER no_retained BEFORE INSERT ON broker_retained BEGIN SELECT RAISE(ABORT, 'no room for it'); END");
    const watcher = await client(`mqtt://127.0.0.1:${port}`);
    const reasons: string[] = [];
    watcher.on('message', (_t, p) => reasons.push(p.toString()));
    await watcher.subscribeAsync('local/errors/retainer', { qos: 1 });
    const app = await client(`mqtt://127.0.0.1:${port}`, { clientId: 'retainer' });
    await expectDisconnected(app, 'local/config/b', 'lost', { retain: true });
    await until('the reason', () => reasons.length > 0, 5_000);
    expect(JSON.parse(reasons[0]!)).toMatchObject({ topic: 'local/config/b', code: 'LOCAL_BROKER_WRITE_FAILED', acknowledged: false });
    expect(JSON.parse(reasons[0]!).reason).toMatch(/no room for it/);
    expect(broker.stats()).toMatchObject({ retained: 1, refused: 1, refusedAcknowledged: 0 });
  });

  it('re-sends a QoS 1 message in flight to a persistent session (sent, never acknowledged) after a restart, with its message id', async () => {
    const path = join(dirs.make(), 'agent.db');
    const first = await brokerOn(path);
    const raw = await rawClient(first.port, 'slow-app');
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'local/inflight/#', qos: 1 }] });
    await until('the SUBACK', () => raw.packets.some((p) => p.cmd === 'suback'), 5_000);
    const pub = await client(`mqtt://127.0.0.1:${first.port}`);
    const publishes = (c: { packets: mqttPacket.Packet[] }) => c.packets.filter((p): p is mqttPacket.IPublishPacket => p.cmd === 'publish');
    // m0 is acknowledged (its id is free again); m1 is not: after the restart it must come with its own id, not the first free one.
    await pub.publishAsync('local/inflight/a', 'm0', { qos: 1 });
    await until('m0 at the raw client', () => publishes(raw).length === 1, 5_000);
    raw.send({ cmd: 'puback', messageId: publishes(raw)[0]!.messageId! });
    await until('m0 acknowledged', () => first.broker.stats().queued === 0, 5_000);
    await pub.publishAsync('local/inflight/a', 'm1', { qos: 1 });
    await until('m1 at the raw client', () => publishes(raw).length === 2, 5_000);
    const sent = publishes(raw)[1]!;
    expect(sent.messageId).not.toBe(publishes(raw)[0]!.messageId);
    raw.socket.destroy(); // no PUBACK
    await first.broker.stop();
    first.store.close();

    const second = await brokerOn(path);
    expect(second.broker.stats().queued).toBe(1);
    const back = await rawClient(second.port, 'slow-app');
    expect(back.packets[0]).toMatchObject({ cmd: 'connack', sessionPresent: true });
    await until('the PUBLISH again', () => publishes(back).length > 0, 5_000);
    const again = publishes(back)[0]!;
    expect(publishes(back)).toHaveLength(1);
    expect({ topic: again.topic, payload: again.payload.toString(), messageId: again.messageId, qos: again.qos }).toEqual({ topic: 'local/inflight/a', payload: 'm1', messageId: sent.messageId, qos: 1 });
    back.send({ cmd: 'puback', messageId: again.messageId! });
    await until('nothing queued', () => second.broker.stats().queued === 0, 5_000);
  });
});
