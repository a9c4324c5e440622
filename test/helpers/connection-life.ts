import type { IClientOptions, MqttClient } from 'mqtt';
import { EventEmitter } from 'node:events';
import { PassThrough } from 'node:stream';
import { afterEach } from 'vitest';
import { defaultConfig, mqttBrokerUrls, type AgentConfig } from '../../src/config/schema.js';
import { BrokerRotation, brokerName } from '../../src/mqtt/brokers.js';
import { ConnectionLife, type ConnectionLifeDeps } from '../../src/mqtt/connection-life.js';
import { ProtocolNegotiator, type ProtocolSetting } from '../../src/mqtt/negotiation.js';
import type { BrokerLimits, PublishLink, PublishOutcome, WindowCounts } from '../../src/mqtt/publish-window.js';
import type { ConnectedEvent, DisconnectedEvent, IncomingMessage } from '../../src/mqtt/session-events.js';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { ConnectionMonitor } from '../../src/resilience/connection-monitor.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import type { Logger } from '../../src/util/logger.js';
import { FakeClock } from './fake-clock.js';
import { silentLogger } from './logger.js';

/** An mqtt.js client reduced to what the connection's life uses; the test plays the broker. */
export class FakeClient extends EventEmitter {
  readonly stream = new PassThrough();
  readonly ends: Array<[boolean | undefined, unknown]> = [];
  readonly subscriptions: string[] = [];
  /** SUBACKs not yet sent, when the harness holds them. */
  readonly pendingSubacks: Array<() => void> = [];
  closed = false;

  constructor(
    readonly options: IClientOptions,
    private readonly holdSubacks = false,
    private readonly suback: SubackAnswer = (topics) => ({ err: null, granted: topics.map((topic) => ({ topic, qos: 1 })) }),
    /** A graceful end (DISCONNECT first) leaves the socket open, as with a broker that does not close it. */
    private readonly lingerOnGracefulEnd = false,
    /** `end` leaves the close to the test (`drop`), as a socket that takes its time to close. */
    private readonly holdClose = false,
    /** The broker URL the client connects to. */
    readonly url = '',
  ) {
    super();
  }

  subscribe(topics: Record<string, unknown>, cb: (err: Error | null, granted: Array<{ topic: string; qos: number }> | undefined) => void): void {
    this.subscriptions.push(...Object.keys(topics));
    const answer = this.suback(Object.keys(topics));
    const suback = (): void => cb(answer.err, answer.granted);
    if (this.holdSubacks) this.pendingSubacks.push(suback);
    else suback();
  }

  end(force?: boolean, opts?: unknown): this {
    this.ends.push([force, opts]);
    if ((force !== true && this.lingerOnGracefulEnd) || this.holdClose) return this;
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

  /** The socket closes with no error and no packet saying why. */
  drop(): void {
    this.closed = true;
    this.emit('close');
  }
}

export type SubackAnswer = (topics: string[]) => { err: Error | null; granted: Array<{ topic: string; qos: number }> | undefined };

export const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

export interface Harness {
  life: ConnectionLife;
  clock: FakeClock;
  clients: FakeClient[];
  wakeup: Wakeup;
  monitor: ConnectionMonitor;
  failures: Array<{ operation: string; error: string; kind: string | undefined }>;
  /** The options of each retry.afterFailure call (how the session told the policy what ended). */
  retryOptions: Array<{ timedOut?: boolean; phased?: boolean } | undefined>;
  successes: string[];
  attached: PublishLink[];
  /** What reached the publish window: PUBACKs, the broker's limits, births with their callbacks. */
  window: {
    pubacks: Array<[number | undefined, number | undefined, string | undefined]>;
    limits: BrokerLimits[];
    births: Array<{ message: { id: string; topic: string; payload: Buffer; retain: boolean }; done: (outcome: PublishOutcome) => void }>;
    stopped: boolean;
  };
  events: { connected: ConnectedEvent[]; disconnected: DisconnectedEvent[]; message: IncomingMessage[] };
  start(): void;
  /** The run loop, as `start` left it: resolves when the loop ends. */
  running(): Promise<void>;
  stop(): Promise<void>;
}

const controllers: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const stop of controllers.splice(0)) await stop();
});

/** The agent's offline floor, shortened: one attempt a minute while the channel is offline for want of a connection. */
export const FLOOR_MS = 60_000;

export interface HarnessOptions {
  mqtt?: Partial<AgentConfig['mqtt']>;
  limits?: ConnectionLifeDeps['config']['limits'];
  random?: number;
  /** The negotiator's `mqtt.protocolVersion`. Default 5. */
  protocol?: ProtocolSetting;
  logger?: Logger;
  /** Replaces the retry policy's wait between attempts. */
  wait?: ConnectionLifeDeps['retry']['wait'];
  /** mqtt.js's `connect` throws this instead of returning a client. */
  connectThrows?: Error;
  holdSubacks?: boolean;
  suback?: SubackAnswer;
  lingerOnGracefulEnd?: boolean;
  holdClose?: boolean;
  stopTimeoutMs?: number;
  /** Whether the wall clock is synced (default: the life's own default, synced). */
  clockSynced?: () => boolean;
  /** The device key and the credentials registration issued, as the session is given them. */
  credentials?: Pick<ConnectionLifeDeps['config'], 'apiKey' | 'issued'>;
}

export function harness(o: HarnessOptions = {}): Harness {
  const clock = new FakeClock();
  const random = (): number => o.random ?? 0.5;
  const config = defaultConfig();
  const mqtt = { ...config.mqtt, ...(o.mqtt?.urls ? {} : { url: 'mqtt://broker.test:1883' }), protocolVersion: o.protocol ?? 5, ...o.mqtt };
  const monitor = new ConnectionMonitor({ clock, channels: ['mqtt'] });
  const failures: Harness['failures'] = [];
  const successes: string[] = [];
  const markFailure = monitor.markFailure.bind(monitor);
  monitor.markFailure = (channel, operation, error, kind) => {
    failures.push({ operation, error, kind });
    markFailure(channel, operation, error, kind);
  };
  const markSuccess = monitor.markSuccess.bind(monitor);
  monitor.markSuccess = (channel, operation) => {
    successes.push(operation);
    markSuccess(channel, operation);
  };
  const wakeup = new Wakeup({ clock, random, staggerMaxMs: 0 });
  const clients: FakeClient[] = [];
  const attached: PublishLink[] = [];
  const counts: WindowCounts = { inflight: 2, queued: 3, acknowledged: 0, rejected: 0 };
  const win: Harness['window'] = { pubacks: [], limits: [], births: [], stopped: false };
  const events: Harness['events'] = { connected: [], disconnected: [], message: [] };
  const noStore = { put: () => undefined, get: () => undefined, del: () => undefined, createStream: () => undefined, close: () => undefined } as never;
  const retry = new RetryPolicy({
    backoff: new Backoff({ minMs: 1_000, maxMs: 8_000, strategy: 'none', clock, random }),
    sleeper: wakeup,
    clock,
    floorMs: () => (monitor.channelStatus('mqtt') === 'offline' && monitor.lastFailureKind('mqtt') === 'transport' ? FLOOR_MS : 0),
  });
  if (o.wait) retry.wait = o.wait;
  const retryOptions: Harness['retryOptions'] = [];
  const afterFailure = retry.afterFailure.bind(retry);
  retry.afterFailure = (err, opts) => {
    retryOptions.push(opts);
    return afterFailure(err, opts);
  };
  const life = new ConnectionLife({
    config: { mqtt, uuid: 'device-1', limits: o.limits, ...o.credentials },
    brokers: new BrokerRotation(
      mqttBrokerUrls(mqtt).map((u) => {
        const url = new URL(u);
        const name = brokerName(url);
        return { url, name, negotiator: new ProtocolNegotiator({ setting: o.protocol ?? 5, broker: name, kv: { getKv: () => undefined, setKv: () => undefined }, clock, logger: silentLogger() }) };
      }),
    ),
    topics: deviceTopics('device-1'),
    window: {
      setBrokerLimits: (l) => void win.limits.push(l),
      attach: (link) => void attached.push(link),
      detach: () => undefined,
      onPuback: (id, rc, reason) => void win.pubacks.push([id, rc, reason]),
      sendAhead: (message, done) => void win.births.push({ message, done }),
      counts: () => counts,
      get stopped() {
        return win.stopped;
      },
    },
    stores: { outgoing: noStore, incoming: noStore },
    monitor,
    retry,
    refusedRetryMaxMs: 8_000,
    clock,
    random,
    logger: o.logger ?? silentLogger(),
    stopTimeoutMs: o.stopTimeoutMs,
    ...(o.clockSynced ? { clockSynced: o.clockSynced } : {}),
    events: {
      connected: (e) => void events.connected.push(e),
      disconnected: (e) => void events.disconnected.push(e),
      message: (m) => void events.message.push(m),
    },
    connect: (url, options) => {
      if (o.connectThrows) throw o.connectThrows;
      const c = new FakeClient(options, o.holdSubacks, o.suback, o.lingerOnGracefulEnd, o.holdClose, url);
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
    retryOptions,
    successes,
    attached,
    window: win,
    events,
    start: () => {
      running = life.run(ctl.signal);
    },
    running: () => running,
    stop: async () => {
      ctl.abort();
      await running;
    },
  };
  controllers.push(h.stop);
  return h;
}

export const refused = (): Error => Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1883'), { code: 'ECONNREFUSED' });
