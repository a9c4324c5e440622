import { systemRandom, type Random } from '../util/random.js';
import { connect, ErrorWithReasonCode, type IClientOptions, type MqttClient, type Packet } from 'mqtt';
import { LIMIT_DEFAULTS, type AgentConfig } from '../config/schema.js';
import { depthMessage, jsonDeeperThan } from '../util/json-limits.js';
import { MqttFrameScanner } from '../util/mqtt-frames.js';
import type { Backoff } from '../resilience/backoff.js';
import type { ConnectionMonitor } from '../resilience/connection-monitor.js';
import type { Store } from '../store/store.js';
import { isAbortError, type Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { WakeableSleep } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import { clientOptions } from './client-options.js';
import { authRefusalMessage, classifyRefusal, ProtocolNegotiator, type MqttVersion, type ProtocolInfo, type Refusal } from './negotiation.js';
import { describeConnectionError, hex, reasonName } from './reasons.js';
import { PublishWindow, type PublishOutcome, type PublishRequest } from './publish-window.js';
import { SqliteMqttStore, type StoreDurability } from './sqlite-store.js';
import { deviceTopics, type DeviceTopics, type IncomingKind } from './topics.js';

/**
 * The agent's MQTT session: one persistent session (`clean: false`, MQTT 5 session expiry) with the
 * broker, QoS 1 both ways, its in-flight packets in the agent's SQLite database.
 *
 * - **Reconnects** are this class's loop, not mqtt.js's (`reconnectPeriod: 0`): every attempt
 *   builds a fresh mqtt.js client on the same stores, waits out the project's backoff between
 *   attempts (cut short by the connectivity probe's wake-up, which also resets it), and reports
 *   every outcome to the connection monitor (channel `mqtt`: `connect`, `publish`, `ping`).
 * - **Watchdog**: nothing received for 1.5 x keep-alive tears the connection down (see `watch`).
 * - **Backpressure**: at most `mqtt.maxInflight` QoS 1 publishes are unacknowledged at once; further
 *   `publish` calls wait in memory for a slot, in call order.
 * - **Outcomes**: `publish` resolves when the broker answers (PUBACK), across reconnects and restarts
 *   (see `publish`).
 * - **Birth and will**: `{ state: 'online' }` retained on `iot/{uuid}/status` after every connect;
 *   `{ state: 'offline' }` is the last will on the same topic.
 * - **Subscriptions** to target/notify, jobs/notify and shadow/desired are made again after every
 *   connect, session present or not; their messages arrive as `message` events.
 */

export interface MqttSessionConfig {
  mqtt: AgentConfig['mqtt'];
  /** Device id: the default client id and user name, and the `{uuid}` of every topic. */
  uuid: string;
  /** Device API key: the default password. */
  apiKey?: string | undefined;
  /** Bounds on what the cloud may send: `maxCloudResponseBytes` per packet, `maxJsonDepth`. Defaults: the schema's. */
  limits?: Pick<AgentConfig['limits'], 'maxCloudResponseBytes' | 'maxJsonDepth'>;
}

export interface MqttSessionDeps {
  config: MqttSessionConfig;
  /** The agent's database, opened with `MQTT_MIGRATION` among its migrations. */
  store: Store;
  monitor: Pick<ConnectionMonitor, 'markSuccess' | 'markFailure' | 'channelStatus'>;
  /** The one backoff (`backoffFromSettings`), for this session alone. */
  backoff: Pick<Backoff, 'failure' | 'success' | 'reset' | 'maxMs'>;
  /** Backoff waits sleep here, so the connectivity probe can end them early. */
  wakeup: WakeableSleep;
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
}

export type { PublishOutcome, PublishRequest } from './publish-window.js';

export interface IncomingMessage {
  kind: IncomingKind;
  topic: string;
  /** The parsed JSON payload (messages that are not JSON are logged, counted and dropped). */
  payload: unknown;
  retained: boolean;
  /** Wall time received. */
  at: number;
}

export interface ConnectedEvent {
  /** The broker still had the session (subscriptions, queued messages) from before. */
  sessionPresent: boolean;
  /** False for the first connection of this session object. */
  reconnect: boolean;
  at: number;
}

export interface DisconnectedEvent {
  error: string;
  at: number;
  /** How long the connection had been up. */
  connectedForMs: number;
}

export interface MqttSessionEvents {
  message: IncomingMessage;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
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
  /** mqtt.protocolVersion and the version negotiated with the broker (see negotiation.ts). */
  protocol: ProtocolInfo;
}

interface ConnectionEnd {
  established: boolean;
  error: string;
  refusal?: Refusal;
  /** The negotiator falls back to the other version: try again at once. */
  retryNow?: boolean;
}

/** Per-connection state, for the one mqtt.js client of that connection. */
interface Connection {
  client: MqttClient;
  version: MqttVersion;
  /** Connected with a clean session (to drop a packet the broker kept re-sending). */
  clean: boolean;
  /** The CONNACK's refusal code, when it refused. */
  refusalCode?: number;
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
  /** Stops the watchdog of this connection. */
  watchdog: AbortController;
}

/** Marks of success at most this often while the channel is online: one per PINGRESP would be noise. */
const SUCCESS_MARK_INTERVAL_MS = 1_000;

export class MqttSession extends TypedEmitter<MqttSessionEvents> {
  readonly topics: DeviceTopics;
  private readonly config: MqttSessionConfig;
  private readonly deps: MqttSessionDeps;
  private readonly url: URL;
  private readonly window: PublishWindow;
  private readonly incoming: SqliteMqttStore;
  private readonly log: Logger;
  private readonly negotiator: ProtocolNegotiator;

  private readonly controller = new AbortController();
  private started = false;
  private done: Promise<void> = Promise.resolve();
  private conn: Connection | undefined;
  private connections = 0;
  /** Connections in a row the broker ended by sending a packet over the limit (see `connection`). */
  private oversizeStreak = 0;
  private birthSeq = 0;
  private lastPingMark = -Infinity;

  private readonly counters = {
    since: null as number | null,
    reconnects: 0,
    connectionFailures: 0,
    lastError: null as string | null,
    lastConnectAt: null as number | null,
    sessionPresent: null as boolean | null,
    droppedIncoming: 0,
  };

  constructor(deps: MqttSessionDeps) {
    super();
    this.deps = deps;
    this.config = deps.config;
    const m = deps.config.mqtt;
    if (!m.url) throw new AgentError('MQTT_CONFIG_INVALID', 'mqtt.url: expected an mqtt:// or mqtts:// broker URL, got nothing');
    this.url = new URL(m.url);
    if (this.url.protocol !== 'mqtt:' && this.url.protocol !== 'mqtts:') {
      throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.url: expected an mqtt:// or mqtts:// URL, got ${this.url.protocol}//`);
    }
    if (Boolean(m.certFile) !== Boolean(m.keyFile)) {
      const [set, missing] = m.certFile ? ['certFile', 'keyFile'] : ['keyFile', 'certFile'];
      throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.${set} is set but mqtt.${missing} is not: mutual TLS needs both the client certificate and its key`);
    }
    if (!Number.isInteger(m.maxInflight) || m.maxInflight < 1) {
      throw new AgentError('MQTT_CONFIG_INVALID', `mqtt.maxInflight: expected an integer >= 1, got ${String(m.maxInflight)}`);
    }
    this.topics = deviceTopics(deps.config.uuid);
    this.log = deps.logger;
    this.negotiator = new ProtocolNegotiator({ setting: m.protocolVersion, broker: this.safeUrl(), kv: deps.store, clock: deps.clock, logger: deps.logger });
    const durability = deps.inflightDurability ?? 'process';
    this.window = new PublishWindow({
      db: deps.store.db,
      maxInflight: m.maxInflight,
      durability,
      monitor: deps.monitor,
      clock: deps.clock,
      logger: deps.logger,
      onStoreError: (message) => (this.counters.lastError = message),
    });
    this.incoming = new SqliteMqttStore(deps.store.db, 'incoming', {
      clock: deps.clock,
      durability,
      onError: (err) => this.log.error({ err: err.message }, `mqtt: ${err.message}`),
    });
    if (this.url.protocol === 'mqtt:' && (m.caFile || m.certFile)) {
      this.log.warn({ url: this.safeUrl() }, 'mqtt: mqtt.caFile/certFile are set but mqtt.url is mqtt:// (no TLS); they are not used');
    }
    this.window.restore();
  }

  get connected(): boolean {
    return this.conn?.ready === true;
  }

  stats(): MqttSessionStats {
    const c = this.counters;
    const w = this.window.counts();
    return {
      connected: this.connected,
      subscribed: this.conn?.ready === true && this.conn.subscribed,
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
      protocol: this.negotiator.info(),
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
    this.done = this.loop(run).finally(() => this.window.close({ ok: false, permanent: false, reason: 'the MQTT session stopped' }));
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
    this.window.close({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
    this.controller.abort();
    await this.done;
    this.window.outgoing.flush();
    this.incoming.flush();
  }

  // ---- the connection loop ----

  private async loop(signal: AbortSignal): Promise<void> {
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
      this.counters.connectionFailures++;
      // Refused credentials stay refused until someone fixes them: retry at the backoff's cap.
      const delayMs = end.refusal === 'auth' ? this.deps.backoff.maxMs * (0.5 + 0.5 * (this.deps.random ?? systemRandom)()) : this.deps.backoff.failure();
      this.log[end.refusal === 'auth' ? 'error' : end.established ? 'warn' : 'info'](
        { url: this.safeUrl(), error: end.error, retryInMs: Math.round(delayMs) },
        `mqtt: ${end.established ? 'connection lost' : 'could not connect'}: ${end.error}; retrying in ${Math.round(delayMs)} ms`,
      );
      try {
        const outcome = await this.deps.wakeup.sleep(delayMs, signal);
        // The probe saw the way open again: the wait belonged to an outage that has ended.
        if (outcome === 'woken') this.deps.backoff.reset();
      } catch (err) {
        if (signal.aborted || isAbortError(err)) break;
        // The loop must not end on a broken sleeper: wait on the clock instead.
        this.log.error({ err: errorMessage(err) }, `mqtt: the backoff wait failed: ${errorMessage(err)}`);
        try {
          await this.deps.clock.sleep(delayMs, signal);
        } catch {
          break;
        }
      }
    }
  }

  /** One connection attempt and, when it succeeds, the connection's life. Resolves when it is over. */
  private connection(signal: AbortSignal): Promise<ConnectionEnd> {
    let options: IClientOptions;
    let clean = false;
    const version = this.negotiator.version();
    try {
      const c = this.config;
      const stores = { outgoingStore: this.window.outgoing, incomingStore: this.incoming };
      // A broker that re-sends a packet over the limit with the stored session would cut the agent off for
      // good (3.1.1 cannot refuse one packet): after two such closes in a row, a clean session drops it.
      clean = this.oversizeStreak >= 2;
      if (clean) this.log.warn({ closes: this.oversizeStreak }, 'mqtt: the broker keeps re-sending a packet over limits.maxCloudResponseBytes with the stored session; connecting with a clean session to drop it (messages the broker held for the device are lost; retained ones come back on subscribe)');
      options = clientOptions({ mqtt: c.mqtt, uuid: c.uuid, apiKey: c.apiKey, url: this.url, version, clean, statusTopic: this.topics.status, now: this.deps.clock.now(), maxPacketBytes: this.maxPacketBytes, ...stores });
    } catch (err) {
      const error = errorMessage(err);
      this.noteFailure('connect', error);
      return Promise.resolve({ established: false, error });
    }
    const client = connect(this.url.href, options);
    const conn: Connection = {
      client,
      version,
      clean,
      established: false,
      ready: false,
      subscribed: false,
      lastError: null,
      lossOperation: 'connect',
      lastRx: this.deps.clock.monotonic(),
      establishedAtMono: 0,
      watchdog: new AbortController(),
    };
    this.conn = conn;
    if (this.counters.since === null) this.counters.since = this.deps.clock.now();

    return new Promise<ConnectionEnd>((resolve) => {
      const onAbort = (): void => this.shutdownClient(conn);
      signal.addEventListener('abort', onAbort, { once: true });
      // mqtt.js times the CONNACK out itself (connectTimeout); this is the backstop that keeps the
      // loop going should an attempt ever hang without closing.
      const guard = setTimeout(() => {
        if (conn.established) return;
        conn.lastError ??= `no CONNACK from the broker within ${this.config.mqtt.connectTimeoutMs} ms (mqtt.connectTimeoutMs)`;
        client.end(true);
      }, this.config.mqtt.connectTimeoutMs + 1_000);
      // Never left without an error listener: a late error of a finished client must not crash the process.
      client.on('error', (err) => this.onClientError(conn, err));
      client.on('packetreceive', (packet) => this.onPacket(conn, packet));
      client.on('connect', (connack) => this.onReady(conn, connack.sessionPresent));
      client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet.retain));
      this.guardIncoming(conn);
      client.on('disconnect', (packet) => {
        const rc = packet.reasonCode ?? 0;
        conn.lastError = `the broker closed the connection: ${reasonName(rc)} (${hex(rc)})${rc === 0x8e ? ` — another client is using client id ${String(options.clientId)}` : ''}`;
        this.log.warn({ reasonCode: rc }, `mqtt: ${conn.lastError}`);
      });
      client.once('close', () => {
        clearTimeout(guard);
        signal.removeEventListener('abort', onAbort);
        conn.watchdog.abort();
        conn.ready = false;
        if (this.conn === conn) this.conn = undefined;
        this.window.detach(conn);
        let error = conn.lastError ?? (conn.established ? 'the connection closed' : 'the connection closed before the broker accepted it');
        const refusal = conn.established ? undefined : classifyRefusal(conn.refusalCode, conn.lastError === null);
        const retryNow = refusal !== undefined && !signal.aborted && this.negotiator.refused(version, refusal, conn.refusalCode);
        if (refusal === 'auth') error = authRefusalMessage(error);
        if (!signal.aborted && !retryNow) {
          this.noteFailure(conn.established ? conn.lossOperation : 'connect', conn.established ? `connection lost: ${error}` : error, refusal === 'auth' ? 'answer' : 'transport');
        }
        if (conn.established) {
          this.counters.since = this.deps.clock.now();
          this.emit('disconnected', {
            error,
            at: this.deps.clock.now(),
            connectedForMs: Math.max(0, Math.round(this.deps.clock.monotonic() - conn.establishedAtMono)),
          });
        }
        // Sends that mqtt.js had not yet taken into the store come back through their callbacks;
        // the rest waits in the store for the next connection. Close the client's stores (a no-op
        // that commits what is pending) so it holds nothing.
        client.end(true);
        resolve({ established: conn.established, error, ...(refusal ? { refusal } : {}), retryNow });
      });
    });
  }

  private onClientError(conn: Connection, err: Error): void {
    const m = this.config.mqtt;
    const described = describeConnectionError(err, {
      host: this.url.hostname,
      caFile: m.caFile,
      certFile: m.certFile,
      connectTimeoutMs: m.connectTimeoutMs,
    });
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
        if (rc !== 0) return;
        conn.established = true;
        conn.establishedAtMono = this.deps.clock.monotonic();
        const now = this.deps.clock.now();
        this.counters.lastConnectAt = now;
        this.counters.since = now;
        this.counters.sessionPresent = packet.sessionPresent;
        this.window.setBrokerLimits({ receiveMaximum: packet.properties?.receiveMaximum, maximumPacketSize: packet.properties?.maximumPacketSize });
        this.negotiator.accepted(conn.version);
        this.deps.monitor.markSuccess('mqtt', 'connect');
        this.deps.backoff.success();
        // As mqtt.js does: a server keep-alive in the CONNACK (MQTT 5) replaces ours.
        const keepAliveSeconds = packet.properties?.serverKeepAlive || this.config.mqtt.keepAliveSeconds;
        void this.watch(conn, keepAliveSeconds * 1000);
        return;
      }
      case 'puback':
        this.window.onPuback(packet.messageId, packet.reasonCode, packet.properties?.reasonString);
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

  /**
   * The watchdog. A half-open connection (a NAT forgot it, a cable was pulled) never closes by
   * itself: writes succeed into the void and nothing comes back. mqtt.js 5.16 has a bound too (with
   * reschedulePings off it pings every keep-alive and gives up 1.5 x keep-alive after the last
   * PINGRESP, "Keepalive timeout"), but that depends on its timer internals, which have changed
   * within 5.x. This check makes the bound the session's own, on the injected clock:
   * 1.5 x keep-alive after the last packet received, from the CONNACK on. Whichever fires first
   * closes the connection; the loop then reconnects.
   */
  private async watch(conn: Connection, keepAliveMs: number): Promise<void> {
    const limit = keepAliveMs * 1.5;
    const signal = conn.watchdog.signal;
    const clock = this.deps.clock;
    while (!signal.aborted) {
      const silentFor = clock.monotonic() - conn.lastRx;
      if (silentFor >= limit) {
        conn.lossOperation = 'ping';
        conn.lastError ??= `nothing from the broker for ${Math.round(silentFor)} ms (1.5 x keep-alive of ${keepAliveMs / 1000} s): the connection is half-open`;
        this.log.warn({ silentForMs: Math.round(silentFor) }, `mqtt: ${conn.lastError}; closing it`);
        conn.ready = false;
        conn.client.end(true);
        return;
      }
      try {
        await clock.sleep(limit - silentFor, signal);
      } catch {
        return;
      }
    }
  }

  /** mqtt.js has re-sent the stored packets: subscribe, announce, and let new publishes go. */
  private onReady(conn: Connection, sessionPresent: boolean): void {
    if (this.conn !== conn) return;
    conn.ready = true;
    if (conn.clean) this.oversizeStreak = 0;
    const reconnect = this.connections > 0;
    this.connections++;
    if (reconnect) this.counters.reconnects++;
    const w = this.window.counts();
    this.log.info(
      { url: this.safeUrl(), sessionPresent, inflight: w.inflight, queued: w.queued },
      `mqtt: connected${sessionPresent ? ' (session resumed)' : ''}`,
    );
    if (!sessionPresent && reconnect) {
      this.log.info('mqtt: the broker did not keep the session; messages sent to the device while it was away are lost, subscribing again');
    }
    this.subscribe(conn);
    this.sendBirth();
    this.emit('connected', { sessionPresent, reconnect, at: this.deps.clock.now() });
    this.window.attach(conn);
  }

  /** Subscriptions are made on every connection: a session the broker lost or expired has none. */
  private subscribe(conn: Connection): void {
    const topics = Object.fromEntries(this.topics.subscriptions.map((s) => [s.topic, { qos: 1 as const }]));
    conn.client.subscribe(topics, (err, granted) => {
      if (err) {
        if (this.conn === conn) this.log.warn({ err: err.message }, `mqtt: subscribing failed: ${err.message}`);
        return;
      }
      let all = true;
      for (const g of granted ?? []) {
        if (g.qos >= 0x80) {
          all = false;
          const error = `the broker refused the subscription to ${g.topic}: ${reasonName(g.qos)} (${hex(g.qos)})`;
          this.counters.lastError = error;
          this.log.error({ topic: g.topic, reasonCode: g.qos }, `mqtt: ${error}`);
          this.deps.monitor.markFailure('mqtt', 'subscribe', error);
        }
      }
      conn.subscribed = all;
    });
  }

  private sendBirth(): void {
    const ts = this.deps.clock.now();
    const birth = { id: `birth-${ts}-${++this.birthSeq}`, topic: this.topics.status, payload: Buffer.from(JSON.stringify({ state: 'online', ts })), retain: true };
    // Every connection sends a birth of its own: one of an earlier connection still waiting is stale.
    this.window.sendAhead(birth, (outcome) => {
      if (!outcome.ok && !this.window.stopped && outcome.reason !== 'superseded') this.log.warn({ reason: outcome.reason }, `mqtt: the birth message was not accepted: ${outcome.reason}`);
    });
  }

  private get maxPacketBytes(): number {
    return this.config.limits?.maxCloudResponseBytes ?? LIMIT_DEFAULTS.maxCloudResponseBytes;
  }

  /**
   * mqtt.js holds a packet whole until its last byte: a packet from the broker announced over the
   * limit ends the connection as soon as its header is seen, so the most held is the limit.
   */
  private guardIncoming(conn: Connection): void {
    const stream = conn.client.stream as NodeJS.ReadableStream | undefined;
    if (!stream) return;
    const scanner = new MqttFrameScanner(this.maxPacketBytes);
    stream.on('data', (chunk: Buffer) => {
      const over = scanner.feed(chunk);
      if (over === undefined) return;
      conn.lastError = `the broker sent ${over < 0 ? 'a packet with a malformed length' : `a packet of ${over} bytes`}, over limits.maxCloudResponseBytes (${this.maxPacketBytes}): connection closed`;
      this.counters.droppedIncoming++;
      this.oversizeStreak++;
      this.log.warn({ bytes: over, limit: this.maxPacketBytes }, `mqtt: ${conn.lastError}`);
      conn.client.end(true);
    });
  }

  private onMessage(topic: string, payload: Buffer, retained: boolean): void {
    this.oversizeStreak = 0;
    const kind = this.topics.kindOf(topic);
    if (!kind) {
      this.log.debug({ topic }, 'mqtt: message on a topic the agent does not handle; ignored');
      return;
    }
    const maxDepth = this.config.limits?.maxJsonDepth ?? LIMIT_DEFAULTS.maxJsonDepth;
    if (jsonDeeperThan(payload, maxDepth)) {
      this.counters.droppedIncoming++;
      this.log.warn({ topic, bytes: payload.length }, `mqtt: dropped a message on ${topic}: ${depthMessage('its payload', 'limits.maxJsonDepth', maxDepth)}`);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload.toString('utf8'));
    } catch (err) {
      this.counters.droppedIncoming++;
      this.log.warn({ topic, bytes: payload.length, err: errorMessage(err) }, `mqtt: dropped a message on ${topic} that is not JSON: ${errorMessage(err)}`);
      return;
    }
    this.emit('message', { kind, topic, payload: parsed, retained, at: this.deps.clock.now() });
  }

  /** Ends the client for a stop: see `stop`. The connection's 'close' then ends `connection`. */
  private shutdownClient(conn: Connection): void {
    const client = conn.client;
    conn.ready = false;
    if (!conn.established || conn.version !== 5) {
      client.end(true);
      return;
    }
    const timer = setTimeout(() => client.stream?.destroy(), this.deps.stopTimeoutMs ?? 2_000);
    client.once('close', () => clearTimeout(timer));
    // 0x04: disconnect with will message, so the retained status turns offline.
    client.end(false, { reasonCode: 0x04 });
  }

  private noteFailure(operation: 'connect' | 'ping', error: string, kind: 'transport' | 'answer' = 'transport'): void {
    this.counters.lastError = error;
    this.deps.monitor.markFailure('mqtt', operation, error, kind);
  }

  private safeUrl(): string {
    return `${this.url.protocol}//${this.url.host}`;
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.log.error({ err: errorMessage(err), event }, `a listener of the MQTT session's "${event}" event failed: ${errorMessage(err)}`);
  }
}
