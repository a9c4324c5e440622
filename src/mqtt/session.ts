import { RetryPolicy } from '../resilience/retry-policy.js';
import type { AgentConfig } from '../config/schema.js';
import type { Backoff } from '../resilience/backoff.js';
import type { ConnectionMonitor } from '../resilience/connection-monitor.js';
import type { Store } from '../store/store.js';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { WakeableSleep } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import { mqttBrokerUrls } from '../config/schema.js';
import { BrokerRotation, brokerName } from './brokers.js';
import { ConnectionLife, type ConnectionLifeDeps, type MqttSessionConfig } from './connection-life.js';
import { PROTOCOL_KV_KEY, protocolKvKey, ProtocolNegotiator, type ProtocolInfo } from './negotiation.js';
import { PublishWindow, type PublishOutcome, type PublishRequest } from './publish-window.js';
import type { MqttSessionEvents } from './session-events.js';
import { SqliteMqttStore, type StoreDurability } from './sqlite-store.js';
import { deviceTopics, type DeviceTopics } from './topics.js';

export type { MqttSessionConfig } from './connection-life.js';
export type { PublishOutcome, PublishRequest } from './publish-window.js';
export type { ConnectedEvent, DisconnectedEvent, IncomingMessage, MqttSessionEvents } from './session-events.js';

/**
 * The agent's MQTT session: one persistent session (`clean: false`, MQTT 5 session expiry) with the
 * broker, QoS 1 both ways, its in-flight packets in the agent's SQLite database. A thin front over
 * its two parts:
 *
 * - **the connection's life** (`connection-life.ts`): its own reconnect loop, not mqtt.js's
 *   (`reconnectPeriod: 0`): every attempt builds a fresh mqtt.js client on the same stores, waits
 *   between attempts through the retry policy like every loop (the project's backoff, the offline
 *   floor, cut short by the connectivity probe's wake-up, which also resets the backoff), and
 *   reports every outcome to the connection monitor (channel `mqtt`: `connect`,
 *   `ping`, `subscribe`). The watchdog: nothing received for 1.5 x keep-alive tears the connection
 *   down. Birth and will: `{ state: 'online' }` retained on `iot/{uuid}/status` after every
 *   connect, `{ state: 'offline' }` the last will on the same topic. Subscriptions to target/notify,
 *   jobs/notify and shadow/desired are made again after every connect, session present or not;
 *   their messages arrive as `message` events.
 * - **the publish window** (`publish-window.ts`): at most `mqtt.maxInflight` QoS 1 publishes are
 *   unacknowledged at once, further `publish` calls wait in memory for a slot, in call order;
 *   `publish` resolves when the broker answers (PUBACK), across reconnects and restarts (see
 *   `publish`), and marks `publish` on the monitor.
 */

export interface MqttSessionDeps {
  config: MqttSessionConfig;
  /** The agent's database, opened with `MQTT_MIGRATION` among its migrations. */
  store: Store;
  monitor: Pick<ConnectionMonitor, 'markSuccess' | 'markFailure' | 'channelStatus'>;
  /** The one backoff (`backoffFromSettings`), for this session alone. */
  backoff: Pick<Backoff, 'failure' | 'success' | 'reset' | 'holdRemainingMs' | 'respread' | 'maxMs'>;
  /** Backoff waits sleep here, so the connectivity probe can end them early. */
  wakeup: WakeableSleep;
  /**
   * The offline floor of the reconnect loop's retry policy (see `RetryPolicyOptions.floorMs`): the
   * agent's, for channel `mqtt`. None unless given.
   */
  floorMs?: () => number;
  /** Refused credentials are tried again after half to all of this; the backoff's cap unless given. */
  refusedRetryMaxMs?: number;
  /** Whether the wall clock is synced (TLS errors name the clock when it is not). Default: synced. */
  clockSynced?: () => boolean;
  clock: Clock;
  /** Spreads the retries after refused credentials, so a fleet whose key was revoked does not come back in step. */
  random?: Random;
  logger: Logger;
  /**
   * Commit strength of the in-flight table (see `StoreDurability`). Default `process`: a message in
   * flight survives a kill -9 without an fsync per batch, which would cap throughput at about
   * maxInflight / (fsync time + round trip). A power cut may lose the newest in-flight rows; the
   * outbox still has those messages (durable, unacknowledged) and publishes them again after boot,
   * so nothing is lost, and a copy the broker already had is deduplicated by its id. `database`
   * commits as `store.synchronous` says.
   */
  inflightDurability?: StoreDurability;
  /**
   * How long `stop` waits for in-flight PUBACKs and the DISCONNECT before closing the socket.
   * Default 2000 ms.
   */
  stopTimeoutMs?: number;
  /** mqtt.js's `connect`; a test passes a fake client. */
  connect?: ConnectionLifeDeps['connect'];
}

export interface MqttSessionStats {
  connected: boolean;
  /** The broker granted every subscription on the current connection. */
  subscribed: boolean;
  /** Wall time the current state (connected or not) began; null before the first attempt. */
  since: number | null;
  /** QoS 1 publishes sent (or stored to be re-sent) and not yet acknowledged. */
  inflight: number;
  /** Publishes waiting for an in-flight slot or a connection. */
  queued: number;
  /** Connections established after the first one. */
  reconnects: number;
  /** Connection attempts that failed, and connections lost. */
  connectionFailures: number;
  lastError: string | null;
  /** Wall time of the latest CONNACK that accepted us. */
  lastConnectAt: number | null;
  /** From the latest CONNACK; null before the first. */
  sessionPresent: boolean | null;
  /** Publishes the broker acknowledged. */
  acknowledged: number;
  /** Publishes the broker refused (PUBACK reason code >= 0x80). */
  rejected: number;
  /** Incoming messages dropped (not JSON). */
  droppedIncoming: number;
  /** mqtt.protocolVersion and the version negotiated with the broker in use (see negotiation.ts). */
  protocol: ProtocolInfo;
  /** The broker in use (or being tried), without credentials. */
  broker: string;
  /** Its place in the list of brokers (`mqtt.urls`; `mqtt.url` is the only one): 0 is the preferred. */
  brokerIndex: number;
  /** How many brokers there are to choose from. */
  brokers: number;
}

const stopped = (): PublishOutcome => ({ ok: false, permanent: false, reason: 'the MQTT session stopped' });

export class MqttSession extends TypedEmitter<MqttSessionEvents> {
  readonly topics: DeviceTopics;
  private readonly log: Logger;
  private readonly window: PublishWindow;
  private readonly incoming: SqliteMqttStore;
  private readonly brokers: BrokerRotation;
  private readonly life: ConnectionLife;
  private readonly controller = new AbortController();
  private started = false;
  private done: Promise<void> = Promise.resolve();

  constructor(deps: MqttSessionDeps) {
    super();
    const m = deps.config.mqtt;
    const urls = checkedConfig(m);
    this.topics = deviceTopics(deps.config.uuid);
    this.log = deps.logger;
    this.brokers = new BrokerRotation(
      urls.map((url, i) => {
        const name = brokerName(url);
        const kvKey = i === 0 ? PROTOCOL_KV_KEY : protocolKvKey(name);
        return { url, name, negotiator: new ProtocolNegotiator({ setting: m.protocolVersion, broker: name, kvKey, kv: deps.store, clock: deps.clock, logger: deps.logger }) };
      }),
    );
    const durability = deps.inflightDurability ?? 'process';
    this.window = new PublishWindow({
      db: deps.store.db,
      maxInflight: m.maxInflight,
      durability,
      monitor: deps.monitor,
      clock: deps.clock,
      logger: deps.logger,
      onStoreError: (message) => this.life.recordError(message),
    });
    this.incoming = new SqliteMqttStore(deps.store.db, 'incoming', {
      clock: deps.clock,
      durability,
      onError: (err) => this.log.error({ err: err.message }, `mqtt: ${err.message}`),
    });
    this.life = new ConnectionLife({
      config: deps.config,
      brokers: this.brokers,
      topics: this.topics,
      window: this.window,
      stores: { outgoing: this.window.outgoing, incoming: this.incoming },
      monitor: deps.monitor,
      retry: new RetryPolicy({ backoff: deps.backoff, sleeper: deps.wakeup, clock: deps.clock, ...(deps.floorMs ? { floorMs: deps.floorMs } : {}) }),
      refusedRetryMaxMs: deps.refusedRetryMaxMs ?? deps.backoff.maxMs,
      clock: deps.clock,
      random: deps.random,
      logger: deps.logger,
      stopTimeoutMs: deps.stopTimeoutMs,
      connect: deps.connect,
      ...(deps.clockSynced ? { clockSynced: deps.clockSynced } : {}),
      events: {
        connected: (e) => this.emit('connected', e),
        disconnected: (e) => this.emit('disconnected', e),
        message: (e) => this.emit('message', e),
      },
    });
    if (urls.every((u) => u.protocol === 'mqtt:') && (m.caFile || m.certFile)) {
      const names = urls.map(brokerName);
      if (m.urls) this.log.warn({ urls: names }, 'mqtt: mqtt.caFile/certFile are set but no URL of mqtt.urls is mqtts:// (no TLS); they are not used');
      else this.log.warn({ url: names[0] }, 'mqtt: mqtt.caFile/certFile are set but mqtt.url is mqtt:// (no TLS); they are not used');
    }
    this.window.restore();
  }

  get connected(): boolean {
    return this.life.connected;
  }

  stats(): MqttSessionStats {
    const c = this.life.stats();
    const w = this.window.counts();
    return {
      connected: c.connected,
      subscribed: c.subscribed,
      since: c.since,
      inflight: w.inflight,
      queued: w.queued,
      reconnects: c.reconnects,
      connectionFailures: c.connectionFailures,
      lastError: c.lastError,
      lastConnectAt: c.lastConnectAt,
      sessionPresent: c.sessionPresent,
      acknowledged: w.acknowledged,
      rejected: w.rejected,
      droppedIncoming: c.droppedIncoming,
      protocol: this.brokers.current.negotiator.info(),
      broker: c.broker,
      brokerIndex: c.brokerIndex,
      brokers: this.brokers.brokers.length,
    };
  }

  /**
   * Sends `payload` to `topic` at QoS 1 and resolves with the broker's answer. It never rejects.
   *
   * **At least once, with a bounded number of copies.** The promise stays pending while the link is
   * down: a message that was written and not acknowledged stays in the SQLite store, and the next
   * connection (of this process or, after a crash, of the next one) sends it again by itself. The
   * caller does not re-publish on a disconnect, so a flapping link never multiplies copies: each
   * connection that ends before the PUBACK costs at most one extra copy on the wire (QoS 1 cannot
   * avoid that one), and receivers dedupe on the message's `id`.
   *
   * **Same id, same message.** A publish whose `id` is still in flight (in this process, or found in
   * the store after a restart) does not send anything new: it waits for that message's PUBACK (its
   * topic and payload are not compared: an id names one message). A message that was answered while
   * nobody waited for it (re-sent from the store before the caller asked, or abandoned by an aborted
   * caller) leaves its answer for the next publish of its id. So the outbox, which after a crash
   * re-publishes what it had not seen acknowledged, does not double the copies the store re-sends.
   *
   * Outcomes: `{ ok: true }` on a PUBACK (reason code < 0x80); `{ ok: false, permanent: true }` when
   * the broker refuses the message itself (see `reasons.ts`: park it, do not retry it as it is);
   * `{ ok: false, permanent: false }` when the message is no longer being sent and a later retry may
   * succeed: a transient refusal (0x97 quota exceeded...), `signal` aborted or the session stopped
   * (if it was already sent it stays in the store, and re-publishing the same id later joins it),
   * or the database could not store it.
   */
  publish(req: PublishRequest): Promise<PublishOutcome> {
    return new Promise<PublishOutcome>((resolve) => this.window.submit(req, resolve));
  }

  /**
   * `publish` for each request, resolved once every one of them has its outcome (in request order).
   * One promise for the batch: an outbox drain hands the session hundreds of messages at a time.
   */
  publishMany(reqs: readonly PublishRequest[]): Promise<PublishOutcome[]> {
    return new Promise<PublishOutcome[]>((resolve) => {
      // Stryker disable next-line ArrayDeclaration: equivalent: every index is assigned before the array is handed out
      const outcomes = new Array<PublishOutcome>(reqs.length);
      let left = reqs.length;
      if (left === 0) resolve(outcomes);
      reqs.forEach((req, i) =>
        this.window.submit(req, (o) => {
          outcomes[i] = o;
          if (--left === 0) resolve(outcomes);
        }),
      );
    });
  }

  /**
   * Runs the session until `signal` aborts or `stop` is called; resolves once it is down. Never
   * rejects: failures are connection attempts to retry, reported to the monitor and the log.
   */
  start(signal: AbortSignal): Promise<void> {
    if (this.started) throw new AgentError('ALREADY_STARTED', 'the MQTT session was already started');
    this.started = true;
    const run = AbortSignal.any([signal, this.controller.signal]);
    this.done = this.life.run(run).finally(() => this.window.close(stopped()));
    return this.done;
  }

  /**
   * Stops gracefully: nothing more is published, waiting callers get `{ ok: false, permanent:
   * false }`, in-flight PUBACKs get `stopTimeoutMs` to arrive, and the client ends. With MQTT 5 the
   * DISCONNECT asks the broker to publish the last will (reason 0x04), so the retained status says
   * `offline`; with 3.1.1 the socket is closed without DISCONNECT for the same effect. The store
   * keeps whatever is unacknowledged for the next start.
   */
  async stop(): Promise<void> {
    this.window.close(stopped());
    this.controller.abort();
    await this.done;
    this.window.outgoing.flush();
    this.incoming.flush();
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.log.error({ err: errorMessage(err), event }, `a listener of the MQTT session's "${event}" event failed: ${errorMessage(err)}`);
  }
}

/** The brokers (`mqtt.urls`, else `mqtt.url`) as URLs, once the settings the session cannot work without are checked. */
function checkedConfig(m: AgentConfig['mqtt']): URL[] {
  if (m.url && m.urls) throw new AgentError('MQTT_CONFIG_INVALID', 'mqtt.urls: expected mqtt.url or mqtt.urls, not both');
  const urls = mqttBrokerUrls(m);
  if (urls.length === 0) throw new AgentError('MQTT_CONFIG_INVALID', 'mqtt.url: expected an mqtt:// or mqtts:// broker URL, got nothing');
  if (urls.length > 16) throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.urls: expected at most 16 brokers, got ${urls.length}`);
  const checked = urls.map((u, i) => checkedUrl(m.urls ? `mqtt.urls.${i}` : 'mqtt.url', u));
  checkedRest(m);
  return checked;
}

function checkedUrl(key: string, value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new AgentError('MQTT_CONFIG_INVALID', `${key}: expected an mqtt:// or mqtts:// URL, got ${JSON.stringify(value)}`);
  }
  if (url.protocol !== 'mqtt:' && url.protocol !== 'mqtts:') {
    throw new AgentError('MQTT_CONFIG_INVALID', `${key}: expected an mqtt:// or mqtts:// URL, got ${url.protocol}//`);
  }
  return url;
}

/** The settings besides the brokers. */
function checkedRest(m: AgentConfig['mqtt']): void {
  if (Boolean(m.certFile) !== Boolean(m.keyFile)) {
    const [set, missing] = m.certFile ? ['certFile', 'keyFile'] : ['keyFile', 'certFile'];
    throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.${set} is set but mqtt.${missing} is not: mutual TLS needs both the client certificate and its key`);
  }
  if (!Number.isInteger(m.maxInflight) || m.maxInflight < 1) {
    throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.maxInflight: expected an integer >= 1, got ${String(m.maxInflight)}`);
  }
}
