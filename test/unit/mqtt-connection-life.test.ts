import { ErrorWithReasonCode, type IClientOptions, type MqttClient } from 'mqtt';
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { defaultConfig, type AgentConfig } from '../../src/config/schema.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { ConnectionLife, type ConnectionLifeDeps } from '../../src/mqtt/connection-life.js';
import { ProtocolNegotiator } from '../../src/mqtt/negotiation.js';
import type { PublishLink, WindowCounts } from '../../src/mqtt/publish-window.js';
import type { ConnectedEvent, DisconnectedEvent, IncomingMessage } from '../../src/mqtt/session-events.js';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { ConnectionMonitor } from '../../src/resilience/connection-monitor.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

/** An mqtt.js client reduced to what the connection's life uses; the test plays the broker. */
class FakeClient extends EventEmitter {
  readonly stream = new PassThrough();
  readonly ends: Array<[boolean | undefined, unknown]> = [];
  readonly subscriptions: string[] = [];
  closed = false;

  constructor(readonly options: IClientOptions) {
    super();
  }

  subscribe(topics: Record<string, unknown>, cb: (err: Error | null, granted: Array<{ topic: string; qos: number }>) => void): void {
    this.subscriptions.push(...Object.keys(topics));
    cb(null, Object.keys(topics).map((topic) => ({ topic, qos: 1 })));
  }

  end(force?: boolean, opts?: unknown): this {
    this.ends.push([force, opts]);
    if (!this.closed) {
      this.closed = true;
      queueMicrotask(() => this.emit('close'));
    }
    return this;
  }

  /** The broker accepts the CONNECT; mqtt.js then re-sends what it stored and says `connect`. */
  accept(properties: Record<string, number> = {}, sessionPresent = false): void {
    this.emit('packetreceive', { cmd: 'connack', reasonCode: 0, sessionPresent, properties });
    this.emit('connect', { cmd: 'connack', sessionPresent });
  }

  /** The CONNECT fails as mqtt.js reports it: an error, then the close. */
  fail(err: Error): void {
    this.emit('error', err);
    this.end(true);
  }
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Harness {
  life: ConnectionLife;
  clock: FakeClock;
  clients: FakeClient[];
  wakeup: Wakeup;
  monitor: ConnectionMonitor;
  failures: Array<{ operation: string; error: string; kind: string | undefined }>;
  attached: PublishLink[];
  events: { connected: ConnectedEvent[]; disconnected: DisconnectedEvent[]; message: IncomingMessage[] };
  start(): void;
  stop(): Promise<void>;
}

const controllers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const stop of controllers.splice(0)) await stop();
});

/** The agent's offline floor, shortened: one attempt a minute while the channel is offline for want of a connection. */
const FLOOR_MS = 60_000;

function harness(o: { mqtt?: Partial<AgentConfig['mqtt']>; limits?: ConnectionLifeDeps['config']['limits']; random?: number } = {}): Harness {
  const clock = new FakeClock();
  const random = (): number => o.random ?? 0.5;
  const config = defaultConfig();
  const mqtt = { ...config.mqtt, url: 'mqtt://broker.test:1883', protocolVersion: 5 as const, ...o.mqtt };
  const monitor = new ConnectionMonitor({ clock, channels: ['mqtt'] });
  const failures: Harness['failures'] = [];
  const markFailure = monitor.markFailure.bind(monitor);
  monitor.markFailure = (channel, operation, error, kind) => {
    failures.push({ operation, error, kind });
    markFailure(channel, operation, error, kind);
  };
  const wakeup = new Wakeup({ clock, random, staggerMaxMs: 0 });
  const clients: FakeClient[] = [];
  const attached: PublishLink[] = [];
  const counts: WindowCounts = { inflight: 0, queued: 0, acknowledged: 0, rejected: 0 };
  const events: Harness['events'] = { connected: [], disconnected: [], message: [] };
  const noStore = { put: () => undefined, get: () => undefined, del: () => undefined, createStream: () => undefined, close: () => undefined } as never;
  const life = new ConnectionLife({
    config: { mqtt, uuid: 'device-1', limits: o.limits },
    url: new URL(mqtt.url),
    topics: deviceTopics('device-1'),
    window: {
      setBrokerLimits: () => undefined,
      attach: (link) => void attached.push(link),
      detach: () => undefined,
      onPuback: () => undefined,
      sendAhead: () => undefined,
      counts: () => counts,
      stopped: false,
    },
    stores: { outgoing: noStore, incoming: noStore },
    negotiator: new ProtocolNegotiator({ setting: 5, broker: 'mqtt://broker.test:1883', kv: { getKv: () => undefined, setKv: () => undefined }, clock, logger: silentLogger() }),
    monitor,
    retry: new RetryPolicy({
      backoff: new Backoff({ minMs: 1_000, maxMs: 8_000, strategy: 'none', clock, random }),
      sleeper: wakeup,
      clock,
      floorMs: () => (monitor.channelStatus('mqtt') === 'offline' && monitor.lastFailureKind('mqtt') === 'transport' ? FLOOR_MS : 0),
    }),
    refusedRetryMaxMs: 8_000,
    clock,
    random,
    logger: silentLogger(),
    events: {
      connected: (e) => void events.connected.push(e),
      disconnected: (e) => void events.disconnected.push(e),
      message: (m) => void events.message.push(m),
    },
    connect: (_url, options) => {
      const c = new FakeClient(options);
      clients.push(c);
      return c as unknown as MqttClient;
    },
  });
  const ctl = new AbortController();
  let running: Promise<void> = Promise.resolve();
  const h: Harness = {
    life,
    clock,
    clients,
    wakeup,
    monitor,
    failures,
    attached,
    events,
    start: () => {
      running = life.run(ctl.signal);
    },
    stop: async () => {
      ctl.abort();
      await running;
    },
  };
  controllers.push(h.stop);
  return h;
}

const refused = (): Error => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1883'), { code: 'ECONNREFUSED' });

describe('ConnectionLife: a connection', () => {
  it('subscribes, hands the ready connection to the window, marks the monitor and says connected', async () => {
    const h = harness();
    h.start();
    await settle();
    expect(h.clients).toHaveLength(1);
    expect(h.clients[0]!.options).toMatchObject({ protocolVersion: 5, clean: false, reconnectPeriod: 0 });
    h.clients[0]!.accept();
    expect(h.life.connected).toBe(true);
    expect(h.clients[0]!.subscriptions).toEqual(deviceTopics('device-1').subscriptions.map((s) => s.topic));
    expect(h.attached).toHaveLength(1);
    expect(h.attached[0]!.ready).toBe(true);
    expect(h.events.connected).toEqual([{ sessionPresent: false, reconnect: false, at: h.clock.now() }]);
    expect(h.monitor.channelStatus('mqtt')).toBe('online');
    expect(h.life.stats()).toMatchObject({ connected: true, subscribed: true, reconnects: 0, connectionFailures: 0, sessionPresent: false });
  });

  it('closes a connection silent for 1.5 x keep-alive; the loss counts against ping', async () => {
    const h = harness({ mqtt: { keepAliveSeconds: 10 } });
    h.start();
    await settle();
    h.clients[0]!.accept();
    await h.clock.advance(14_999);
    expect(h.clients[0]!.closed).toBe(false);
    await h.clock.advance(1);
    await settle();
    expect(h.clients[0]!.closed).toBe(true);
    expect(h.failures[0]).toMatchObject({ operation: 'ping', kind: 'transport' });
    expect(h.failures[0]!.error).toMatch(/^connection lost: nothing from the broker for 15000 ms/);
    expect(h.events.disconnected).toEqual([expect.objectContaining({ connectedForMs: 15_000 })]);
    expect(h.life.connected).toBe(false);
  });

  it('passes on the JSON messages of the topics the agent handles, and drops the rest', async () => {
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    const topics = deviceTopics('device-1');
    c.emit('message', topics.subscriptions[0]!.topic, Buffer.from('{"v":1}'), { retain: true });
    c.emit('message', topics.subscriptions[0]!.topic, Buffer.from('not json'), { retain: false });
    c.emit('message', 'iot/device-1/elsewhere', Buffer.from('{}'), { retain: false });
    expect(h.events.message).toEqual([{ kind: topics.subscriptions[0]!.kind, topic: topics.subscriptions[0]!.topic, payload: { v: 1 }, retained: true, at: h.clock.now() }]);
    expect(h.life.stats().droppedIncoming).toBe(1);
  });

  it('asks the broker to publish the will at a stop (MQTT 5 DISCONNECT 0x04)', async () => {
    const h = harness();
    h.start();
    await settle();
    h.clients[0]!.accept();
    await h.stop();
    expect(h.clients[0]!.ends[0]).toEqual([false, { reasonCode: 0x04 }]);
    expect(h.failures).toEqual([]);
  });
});

describe('ConnectionLife: between attempts', () => {
  it('waits the backoff after a failed attempt, and the probe ends the wait and starts the backoff over', async () => {
    const h = harness();
    h.start();
    await settle();
    h.clients[0]!.fail(refused());
    await settle();
    expect(h.failures).toEqual([{ operation: 'connect', error: expect.stringContaining('ECONNREFUSED'), kind: 'transport' }]);
    await h.clock.advance(999);
    expect(h.clients).toHaveLength(1);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(2);

    // The second failure waits the doubled step; the probe wakes the loop before it is over.
    h.clients[1]!.fail(refused());
    await h.clock.advance(1_000);
    expect(h.clients).toHaveLength(2);
    expect(h.wakeup.wake('the broker port accepts connections')).toBe(1);
    await h.clock.advance(0);
    await settle();
    expect(h.clients).toHaveLength(3);
    // Back to the first step: a connection that is lost at once waits 1 s again.
    h.clients[2]!.accept();
    h.clients[2]!.fail(refused());
    await h.clock.advance(1_000);
    await settle();
    expect(h.clients).toHaveLength(4);
    expect(h.life.stats()).toMatchObject({ connectionFailures: 3, reconnects: 0 });
  });

  it('while the channel is offline for want of a connection, tries once per offline floor; the probe is the way back', async () => {
    const h = harness();
    h.start();
    for (const wait of [1_000, 2_000]) {
      await settle();
      h.clients.at(-1)!.fail(refused());
      await h.clock.advance(wait);
    }
    await settle();
    // The third failure in a row takes the channel offline: the floor, not the backoff's 4 s.
    h.clients[2]!.fail(refused());
    await settle();
    expect(h.monitor.channelStatus('mqtt')).toBe('offline');
    await h.clock.advance(FLOOR_MS - 1);
    expect(h.clients).toHaveLength(3);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(4);

    h.clients[3]!.fail(refused());
    await h.clock.advance(10_000);
    expect(h.clients).toHaveLength(4);
    h.wakeup.wake('the broker port accepts connections');
    await h.clock.advance(0);
    await settle();
    expect(h.clients).toHaveLength(5);
    h.clients[4]!.accept();
    expect(h.monitor.channelStatus('mqtt')).toBe('online');
  });

  it('retries refused credentials after half to all of the backoff cap, as an answer, not a network fault', async () => {
    const h = harness({ random: 0.5 });
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.emit('packetreceive', { cmd: 'connack', reasonCode: 0x87, sessionPresent: false });
    c.fail(new ErrorWithReasonCode('Connection refused: Not authorized', 0x87));
    await settle();
    expect(h.failures).toHaveLength(1);
    expect(h.failures[0]).toMatchObject({ operation: 'connect', kind: 'answer' });
    expect(h.failures[0]!.error).toMatch(/the broker refused the credentials/);
    // 8 s cap x (0.5 + 0.5 x 0.5)
    await h.clock.advance(5_999);
    expect(h.clients).toHaveLength(1);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(2);
  });

  it('connects with a clean session after two connections in a row were ended by a packet over the limit', async () => {
    const h = harness({ limits: { maxCloudResponseBytes: 1_000, maxJsonDepth: 64 } });
    h.start();
    // A PUBLISH header announcing 5,000 bytes: the connection ends before the body comes.
    const oversize = Buffer.from([0x30, 0x88, 0x27]);
    for (let i = 0; i < 2; i++) {
      await settle();
      const c = h.clients[i]!;
      expect(c.options.clean).toBe(false);
      c.accept();
      c.stream.write(oversize);
      await settle();
      expect(c.closed).toBe(true);
      await h.clock.advance(8_000);
    }
    await settle();
    expect(h.clients).toHaveLength(3);
    expect(h.clients[2]!.options.clean).toBe(true);
    expect(h.life.stats().droppedIncoming).toBe(2);
    expect(h.life.stats().lastError).toMatch(/a packet of 5003 bytes, over limits.maxCloudResponseBytes \(1000\)/);
    // Once the clean session is up, the next connection resumes the stored session again.
    h.clients[2]!.accept();
    h.clients[2]!.fail(refused());
    await h.clock.advance(8_000);
    await settle();
    expect(h.clients[3]!.options.clean).toBe(false);
  });
});
