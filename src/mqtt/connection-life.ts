import { connect, ErrorWithReasonCode, type IClientOptions, type IStore, type MqttClient, type Packet } from 'mqtt';
import type { RetryPolicy } from '../resilience/retry-policy.js';
import type { AgentConfig } from '../config/schema.js';
import type { ConnectionMonitor, FailureKind } from '../resilience/connection-monitor.js';
import { isAbortError, type Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { clockCertProblem } from '../util/network-errors.js';
import type { Logger } from '../util/logger.js';
import { systemRandom, type Random } from '../util/random.js';
import { clientOptions } from './client-options.js';
import { IncomingGuard } from './incoming.js';
import { returnToPreferred, type Broker, type BrokerRotation } from './brokers.js';
import { authRefusalMessage, classifyRefusal, type MqttVersion, type Refusal } from './negotiation.js';
import type { PublishWindow } from './publish-window.js';
import { describeConnectionError, hex, reasonName } from './reasons.js';
import { watchSilence } from './watchdog.js';
import type { ConnectedEvent, DisconnectedEvent, IncomingMessage } from './session-events.js';
import type { DeviceTopics } from './topics.js';

/**
 * The life of the session's connection to the broker: one attempt at a time, to one broker of the
 * rotation (`brokers.ts`; the next after every failure), each with a fresh
 * mqtt.js client on the same stores (mqtt.js's own reconnect is off), the CONNACK, the watchdog, the
 * subscriptions and the birth of every connection, and the wait between attempts, which is the
 * retry policy's as for every loop of the agent (the one backoff, the offline floor, the probe's
 * wake-ups). Every outcome is marked on the connection monitor (channel `mqtt`: `connect`, `ping`,
 * `subscribe`).
 *
 * What is published goes through the publish window: this class hands it each ready connection.
 */

export interface MqttSessionConfig {
  mqtt: AgentConfig['mqtt'];
  /** Device id: the default client id and user name, and the `{uuid}` of every topic. */
  uuid: string;
  /** Device API key: the default password. A function is read at each attempt (a key registration brings). */
  apiKey?: string | (() => string | undefined) | undefined;
  /** MQTT credentials issued at registration, read at each attempt (config's mqtt.username/password win). */
  issued?: () => { username: string; password: string } | undefined;
  /** Bounds on what the cloud may send: `maxCloudResponseBytes` per packet, `maxJsonDepth`. Defaults: the schema's. */
  limits?: Pick<AgentConfig['limits'], 'maxCloudResponseBytes' | 'maxJsonDepth'>;
}

/** What the connection's life tells the session (which raises them as its events). */
export interface ConnectionEvents {
  connected(e: ConnectedEvent): void;
  disconnected(e: DisconnectedEvent): void;
  message(m: IncomingMessage): void;
}

export interface ConnectionLifeDeps {
  config: MqttSessionConfig;
  /** The brokers (`mqtt.urls` or `mqtt.url`, checked), each with its protocol negotiator. */
  brokers: BrokerRotation;
  topics: DeviceTopics;
  window: Pick<PublishWindow, 'setBrokerLimits' | 'attach' | 'detach' | 'onPuback' | 'sendAhead' | 'counts' | 'stopped'>;
  stores: { outgoing: IStore; incoming: IStore };
  monitor: Pick<ConnectionMonitor, 'markSuccess' | 'markFailure' | 'channelStatus'>;
  /** The waits between attempts: a backoff of this session alone, woken by the `mqtt` channel's probe. */
  retry: Pick<RetryPolicy, 'afterFailure' | 'afterSuccess' | 'wait' | 'waitUnwoken'>;
  /** The cap of that backoff: refused credentials are retried after half to all of it. */
  refusedRetryMaxMs: number;
  clock: Clock;
  /** Spreads the retries after refused credentials, so a fleet whose key was revoked does not come back in step. */
  random?: Random | undefined;
  logger: Logger;
  /** How long `stop` waits for in-flight PUBACKs and the DISCONNECT before closing the socket. Default 2000 ms. */
  stopTimeoutMs?: number | undefined;
  events: ConnectionEvents;
  /** mqtt.js's `connect`; a test passes a fake client. */
  connect?: (url: string, options: IClientOptions) => MqttClient;
  /** Whether the wall clock is synced (TLS errors name the clock when it is not). Default: synced. */
  clockSynced?: () => boolean;
}

export interface ConnectionStats {
  connected: boolean;
  subscribed: boolean;
  since: number | null;
  reconnects: number;
  connectionFailures: number;
  lastError: string | null;
  lastConnectAt: number | null;
  sessionPresent: boolean | null;
  droppedIncoming: number;
  /** The broker in use, or being tried, without credentials. */
  broker: string;
  /** Its place in mqtt.urls: 0 is the preferred one. */
  brokerIndex: number;
}

interface ConnectionEnd {
  established: boolean;
  error: string;
  refusal?: Refusal;
  /** The CONNACK's refusal code (MQTT 5 reason code or 3.1.1 return code), when it refused. */
  refusalCode?: number;
  /** The attempt lasted mqtt.connectTimeoutMs without a CONNACK: the backoff counts from its start. */
  timedOut?: boolean;
  /** An established connection given up for silence (the keep-alive): a moment the device's own, not the fleet's. */
  silent?: boolean;
  /** The negotiator falls back to the other version: try again at once. */
  retryNow?: boolean;
  /** Closed to move back to the preferred broker, which accepted a check: connect to it at once. */
  handover?: boolean;
}

/** Per-connection state, for the one mqtt.js client of that connection. */
interface Connection {
  client: MqttClient;
  broker: Broker;
  version: MqttVersion;
  /** Connected with a clean session (to drop a packet the broker kept re-sending). */
  clean: boolean;
  /** The CONNACK's refusal code, when it refused. */
  refusalCode?: number;
  /** TLS refused the broker's certificate as not yet valid by an unsynced clock: the clock's fault, not the network's. */
  clockProblem?: boolean;
  /** The broker's end accepted the TCP connection: the way to it is open. */
  reached?: boolean;
  /** CONNACK accepted. */
  established: boolean;
  /** The 'connect' event: mqtt.js has re-sent the stored packets; new publishes may go. */
  ready: boolean;
  /** SUBACK granted every subscription. */
  subscribed: boolean;
  lastError: string | null;
  /** Which monitor operation the loss counts against. */
  lossOperation: 'connect' | 'ping';
  /** Monotonic time of the latest packet from the broker. */
  lastRx: number;
  establishedAtMono: number;
  /** Monotonic time the attempt started. */
  startedAtMono: number;
  /** Stops the watchdog of this connection (and its return to the preferred broker). */
  watchdog: AbortController;
  /** Being closed to move back to the preferred broker. */
  handover?: boolean;
}

/** Marks of success at most this often while the channel is online: one per PINGRESP would be noise. */
const SUCCESS_MARK_INTERVAL_MS = 1_000;

export class ConnectionLife {
  private readonly deps: ConnectionLifeDeps;
  private readonly log: Logger;
  private readonly incoming: IncomingGuard;
  private readonly connectClient: (url: string, options: IClientOptions) => MqttClient;
  private conn: Connection | undefined;
  private connections = 0;
  private birthSeq = 0;
  private lastPingMark = -Infinity;
  /** The refusal of the credentials was logged as a warning in this outage (reset when a connection is accepted). */
  private authRefusalSaid = false;
  private readonly counters = {
    since: null as number | null,
    reconnects: 0,
    connectionFailures: 0,
    lastError: null as string | null,
    lastConnectAt: null as number | null,
    sessionPresent: null as boolean | null,
  };

  constructor(deps: ConnectionLifeDeps) {
    this.deps = deps;
    this.log = deps.logger;
    this.connectClient = deps.connect ?? connect;
    this.incoming = new IncomingGuard({ topics: deps.topics, limits: deps.config.limits, clock: deps.clock, logger: deps.logger });
  }

  /** Up, and mqtt.js has re-sent what was in flight. */
  get connected(): boolean {
    return this.conn?.ready === true;
  }

  stats(): ConnectionStats {
    const c = this.counters;
    return {
      connected: this.connected,
      subscribed: this.conn?.ready === true && this.conn.subscribed,
      since: c.since,
      reconnects: c.reconnects,
      connectionFailures: c.connectionFailures,
      lastError: c.lastError,
      lastConnectAt: c.lastConnectAt,
      sessionPresent: c.sessionPresent,
      droppedIncoming: this.incoming.droppedIncoming,
      broker: this.deps.brokers.current.name,
      brokerIndex: this.deps.brokers.currentIndex,
    };
  }

  /** The latest error of the session, from wherever it came (the publish window's store). */
  recordError(message: string): void {
    this.counters.lastError = message;
  }

  /** Connects, and connects again after every end, until `signal` aborts. Never rejects. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let end: ConnectionEnd;
      try {
        end = await this.connection(signal);
      } catch (err) {
        // mqtt.js refused the options outright; counted and retried like any failed attempt.
        end = { established: false, error: errorMessage(err) };
        this.noteFailure('connect', end.error);
      }
      if (signal.aborted) break;
      if (end.retryNow) continue;
      if (end.handover) {
        this.deps.brokers.backToPreferred();
        continue;
      }
      if (!(await this.afterFailure(end, signal))) break;
    }
  }

  /**
   * An attempt failed or a connection was lost: the next broker, after the one backoff. Refused
   * credentials stay refused until someone fixes them: once every broker in turn refused them, the
   * retry is at the backoff's cap. The failure is on the monitor already (as `auth`), so the offline
   * floor sees it. False when the session is stopping.
   */
  private async afterFailure(end: ConnectionEnd, signal: AbortSignal): Promise<boolean> {
    this.counters.connectionFailures++;
    const auth = end.refusal === 'auth';
    const failed = this.deps.brokers.current.name;
    const allRefused = this.deps.brokers.failed(auth);
    const next = this.deps.brokers.current.name;
    const delayMs = allRefused ? this.deps.refusedRetryMaxMs * (0.5 + 0.5 * (this.deps.random ?? systemRandom)()) : this.deps.retry.afterFailure(undefined, { timedOut: end.timedOut === true, phased: end.silent === true });
    // A refusal of the credentials is a warning once per outage (until a connection is accepted); its repeats are debug.
    const level = auth ? (this.authRefusalSaid ? 'debug' : 'warn') : end.established ? 'warn' : 'info';
    if (auth) this.authRefusalSaid = true;
    // With one broker the log says as before; with several, which one failed and which is next.
    const several = next !== failed;
    const then = several ? `trying ${next} in ${Math.round(delayMs)} ms` : `retrying in ${Math.round(delayMs)} ms`;
    this.log[level](
      { url: failed, ...(several ? { next } : {}), error: end.error, retryInMs: Math.round(delayMs), ...(auth ? { refusal: 'auth', reasonCode: end.refusalCode } : {}) },
      `mqtt: ${end.established ? 'connection lost' : 'could not connect'}${several ? ` (${failed})` : ''}: ${end.error}; ${then}${allRefused ? ' (the long backoff: retrying sooner cannot fix credentials)' : ''}`,
    );
    return pause(this.deps, delayMs, signal, !allRefused);
  }

  /** The mqtt.js options of the next attempt, or why there are none. */
  private attemptOptions(version: MqttVersion, url: URL): { options: IClientOptions; clean: boolean } | { error: string } {
    try {
      const c = this.deps.config;
      // A broker that re-sends a packet over the limit with the stored session would cut the agent off for
      // good (3.1.1 cannot refuse one packet): after two such closes in a row, a clean session drops it.
      const clean = this.incoming.cleanSessionNeeded;
      if (clean) this.log.warn({ closes: this.incoming.oversizeStreak }, 'mqtt: the broker keeps re-sending a packet over limits.maxCloudResponseBytes with the stored session; connecting with a clean session to drop it (messages the broker held for the device are lost; retained ones come back on subscribe)');
      const stores = { outgoingStore: this.deps.stores.outgoing, incomingStore: this.deps.stores.incoming };
      const apiKey = typeof c.apiKey === 'function' ? c.apiKey() : c.apiKey;
      const options = clientOptions({ mqtt: c.mqtt, uuid: c.uuid, apiKey, issued: c.issued?.(), url, version, clean, statusTopic: this.deps.topics.status, now: this.deps.clock.now(), maxPacketBytes: this.incoming.maxPacketBytes, ...stores });
      return { options, clean };
    } catch (err) {
      return { error: errorMessage(err) };
    }
  }

  /** One connection attempt and, when it succeeds, the connection's life. Resolves when it is over. */
  private connection(signal: AbortSignal): Promise<ConnectionEnd> {
    const broker = this.deps.brokers.current;
    const version = broker.negotiator.version();
    const attempt = this.attemptOptions(version, broker.url);
    if ('error' in attempt) {
      this.noteFailure('connect', attempt.error);
      return Promise.resolve({ established: false, error: attempt.error });
    }
    const { options, clean } = attempt;
    const client = this.connectClient(broker.url.href, options);
    const conn: Connection = {
      client,
      broker,
      version,
      clean,
      established: false,
      ready: false,
      subscribed: false,
      lastError: null,
      lossOperation: 'connect',
      lastRx: this.deps.clock.monotonic(),
      establishedAtMono: 0,
      startedAtMono: this.deps.clock.monotonic(),
      watchdog: new AbortController(),
    };
    this.conn = conn;
    if (this.counters.since === null) this.counters.since = this.deps.clock.now();
    return new Promise<ConnectionEnd>((resolve) => this.follow(conn, options, signal, resolve));
  }

  /** Listens to the connection's client until it closes. */
  private follow(conn: Connection, options: IClientOptions, signal: AbortSignal, resolve: (end: ConnectionEnd) => void): void {
    const client = conn.client;
    const onAbort = (): void => this.shutdownClient(conn);
    // Stryker disable next-line ObjectLiteral,BooleanLiteral: a signal fires 'abort' once, and the close removes the listener
    signal.addEventListener('abort', onAbort, { once: true });
    const timeoutMs = this.deps.config.mqtt.connectTimeoutMs;
    // mqtt.js times the CONNACK out itself (connectTimeout); this is the backstop that keeps the
    // loop going should an attempt ever hang without closing.
    const guard = setTimeout(() => {
      if (conn.established) return;
      conn.lastError ??= `no CONNACK from the broker within ${timeoutMs} ms (mqtt.connectTimeoutMs)`;
      client.end(true);
    }, timeoutMs + 1_000);
    // Never left without an error listener: a late error of a finished client must not crash the process.
    client.on('error', (err) => this.onClientError(conn, err));
    client.on('packetreceive', (packet) => this.onPacket(conn, packet));
    client.on('connect', (connack) => this.onReady(conn, connack.sessionPresent));
    client.on('message', (topic, payload, packet) => {
      const message = this.incoming.accept(topic, payload, packet.retain);
      if (message) this.deps.events.message(message);
    });
    this.incoming.watch(client.stream as NodeJS.ReadableStream | undefined, (error) => {
      conn.lastError = error;
      client.end(true);
    });
    (client.stream as NodeJS.EventEmitter | undefined)?.once('connect', () => (conn.reached = true));
    client.on('disconnect', (packet) => {
      const rc = packet.reasonCode ?? 0;
      conn.lastError = `the broker closed the connection: ${reasonName(rc)} (${hex(rc)})${rc === 0x8e ? ` — another client is using client id ${String(options.clientId)}` : ''}`;
      this.log.warn({ reasonCode: rc }, `mqtt: ${conn.lastError}`);
    });
    client.once('close', () => {
      clearTimeout(guard);
      signal.removeEventListener('abort', onAbort);
      resolve(this.onClose(conn, signal));
    });
  }

  /** The connection is over: why, for the loop, the monitor and the `disconnected` event. */
  private onClose(conn: Connection, signal: AbortSignal): ConnectionEnd {
    conn.watchdog.abort();
    conn.ready = false;
    if (this.conn === conn) this.conn = undefined;
    this.deps.window.detach(conn);
    let error = conn.lastError ?? (conn.established ? 'the connection closed' : 'the connection closed before the broker accepted it');
    const refusal = conn.established ? undefined : classifyRefusal(conn.refusalCode, conn.lastError === null);
    const retryNow = refusal !== undefined && !signal.aborted && conn.broker.negotiator.refused(conn.version, refusal, conn.refusalCode);
    if (refusal === 'auth') error = authRefusalMessage(error);
    if (conn.handover) error = `moved back to the preferred broker ${this.deps.brokers.preferred.name}`;
    if (!signal.aborted && !retryNow && !conn.handover) {
      // Closed after the broker's end accepted and before any CONNACK or error: the way is open, what is behind it is not (a balancer without a broker).
      const answered = conn.clockProblem === true || (conn.reached === true && !conn.established && conn.lastError === null);
      this.noteFailure(conn.established ? conn.lossOperation : 'connect', conn.established ? `connection lost: ${error}` : error, refusal === 'auth' ? 'auth' : answered ? 'answer' : 'transport');
    }
    if (conn.established) {
      this.counters.since = this.deps.clock.now();
      this.deps.events.disconnected({
        error,
        at: this.deps.clock.now(),
        connectedForMs: Math.max(0, Math.round(this.deps.clock.monotonic() - conn.establishedAtMono)),
      });
    }
    // Sends that mqtt.js had not yet taken into the store come back through their callbacks;
    // the rest waits in the store for the next connection. Close the client's stores (a no-op
    // that commits what is pending) so it holds nothing.
    conn.client.end(true);
    // mqtt.js gives up a CONNACK at connectTimeoutMs (the guard a second later): an attempt that lasted that long timed out.
    const timedOut = !conn.established && this.deps.clock.monotonic() - conn.startedAtMono >= this.deps.config.mqtt.connectTimeoutMs;
    return { established: conn.established, error, ...(refusal ? { refusal } : {}), ...(conn.refusalCode !== undefined ? { refusalCode: conn.refusalCode } : {}), retryNow, handover: conn.handover === true, timedOut, silent: conn.established && conn.lossOperation === 'ping' };
  }

  private onClientError(conn: Connection, err: Error): void {
    const m = this.deps.config.mqtt;
    const synced = this.deps.clockSynced?.() ?? true;
    const described = describeConnectionError(err, {
      host: conn.broker.url.hostname,
      caFile: m.caFile,
      certFile: m.certFile,
      connectTimeoutMs: m.connectTimeoutMs,
      clock: { synced, now: this.deps.clock.now() },
    });
    if (clockCertProblem(err, synced, 0) !== undefined) conn.clockProblem = true;
    if (err.message === 'Keepalive timeout') conn.lossOperation = 'ping';
    if (err instanceof ErrorWithReasonCode && err.message.startsWith('Connection refused')) conn.refusalCode = err.code;
    // The first error of a connection is its cause; what follows is usually the same failure again.
    conn.lastError ??= described;
    this.log.debug({ err: described }, `mqtt: ${described}`);
  }

  private onPacket(conn: Connection, packet: Packet): void {
    if (this.conn !== conn) return;
    conn.lastRx = this.deps.clock.monotonic();
    switch (packet.cmd) {
      case 'connack': {
        const rc = packet.reasonCode ?? packet.returnCode ?? 0;
        if (rc === 0) this.onConnack(conn, packet.sessionPresent, packet.properties);
        return;
      }
      case 'puback':
        this.deps.window.onPuback(packet.messageId, packet.reasonCode, packet.properties?.reasonString);
        return;
      case 'pingresp': {
        const now = this.deps.clock.monotonic();
        if (now - this.lastPingMark >= SUCCESS_MARK_INTERVAL_MS || this.deps.monitor.channelStatus('mqtt') !== 'online') {
          this.lastPingMark = now;
          this.deps.monitor.markSuccess('mqtt', 'ping');
        }
        return;
      }
      default:
        return;
    }
  }

  /** The broker accepted us: the connection is established (mqtt.js still has to re-send the stored packets). */
  private onConnack(conn: Connection, sessionPresent: boolean, properties: { receiveMaximum?: number; maximumPacketSize?: number; serverKeepAlive?: number } | undefined): void {
    conn.established = true;
    conn.establishedAtMono = this.deps.clock.monotonic();
    const now = this.deps.clock.now();
    this.counters.lastConnectAt = now;
    this.counters.since = now;
    this.counters.sessionPresent = sessionPresent;
    this.deps.window.setBrokerLimits({ receiveMaximum: properties?.receiveMaximum, maximumPacketSize: properties?.maximumPacketSize });
    conn.broker.negotiator.accepted(conn.version);
    this.deps.brokers.accepted();
    this.deps.monitor.markSuccess('mqtt', 'connect');
    this.deps.retry.afterSuccess();
    // As mqtt.js does: a server keep-alive in the CONNACK (MQTT 5) replaces ours.
    const keepAliveSeconds = properties?.serverKeepAlive || this.deps.config.mqtt.keepAliveSeconds;
    void this.watch(conn, keepAliveSeconds * 1000);
  }

  /**
   * The watchdog. A half-open connection (a NAT forgot it, a cable was pulled) never closes by
   * itself: writes succeed into the void and nothing comes back. mqtt.js 5.16 has a bound too (with
   * reschedulePings off it pings every keep-alive and gives up 1.5 x keep-alive after the last
   * PINGRESP, "Keepalive timeout"), but that depends on its timer internals, which have changed
   * within 5.x. This check makes the bound the session's own, on the injected clock:
   * 1.5 x keep-alive after the last packet received, from the CONNACK on. Whichever fires first
   * closes the connection; the loop then reconnects.
   */
  private watch(conn: Connection, keepAliveMs: number): Promise<void> {
    return watchSilence({ clock: this.deps.clock, keepAliveMs, lastRx: () => conn.lastRx, signal: conn.watchdog.signal }, (silentForMs) => {
      conn.lossOperation = 'ping';
      conn.lastError ??= `nothing from the broker for ${silentForMs} ms (1.5 x keep-alive of ${keepAliveMs / 1000} s): the connection is half-open`;
      this.log.warn({ silentForMs }, `mqtt: ${conn.lastError}; closing it`);
      conn.ready = false;
      conn.client.end(true);
    });
  }

  /** mqtt.js has re-sent the stored packets: subscribe, announce, and let new publishes go. */
  private onReady(conn: Connection, sessionPresent: boolean): void {
    if (this.conn !== conn) return;
    conn.ready = true;
    this.authRefusalSaid = false;
    if (conn.clean) this.incoming.cleanSessionMade();
    const reconnect = this.connections > 0;
    this.connections++;
    if (reconnect) this.counters.reconnects++;
    const w = this.deps.window.counts();
    const index = this.deps.brokers.currentIndex;
    const preferred = index === 0;
    const where = this.deps.brokers.brokers.length > 1 ? ` to ${conn.broker.name}${preferred ? '' : ' (not the preferred broker)'}` : '';
    this.log.info({ url: conn.broker.name, brokerIndex: index, sessionPresent, inflight: w.inflight, queued: w.queued }, `mqtt: connected${where}${sessionPresent ? ' (session resumed)' : ''}`);
    if (!sessionPresent && reconnect) {
      this.log.info('mqtt: the broker did not keep the session; messages sent to the device while it was away are lost, subscribing again');
    }
    this.subscribe(conn);
    this.sendBirth();
    this.deps.events.connected({ sessionPresent, reconnect, at: this.deps.clock.now() });
    this.deps.window.attach(conn);
    const everyMs = this.deps.config.mqtt.returnToPreferredSeconds * 1000;
    // (Not `=== 0`: a config built by hand without the key must not check in a tight loop.)
    if (preferred || !(everyMs > 0)) return;
    const to = this.deps.brokers.preferred;
    const options = (version: MqttVersion): ReturnType<ConnectionLife['attemptOptions']> => this.attemptOptions(version, to.url);
    void returnToPreferred({ everyMs, preferred: to, options, connect: this.connectClient, clock: this.deps.clock, logger: this.log, accepted: () => this.handOver(conn) }, conn.watchdog.signal);
  }

  /**
   * Closes `conn` to connect to the preferred broker: new publishes wait, the DISCONNECT goes once
   * the in-flight PUBACKs are in (mqtt.js waits for them; `stopTimeoutMs` bounds it), and what is
   * still unacknowledged then stays in the store and is sent again on the preferred broker.
   */
  private handOver(conn: Connection): void {
    if (this.conn !== conn || !conn.ready) return;
    conn.handover = true;
    conn.ready = false;
    this.deps.window.detach(conn);
    const to = this.deps.brokers.preferred.name;
    this.log.info({ from: conn.broker.name, to }, `mqtt: the preferred broker ${to} accepts connections again: moving back to it from ${conn.broker.name}`);
    // Reason 0: a normal DISCONNECT, so the broker does not publish the will (the device is not offline).
    this.endGracefully(conn, 0);
  }

  /** A DISCONNECT once the in-flight PUBACKs are in (mqtt.js waits for them); the socket closes after stopTimeoutMs at the latest. */
  private endGracefully(conn: Connection, reasonCode: number): void {
    const client = conn.client;
    // Stryker disable next-line OptionalChaining: an established connection always has its stream
    const timer = setTimeout(() => client.stream?.destroy(), this.deps.stopTimeoutMs ?? 2_000);
    client.once('close', () => clearTimeout(timer));
    client.end(false, conn.version === 5 ? { reasonCode } : {});
  }

  /** Subscriptions are made on every connection: a session the broker lost or expired has none. */
  private subscribe(conn: Connection): void {
    subscribeAll(conn.client, this.deps.topics, (error) => {
      if (error === undefined) conn.subscribed = true;
      else if (error.refused) {
        this.counters.lastError = error.message;
        this.log.error({ topic: error.topic, reasonCode: error.reasonCode }, `mqtt: ${error.message}`);
        this.deps.monitor.markFailure('mqtt', 'subscribe', error.message);
      } else if (this.conn === conn) this.log.warn({ err: error.message }, `mqtt: subscribing failed: ${error.message}`);
    });
  }

  /** `{ state: 'online', ts }` retained on the status topic: the last will says `offline` there. */
  private sendBirth(): void {
    const ts = this.deps.clock.now();
    const birth = { id: `birth-${ts}-${++this.birthSeq}`, topic: this.deps.topics.status, payload: Buffer.from(JSON.stringify({ state: 'online', ts })), retain: true };
    // Every connection sends a birth of its own: one of an earlier connection still waiting is stale.
    this.deps.window.sendAhead(birth, (outcome) => {
      if (!outcome.ok && !this.deps.window.stopped && outcome.reason !== 'superseded') this.log.warn({ reason: outcome.reason }, `mqtt: the birth message was not accepted: ${outcome.reason}`);
    });
  }

  /** Ends the client for a stop (see `MqttSession.stop`). The connection's 'close' then ends `connection`. */
  private shutdownClient(conn: Connection): void {
    const client = conn.client;
    conn.ready = false;
    if (!conn.established || conn.version !== 5) {
      client.end(true);
      return;
    }
    // 0x04: disconnect with will message, so the retained status turns offline.
    this.endGracefully(conn, 0x04);
  }

  private noteFailure(operation: 'connect' | 'ping', error: string, kind: FailureKind = 'transport'): void {
    this.counters.lastError = error;
    this.deps.monitor.markFailure('mqtt', operation, error, kind);
  }

}

type SubscribeOutcome = { refused: true; topic: string; reasonCode: number; message: string } | { refused: false; message: string } | undefined;

/**
 * Subscribes to the device's topics at QoS 1; `done` hears each refused subscription, a failure, or
 * (once, `undefined`) that the broker granted every one.
 */
function subscribeAll(client: MqttClient, topics: DeviceTopics, done: (outcome: SubscribeOutcome) => void): void {
  const wanted = Object.fromEntries(topics.subscriptions.map((s) => [s.topic, { qos: 1 as const }]));
  client.subscribe(wanted, (err, granted) => {
    if (err) return done({ refused: false, message: err.message });
    let all = true;
    for (const g of granted ?? []) {
      if (g.qos < 0x80) continue;
      all = false;
      done({ refused: true, topic: g.topic, reasonCode: g.qos, message: `the broker refused the subscription to ${g.topic}: ${reasonName(g.qos)} (${hex(g.qos)})` });
    }
    if (all) done(undefined);
  });
}

/**
 * Waits out `delayMs` before the next attempt; false when the session is stopping. When the probe
 * saw the way open again the policy ends the wait and starts its backoff over: the wait belonged
 * to an outage that has ended.
 */
async function pause(deps: Pick<ConnectionLifeDeps, 'retry' | 'clock' | 'logger'>, delayMs: number, signal: AbortSignal, wakeable = true): Promise<boolean> {
  try {
    // Refused credentials: the probe seeing the broker's port open proves nothing about them.
    if (wakeable) await deps.retry.wait(delayMs, signal);
    else await deps.retry.waitUnwoken(delayMs, signal);
    return !signal.aborted;
  } catch (err) {
    if (signal.aborted || isAbortError(err)) return false;
    // The loop must not end on a broken sleeper: wait on the clock instead.
    deps.logger.error({ err: errorMessage(err) }, `mqtt: the backoff wait failed: ${errorMessage(err)}`);
    try {
      await deps.clock.sleep(delayMs, signal);
      return true;
    } catch {
      // Stryker disable next-line BooleanLiteral: the clock's sleep rejects only on abort, which the loop's head checks as well
      return false;
    }
  }
}
