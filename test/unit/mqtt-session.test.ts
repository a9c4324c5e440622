import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultConfig, type AgentConfig } from '../../src/config/schema.js';
import { MqttSession, type PublishOutcome, type PublishRequest } from '../../src/mqtt/session.js';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { ConnectionMonitor } from '../../src/resilience/connection-monitor.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import type { Store } from '../../src/store/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { fakeConnect, type FakeMqttClient } from '../helpers/fake-mqtt-client.js';
import { captureLogger } from '../helpers/logger.js';
import { openStore } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/** The MQTT session as its users see it: settings checks, publish outcomes, stats, events, start and stop. */

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

const URL_ = 'mqtt://broker.test:1883';
const topics = deviceTopics('dev-1');

/** Lets queued microtasks (the window's pump) and the store's group commit run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Harness {
  session: MqttSession;
  store: Store;
  clock: FakeClock;
  clients: FakeMqttClient[];
  records: () => Record<string, unknown>[];
  /** Starts the session on the harness's signal; `running.done` turns true once it is down. */
  start(): { done: boolean };
  /** Aborts the signal given to `start`. */
  abort(): void;
  /** Starts the session and lets the broker accept the first connection. */
  connected(): Promise<FakeMqttClient>;
}

function harness(o: { mqtt?: Partial<AgentConfig['mqtt']>; floorMs?: () => number } = {}): Harness {
  const clock = new FakeClock();
  const log = captureLogger('debug');
  const store = openStore(join(dirs.make(), 'agent.db'));
  const random = (): number => 0.5;
  const clients: FakeMqttClient[] = [];
  const session = new MqttSession({
    config: { mqtt: { ...defaultConfig().mqtt, url: URL_, protocolVersion: 5, ...o.mqtt }, uuid: 'dev-1' },
    store,
    monitor: new ConnectionMonitor({ clock, channels: ['mqtt'] }),
    backoff: new Backoff({ minMs: 1_000, maxMs: 8_000, strategy: 'none', clock, random }),
    wakeup: new Wakeup({ clock, random, staggerMaxMs: 0 }),
    ...(o.floorMs ? { floorMs: o.floorMs } : {}),
    clock,
    random,
    logger: log.logger,
    connect: fakeConnect(clients),
  });
  const ctl = new AbortController();
  cleanup(() => store.close());
  const h: Harness = {
    session,
    store,
    clock,
    clients,
    records: log.records,
    start() {
      const running = { done: false };
      const p = session.start(ctl.signal);
      void p.then(() => (running.done = true));
      cleanup(async () => {
        await session.stop();
        await p;
      });
      return running;
    },
    abort: () => ctl.abort(),
    async connected() {
      h.start();
      await settle();
      const c = clients[clients.length - 1]!;
      c.accept();
      await settle();
      return c;
    },
  };
  return h;
}

/** `session.publish`, with its outcome readable once it has come. */
function track<T>(p: Promise<T>): { outcome: T | undefined; settled: boolean } {
  const t: { outcome: T | undefined; settled: boolean } = { outcome: undefined, settled: false };
  void p.then((o) => {
    t.outcome = o;
    t.settled = true;
  });
  return t;
}

// pino's levels, as the JSON log writes them.
const INFO = 30;
const WARN = 40;
const ERROR = 50;

const req = (id: string, payload: unknown = { id }): PublishRequest => ({ topic: topics.events, payload: JSON.stringify(payload), id });

describe('MqttSession: settings it cannot work with', () => {
  const build = (mqtt: Partial<AgentConfig['mqtt']>): MqttSession => harness({ mqtt }).session;

  it.each<[string, Partial<AgentConfig['mqtt']>, string]>([
    ['no broker URL', { url: '' }, 'mqtt.url: expected an mqtt:// or mqtts:// broker URL, got nothing'],
    ['an http URL', { url: 'http://broker.test' }, 'mqtt.url: expected an mqtt:// or mqtts:// URL, got http://'],
    ['a websocket URL', { url: 'ws://broker.test' }, 'mqtt.url: expected an mqtt:// or mqtts:// URL, got ws://'],
    ['a certificate without its key', { url: 'mqtts://broker.test', certFile: '/etc/d.crt' }, 'mqtt.certFile is set but mqtt.keyFile is not: mutual TLS needs both the client certificate and its key'],
    ['a key without its certificate', { url: 'mqtts://broker.test', keyFile: '/etc/d.key' }, 'mqtt.keyFile is set but mqtt.certFile is not: mutual TLS needs both the client certificate and its key'],
    ['no in-flight slot', { maxInflight: 0 }, 'mqtt.maxInflight: expected an integer >= 1, got 0'],
    ['a bad URL in the list, by its index', { url: undefined, urls: ['mqtt://a.test', 'ws://b.test'] }, 'mqtt.urls.1: expected an mqtt:// or mqtts:// URL, got ws://'],
    ['both mqtt.url and mqtt.urls', { url: 'mqtt://a.test', urls: ['mqtt://b.test'] }, 'mqtt.urls: expected mqtt.url or mqtt.urls, not both'],
    ['a fraction of a slot', { maxInflight: 2.5 }, 'mqtt.maxInflight: expected an integer >= 1, got 2.5'],
  ])('refuses %s, naming the setting', (_what, mqtt, message) => {
    expect(() => build(mqtt)).toThrow(expect.objectContaining({ code: 'MQTT_CONFIG_INVALID', message }));
  });

  it('takes mqtt:// and mqtts:// URLs, mutual TLS with both files, and a single in-flight slot', () => {
    expect(() => build({ url: 'mqtt://broker.test', maxInflight: 1 })).not.toThrow();
    expect(() => build({ url: 'mqtts://broker.test:8883', certFile: '/etc/d.crt', keyFile: '/etc/d.key' })).not.toThrow();
  });
});

describe('MqttSession: a list of brokers', () => {
  it('starts with the preferred broker and says so in its stats, without the credentials of its URL', () => {
    const h = harness({ mqtt: { url: undefined, urls: ['mqtt://dev:s3cret@a.test:1883', 'mqtts://b.test:8883'] } });
    expect(h.session.stats()).toMatchObject({ broker: 'mqtt://a.test:1883', brokerIndex: 0, brokers: 2 });
    expect(JSON.stringify(h.session.stats())).not.toContain('s3cret');
  });

  it('says TLS files go unused only when no broker of the list is mqtts://', () => {
    const warned = (urls: string[]): boolean => harness({ mqtt: { url: undefined, urls, caFile: '/etc/ca.pem' } }).records().some((r) => String(r.msg).includes('are set but no URL of mqtt.urls is mqtts://'));
    expect(warned(['mqtt://a.test', 'mqtt://b.test'])).toBe(true);
    expect(warned(['mqtt://a.test', 'mqtts://b.test'])).toBe(false);
  });
});

describe('MqttSession: TLS files without TLS', () => {
  const warning = 'mqtt: mqtt.caFile/certFile are set but mqtt.url is mqtt:// (no TLS); they are not used';
  const warnings = (h: Harness): unknown[] => h.records().filter((r) => r.msg === warning);

  it('warns that a CA file goes unused with an mqtt:// URL, without the credentials of the URL', () => {
    const h = harness({ mqtt: { url: 'mqtt://dev:s3cret@broker.test:1883', caFile: '/etc/ca.pem' } });
    expect(warnings(h)).toEqual([expect.objectContaining({ level: WARN, url: 'mqtt://broker.test:1883' })]);
    expect(JSON.stringify(h.records())).not.toContain('s3cret');
  });

  it('warns as well for a client certificate', () => {
    expect(warnings(harness({ mqtt: { certFile: '/etc/d.crt', keyFile: '/etc/d.key' } }))).toHaveLength(1);
  });

  it('says nothing with an mqtts:// URL, nor without TLS files', () => {
    expect(warnings(harness({ mqtt: { url: 'mqtts://broker.test:8883', caFile: '/etc/ca.pem', certFile: '/etc/d.crt', keyFile: '/etc/d.key' } }))).toEqual([]);
    expect(warnings(harness())).toEqual([]);
  });
});

describe('MqttSession: publishing', () => {
  it('resolves a publish with the PUBACK and counts it in the stats', async () => {
    const h = harness();
    const c = await h.connected();
    const out = track(h.session.publish(req('m1')));
    await settle();
    expect(c.published.map((p) => p.topic)).toEqual([topics.status, topics.events]);
    // The birth (online, on the status topic) is in flight too.
    expect(h.session.stats()).toMatchObject({ inflight: 2, queued: 0, acknowledged: 0 });
    c.pubackTopic(topics.status);
    await settle();
    expect(out.settled).toBe(false);
    c.pubackTopic(topics.events);
    await settle();
    expect(out.outcome).toEqual({ ok: true });
    expect(h.session.stats()).toMatchObject({ connected: true, subscribed: true, inflight: 0, acknowledged: 2, rejected: 0, lastConnectAt: h.clock.now(), sessionPresent: false });
  });

  it('answers a batch once every message has its answer, in request order, whatever order the PUBACKs come in', async () => {
    const h = harness();
    const c = await h.connected();
    const batch = track(h.session.publishMany([req('a'), req('b', { id: 'b', n: 2 }), req('c', { id: 'c', n: 3 })]));
    await settle();
    const id = (n: string): number => c.published.find((p) => (JSON.parse(p.payload) as { id: string }).id === n)!.messageId;
    c.puback(id('c'), 0x97);
    c.puback(id('b'), 0x87);
    await settle();
    expect(batch.settled).toBe(false);
    c.puback(id('a'));
    await settle();
    expect(batch.outcome).toEqual<PublishOutcome[]>([
      { ok: true },
      { ok: false, permanent: true, reasonCode: 0x87, reason: 'Not authorized (0x87)' },
      { ok: false, permanent: false, reasonCode: 0x97, reason: 'Quota exceeded (0x97)' },
    ]);
    expect(h.session.stats()).toMatchObject({ inflight: 1, acknowledged: 1, rejected: 2 });
  });

  it('answers an empty batch at once', async () => {
    const h = harness();
    const batch = track(h.session.publishMany([]));
    await settle();
    expect(batch.outcome).toEqual([]);
  });

  it('keeps a publish waiting while there is no connection, and answers it when the session stops', async () => {
    const h = harness();
    const running = h.start();
    await settle();
    const one = track(h.session.publish(req('w1')));
    const many = track(h.session.publishMany([req('w2')]));
    await settle();
    expect(h.session.stats()).toMatchObject({ connected: false, queued: 2, inflight: 0 });
    expect(one.settled || many.settled).toBe(false);
    await h.session.stop();
    const stopped = { ok: false, permanent: false, reason: 'the MQTT session stopped' };
    expect(one.outcome).toEqual(stopped);
    expect(many.outcome).toEqual([stopped]);
    await settle();
    expect(running.done).toBe(true);
    expect(h.session.connected).toBe(false);
  });

  it('says why a publish was lost when the database could not store it', async () => {
    const h = harness();
    const c = await h.connected();
    h.store.db.exec("CREATE TEMP TRIGGER full_disk BEFORE INSERT ON main.mqtt_inflight BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END");
    const out = track(h.session.publish(req('d1')));
    await settle();
    await settle();
    const error = 'could not write MQTT outgoing packets to the database: database or disk is full';
    expect(c.published.map((p) => p.topic)).toContain(topics.events);
    expect(out.outcome).toEqual({ ok: false, permanent: false, reason: error });
    expect(h.session.stats().lastError).toBe(error);
  });

  it('logs an incoming packet the database could not store', async () => {
    const h = harness();
    const c = await h.connected();
    h.store.db.exec("CREATE TEMP TRIGGER full_disk BEFORE INSERT ON main.mqtt_inflight BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END");
    // mqtt.js keeps an incoming QoS 2 PUBLISH in its incoming store until the PUBREL.
    c.options.incomingStore!.put({ cmd: 'publish', topic: topics.targetNotify, payload: Buffer.from('{}'), qos: 2, retain: false, dup: false, messageId: 7 }, () => undefined);
    await settle();
    const error = 'could not write MQTT incoming packets to the database: database or disk is full';
    expect(h.records().filter((r) => r.level === ERROR)).toEqual([expect.objectContaining({ err: error, msg: `mqtt: ${error}` })]);
  });
});

describe('MqttSession: start and stop', () => {
  it('starts once', async () => {
    const h = harness();
    h.start();
    expect(() => h.session.start(new AbortController().signal)).toThrow(expect.objectContaining({ code: 'ALREADY_STARTED', message: 'the MQTT session was already started' }));
    await settle();
    expect(h.clients).toHaveLength(1);
  });

  it('stops when the signal given to start aborts, answering every waiting publish', async () => {
    const h = harness();
    const running = h.start();
    await settle();
    const out = track(h.session.publish(req('s1')));
    h.abort();
    await settle();
    await settle();
    expect(running.done).toBe(true);
    expect(h.clients[0]!.closed).toBe(true);
    expect(out.outcome).toEqual({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
  });

  it('takes nothing more once stopped, and asks the broker for the last will on the way out', async () => {
    const h = harness();
    const c = await h.connected();
    await h.session.stop();
    expect(c.ends[0]).toEqual([false, { reasonCode: 0x04 }]);
    const late = track(h.session.publish(req('late')));
    await settle();
    expect(late.outcome).toEqual({ ok: false, permanent: false, reason: 'the MQTT session is stopped' });
  });

  it('waits out the offline floor before the next attempt when it is longer than the backoff', async () => {
    const h = harness({ floorMs: () => 60_000 });
    h.start();
    await settle();
    h.clients[0]!.fail(Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:1883'), { code: 'ECONNREFUSED' }));
    await settle();
    expect(h.records().find((r) => r.level === INFO && String(r.msg).startsWith('mqtt: could not connect'))?.msg).toBe(
      'mqtt: could not connect: connection refused (ECONNREFUSED); retrying in 60000 ms',
    );
    await h.clock.advance(59_999);
    expect(h.clients).toHaveLength(1);
    await h.clock.advance(1);
    expect(h.clients).toHaveLength(2);
    expect(h.session.stats()).toMatchObject({ connected: false, connectionFailures: 1, lastError: 'connection refused (ECONNREFUSED)' });
  });
});

describe('MqttSession: events', () => {
  it('says connected, passes on messages, says disconnected, and counts the reconnect', async () => {
    const h = harness();
    const seen: string[] = [];
    h.session.on('connected', (e) => seen.push(`connected reconnect=${e.reconnect} sessionPresent=${e.sessionPresent} at=${e.at}`));
    h.session.on('message', (m) => seen.push(`message ${m.kind} ${JSON.stringify(m.payload)} retained=${m.retained}`));
    h.session.on('disconnected', (e) => seen.push(`disconnected "${e.error}" after ${e.connectedForMs} ms`));
    const t0 = h.clock.now();
    const c = await h.connected();
    c.deliver(topics.targetNotify, '{"version":3}', true);
    await h.clock.advance(5_000);
    c.end(true);
    await settle();
    await h.clock.advance(1_000);
    h.clients[1]!.accept(true);
    expect(seen).toEqual([
      `connected reconnect=false sessionPresent=false at=${t0}`,
      'message target-notify {"version":3} retained=true',
      'disconnected "the connection closed" after 5000 ms',
      `connected reconnect=true sessionPresent=true at=${t0 + 6_000}`,
    ]);
    expect(h.session.stats()).toMatchObject({ connected: true, reconnects: 1, connectionFailures: 1, sessionPresent: true, since: t0 + 6_000 });
  });

  it('logs a listener that throws, and still tells the other listeners', async () => {
    const h = harness();
    const got: unknown[] = [];
    h.session.on('message', () => {
      throw new Error('handler broke');
    });
    h.session.on('message', (m) => got.push(m.payload));
    const c = await h.connected();
    c.deliver(topics.jobsNotify, '{"job":1}');
    expect(got).toEqual([{ job: 1 }]);
    expect(h.records().filter((r) => r.level === ERROR)).toEqual([
      expect.objectContaining({ err: 'handler broke', event: 'message', msg: `a listener of the MQTT session's "message" event failed: handler broke` }),
    ]);
  });
});
