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
import { describeConnectionError, hex, isPermanentPubackFailure, isPubackFailure, reasonName } from './reasons.js';
import { SqliteMqttStore, type StoreDurability } from './sqlite-store.js';
import { deviceTopics, publishTopicProblem, type DeviceTopics, type IncomingKind } from './topics.js';

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

export interface PublishRequest {
  topic: string;
  payload: Buffer | string;
  /** The message's unique id (the outbox id): a second publish of a known id joins the first. */
  id: string;
  retain?: boolean;
  /** Stops waiting (the outcome is then `aborted`); a message already sent stays in flight. */
  signal?: AbortSignal;
  /**
   * The caller keeps the message on disk until it has the outcome and publishes it again after a
   * restart, as the outbox does. The session then holds it in memory only (re-sent by every new
   * connection of this process) instead of writing a second copy of it to the in-flight table: for
   * an outbox drain that write was most of the session's cost. Default false: the in-flight table
   * keeps the message until its PUBACK, across a kill -9.
   */
  heldByCaller?: boolean;
}

export type PublishOutcome =
  | { ok: true }
  | { ok: false; permanent: true; reasonCode: number; reason: string }
  | { ok: false; permanent: false; reasonCode?: number; reason: string };

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

type EntryState = 'queued' | 'sending' | 'stored' | 'done';

interface Waiter {
  resolve(outcome: PublishOutcome): void;
  detach(): void;
}

/** One message on its way: queued for a slot, handed to mqtt.js, or in the store awaiting its PUBACK. */
interface Entry {
  id: string;
  topic: string;
  payload: Buffer;
  retain: boolean;
  /** See `PublishRequest.heldByCaller`: not written to the in-flight table. */
  held: boolean;
  state: EntryState;
  messageId: number | undefined;
  /** Usually one; an array, not a Set: the drain makes one per message. */
  waiters: Waiter[];
  /** Tagged in the store (see `PublishTag`) and not yet put there. */
  tagged: boolean;
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

const SUCCESS_MARK_INTERVAL_MS = 1_000;

const noop = (): void => undefined;
// mqtt.js copies its options: one object each serves every publish.
const QOS1 = { qos: 1, retain: false } as const;
const QOS1_RETAINED = { qos: 1, retain: true } as const;
const ACKED: PublishOutcome = Object.freeze({ ok: true });

/**
 * Outcomes of messages that finished while nobody waited for them (re-sent from the store after a
 * restart, or sent and then abandoned by an aborted caller), kept for the next publish of the same
 * id. The oldest are forgotten beyond this many.
 */
const UNCLAIMED_OUTCOMES_KEPT = 10_000;

export class MqttSession extends TypedEmitter<MqttSessionEvents> {
  readonly topics: DeviceTopics;
  private readonly config: MqttSessionConfig;
  private readonly deps: MqttSessionDeps;
  private readonly url: URL;
  private readonly maxInflight: number;
  private readonly outgoing: SqliteMqttStore<Entry>;
  private readonly incoming: SqliteMqttStore;
  private readonly log: Logger;
  private readonly negotiator: ProtocolNegotiator;

  private readonly byId = new Map<string, Entry>();
  private readonly unclaimed = new Map<string, PublishOutcome>();
  private readonly byMessageId = new Map<number, Entry>();
  private readonly inflightEntries = new Set<Entry>();
  /** Sends that must go first: the birth message, then sends that never reached the store. */
  private readonly urgent: Entry[] = [];
  private readonly queue: Entry[] = [];

  private readonly controller = new AbortController();
  private started = false;
  private stopping = false;
  private done: Promise<void> = Promise.resolve();
  private conn: Connection | undefined;
  private connections = 0;
  /** Connections in a row the broker ended by sending a packet over the limit (see `connection`). */
  private oversizeStreak = 0;
  private birthSeq = 0;
  private birth: Entry | undefined;
  private pumpScheduled = false;
  /** The broker's maximum packet size (MQTT 5 CONNACK), when it announced one. */
  private maximumPacketSize: number | undefined;
  /** In-flight window of the current connection: mqtt.maxInflight, or less if the broker's Receive Maximum says so. */
  private window: number;
  private lastPublishMark = -Infinity;
  private lastPingMark = -Infinity;

  private readonly counters = {
    since: null as number | null,
    reconnects: 0,
    connectionFailures: 0,
    lastError: null as string | null,
    lastConnectAt: null as number | null,
    sessionPresent: null as boolean | null,
    acknowledged: 0,
    rejected: 0,
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
    this.maxInflight = m.maxInflight;
    this.window = m.maxInflight;
    this.topics = deviceTopics(deps.config.uuid);
    this.log = deps.logger;
    this.negotiator = new ProtocolNegotiator({ setting: m.protocolVersion, broker: this.safeUrl(), kv: deps.store, clock: deps.clock, logger: deps.logger });
    const durability = deps.inflightDurability ?? 'process';
    this.outgoing = new SqliteMqttStore<Entry>(deps.store.db, 'outgoing', {
      clock: deps.clock,
      durability,
      onError: (err, lost) => this.onStoreError(err, lost),
      onStored: (entry, messageId) => {
        entry.tagged = false;
        entry.messageId = messageId;
        entry.state = 'stored';
        this.byMessageId.set(messageId, entry);
      },
    });
    this.incoming = new SqliteMqttStore(deps.store.db, 'incoming', {
      clock: deps.clock,
      durability,
      onError: (err) => this.log.error({ err: err.message }, `mqtt: ${err.message}`),
    });
    if (this.url.protocol === 'mqtt:' && (m.caFile || m.certFile)) {
      this.log.warn({ url: this.safeUrl() }, 'mqtt: mqtt.caFile/certFile are set but mqtt.url is mqtt:// (no TLS); they are not used');
    }
    this.restore();
  }

  get connected(): boolean {
    return this.conn?.ready === true;
  }

  stats(): MqttSessionStats {
    const c = this.counters;
    return {
      connected: this.connected,
      subscribed: this.conn?.ready === true && this.conn.subscribed,
      since: c.since,
      inflight: this.inflightEntries.size,
      queued: this.urgent.length + this.queue.length,
      reconnects: c.reconnects,
      connectionFailures: c.connectionFailures,
      lastError: c.lastError,
      lastConnectAt: c.lastConnectAt,
      sessionPresent: c.sessionPresent,
      acknowledged: c.acknowledged,
      rejected: c.rejected,
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
    return new Promise<PublishOutcome>((resolve) => this.submit(req, resolve));
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
        this.submit(req, (o) => {
          outcomes[i] = o;
          if (--left === 0) resolve(outcomes);
        }),
      );
    });
  }

  /** Takes one publish; `done` is called once with its outcome (synchronously when it is known at once). */
  private submit(req: PublishRequest, done: (outcome: PublishOutcome) => void): void {
    if (this.stopping) return done({ ok: false, permanent: false, reason: 'the MQTT session is stopped' });
    const problem = publishTopicProblem(req.topic);
    if (problem) return done({ ok: false, permanent: true, reasonCode: 0x90, reason: `topic name invalid: ${problem}` });
    const known = this.unclaimed.get(req.id);
    if (known) {
      // Sent earlier and answered while nobody waited (re-sent from the store after a restart).
      this.unclaimed.delete(req.id);
      return done(known);
    }
    if (req.signal?.aborted) return done({ ok: false, permanent: false, reason: 'aborted' });
    let entry = this.byId.get(req.id);
    if (!entry) {
      const payload = typeof req.payload === 'string' ? Buffer.from(req.payload, 'utf8') : req.payload;
      entry = {
        id: req.id,
        topic: req.topic,
        payload,
        retain: req.retain === true,
        held: req.heldByCaller === true,
        state: 'queued',
        messageId: undefined,
        waiters: [],
        tagged: false,
      };
      this.byId.set(req.id, entry);
      this.queue.push(entry);
      this.schedulePump();
    }
    this.wait(entry, done, req.signal);
  }

  /**
   * Runs the session until `signal` aborts or `stop` is called; resolves once it is down. Never
   * rejects: failures are connection attempts to retry, reported to the monitor and the log.
   */
  start(signal: AbortSignal): Promise<void> {
    if (this.started) throw new AgentError('ALREADY_STARTED', 'the MQTT session was already started');
    this.started = true;
    const run = AbortSignal.any([signal, this.controller.signal]);
    this.done = this.loop(run).finally(() => {
      this.stopping = true;
      this.settleWaiters({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
    });
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
    this.stopping = true;
    this.settleWaiters({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
    this.controller.abort();
    await this.done;
    this.outgoing.flush();
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
      const stores = { outgoingStore: this.outgoing, incomingStore: this.incoming };
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
        this.maximumPacketSize = packet.properties?.maximumPacketSize;
        // MQTT 5: more unacknowledged QoS 1 publishes than the broker's Receive Maximum is a protocol
        // error that costs the connection; mqtt.js does not enforce it, so the window does.
        this.window = Math.min(this.maxInflight, packet.properties?.receiveMaximum ?? this.maxInflight);
        this.negotiator.accepted(conn.version);
        this.deps.monitor.markSuccess('mqtt', 'connect');
        this.deps.backoff.success();
        // As mqtt.js does: a server keep-alive in the CONNACK (MQTT 5) replaces ours.
        const keepAliveSeconds = packet.properties?.serverKeepAlive || this.config.mqtt.keepAliveSeconds;
        void this.watch(conn, keepAliveSeconds * 1000);
        return;
      }
      case 'puback':
        this.onPuback(packet.messageId, packet.reasonCode, packet.properties?.reasonString);
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
    this.log.info(
      { url: this.safeUrl(), sessionPresent, inflight: this.inflightEntries.size, queued: this.urgent.length + this.queue.length },
      `mqtt: connected${sessionPresent ? ' (session resumed)' : ''}`,
    );
    if (!sessionPresent && reconnect) {
      this.log.info('mqtt: the broker did not keep the session; messages sent to the device while it was away are lost, subscribing again');
    }
    this.subscribe(conn);
    this.sendBirth();
    this.emit('connected', { sessionPresent, reconnect, at: this.deps.clock.now() });
    this.schedulePump();
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
    // A birth of an earlier connection that never went out is stale: this one replaces it.
    const stale = this.birth;
    if (stale?.state === 'queued') {
      const i = this.urgent.indexOf(stale);
      if (i >= 0) this.urgent.splice(i, 1);
      this.finish(stale, { ok: false, permanent: false, reason: 'superseded' });
    }
    const ts = this.deps.clock.now();
    const entry: Entry = {
      id: `birth-${ts}-${++this.birthSeq}`,
      topic: this.topics.status,
      payload: Buffer.from(JSON.stringify({ state: 'online', ts })),
      retain: true,
      // Every connection sends a birth of its own: one left over from before a crash is stale.
      held: true,
      state: 'queued',
      messageId: undefined,
      waiters: [],
      tagged: false,
    };
    this.byId.set(entry.id, entry);
    this.urgent.unshift(entry);
    this.birth = entry;
    this.wait(entry, (outcome) => {
      if (!outcome.ok && !this.stopping && outcome.reason !== 'superseded') this.log.warn({ reason: outcome.reason }, `mqtt: the birth message was not accepted: ${outcome.reason}`);
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

  // ---- publishing ----

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Hands waiting messages to mqtt.js while there is a connection and a free in-flight slot. */
  private pump(): void {
    const conn = this.conn;
    if (!conn?.ready || this.stopping) return;
    while (this.inflightEntries.size < this.window) {
      const entry = this.urgent.shift() ?? this.queue.shift();
      if (!entry) return;
      if (entry.state !== 'queued') continue;
      this.send(conn, entry);
    }
  }

  private send(conn: Connection, entry: Entry): void {
    const size = publishPacketSize(entry, conn.version);
    if (this.maximumPacketSize !== undefined && size > this.maximumPacketSize) {
      this.finish(entry, { ok: false, permanent: true, reasonCode: 0x95, reason: `packet too large: ${size} bytes, the broker takes at most ${this.maximumPacketSize}` });
      return;
    }
    entry.state = 'sending';
    this.inflightEntries.add(entry);
    entry.tagged = true;
    this.outgoing.tag(entry);
    // Success and broker refusals are read from the PUBACK itself (onPuback), which also serves
    // messages re-sent from the store; this callback only sees failures before the broker answered.
    conn.client.publish(entry.topic, entry.payload, entry.retain ? QOS1_RETAINED : QOS1, (err) => {
      if (!err || err instanceof ErrorWithReasonCode || entry.state === 'done') return;
      this.sendFailed(conn, entry, err);
    });
  }

  /**
   * A send ended without a PUBACK ("Connection closed", "client disconnecting"): the connection is
   * going away, so it takes nothing more. A message in the store stays there (the next connection
   * re-sends it); one that never reached it waits for the next connection, ahead of the queue.
   */
  private sendFailed(conn: Connection, entry: Entry, err: Error): void {
    conn.ready = false;
    this.untag(entry);
    if (entry.messageId !== undefined && this.outgoing.has(entry.messageId)) return;
    if (entry.messageId !== undefined) this.byMessageId.delete(entry.messageId);
    entry.messageId = undefined;
    this.inflightEntries.delete(entry);
    const code = (err as { code?: unknown }).code;
    if (code === 'MQTT_STORE_WRITE_FAILED') {
      this.finish(entry, { ok: false, permanent: false, reason: err.message });
    } else if (this.stopping) {
      this.finish(entry, { ok: false, permanent: false, reason: 'the MQTT session stopped' });
    } else {
      entry.state = 'queued';
      this.urgent.push(entry);
    }
  }

  private onPuback(messageId: number | undefined, reasonCode: number | undefined, reasonString: string | undefined): void {
    if (messageId === undefined) return;
    const entry = this.byMessageId.get(messageId);
    if (!entry) return;
    this.byMessageId.delete(messageId);
    // The broker answered: the link works, whatever it thinks of the message.
    const now = this.deps.clock.monotonic();
    if (now - this.lastPublishMark >= SUCCESS_MARK_INTERVAL_MS || this.deps.monitor.channelStatus('mqtt') !== 'online') {
      this.lastPublishMark = now;
      this.deps.monitor.markSuccess('mqtt', 'publish');
    }
    if (!isPubackFailure(reasonCode)) {
      this.counters.acknowledged++;
      this.finish(entry, ACKED);
    } else {
      const rc = reasonCode as number;
      const reason = `${reasonName(rc)} (${hex(rc)})${reasonString ? `: ${reasonString}` : ''}`;
      this.counters.rejected++;
      const permanent = isPermanentPubackFailure(rc);
      this.log.warn({ id: entry.id, topic: entry.topic, reasonCode: rc, permanent }, `mqtt: the broker refused message ${entry.id} on ${entry.topic}: ${reason}`);
      this.finish(entry, permanent ? { ok: false, permanent: true, reasonCode: rc, reason } : { ok: false, permanent: false, reasonCode: rc, reason });
    }
    this.schedulePump();
  }

  private untag(entry: Entry): void {
    if (!entry.tagged) return;
    entry.tagged = false;
    this.outgoing.untag(entry);
  }

  /** The message is no longer on its way: tell every waiter, free its slot and its id. */
  private finish(entry: Entry, outcome: PublishOutcome): void {
    if (entry.state === 'done') return;
    entry.state = 'done';
    this.untag(entry);
    this.inflightEntries.delete(entry);
    if (this.byId.get(entry.id) === entry) this.byId.delete(entry.id);
    if (entry.waiters.length === 0 && entry.messageId !== undefined && (outcome.ok || outcome.permanent)) {
      // The broker answered and nobody is told: keep the answer for a later publish of the same id,
      // which would otherwise send another copy of a message the broker already has.
      this.unclaimed.set(entry.id, outcome);
      if (this.unclaimed.size > UNCLAIMED_OUTCOMES_KEPT) this.unclaimed.delete(this.unclaimed.keys().next().value as string);
    }
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const w of waiters) {
      w.detach();
      w.resolve(outcome);
    }
  }

  /** Adds `resolve` to the entry's waiters; it is called once, with the outcome or with `aborted`. */
  private wait(entry: Entry, resolve: (outcome: PublishOutcome) => void, signal?: AbortSignal): void {
    if (signal?.aborted) return resolve({ ok: false, permanent: false, reason: 'aborted' });
    if (!signal) {
      entry.waiters.push({ resolve, detach: noop });
      return;
    }
    const onAbort = (): void => {
      const i = entry.waiters.indexOf(waiter);
      if (i >= 0) entry.waiters.splice(i, 1);
      resolve({ ok: false, permanent: false, reason: 'aborted' });
      // Not sent yet and nobody else waiting: forget it. Once sent it stays in flight (and in the
      // store); a later publish of the same id joins it.
      if (entry.state === 'queued' && entry.waiters.length === 0) {
        entry.state = 'done';
        if (this.byId.get(entry.id) === entry) this.byId.delete(entry.id);
      }
    };
    const waiter: Waiter = { resolve, detach: () => signal.removeEventListener('abort', onAbort) };
    entry.waiters.push(waiter);
    signal.addEventListener('abort', onAbort, { once: true });
  }

  /**
   * Every waiting caller gets `outcome`. Messages not yet sent are dropped from memory (the caller
   * still has them); messages in the store stay there for the next start.
   */
  private settleWaiters(outcome: PublishOutcome): void {
    for (const entry of [...this.urgent, ...this.queue]) this.finish(entry, outcome);
    this.urgent.length = 0;
    this.queue.length = 0;
    for (const entry of this.byId.values()) {
      const waiters = entry.waiters;
      entry.waiters = [];
      for (const w of waiters) {
        w.detach();
        w.resolve(outcome);
      }
    }
  }

  /** Messages left in the store by an earlier run: in flight from the start, re-sent by the first connection. */
  private restore(): void {
    const stored = this.outgoing.publishes();
    for (const p of stored) {
      const entry: Entry = {
        id: p.appId ?? `mqtt-stored-${p.messageId}`,
        topic: p.topic,
        payload: p.payload,
        retain: p.retain,
        held: false,
        state: 'stored',
        messageId: p.messageId,
        waiters: [],
        tagged: false,
      };
      this.byId.set(entry.id, entry);
      this.byMessageId.set(p.messageId, entry);
      this.inflightEntries.add(entry);
    }
    if (stored.length > 0) this.log.info({ count: stored.length }, `mqtt: ${stored.length} unacknowledged message(s) from the last run will be sent again`);
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

  /** A batch of sends could not be written to the database: those messages are not in flight. */
  private onStoreError(err: Error, lostMessageIds: number[]): void {
    this.counters.lastError = err.message;
    this.log.error({ err: err.message, lost: lostMessageIds.length }, `mqtt: ${err.message}`);
    for (const messageId of lostMessageIds) {
      const entry = this.byMessageId.get(messageId);
      if (!entry) continue;
      this.byMessageId.delete(messageId);
      this.finish(entry, { ok: false, permanent: false, reason: err.message });
    }
    this.schedulePump();
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

/** The size of the PUBLISH on the wire (fixed header, topic, packet id, empty MQTT 5 properties, payload). */
function publishPacketSize(entry: Entry, protocolVersion: 4 | 5): number {
  const remaining = 2 + Buffer.byteLength(entry.topic, 'utf8') + 2 + (protocolVersion === 5 ? 1 : 0) + entry.payload.length;
  const lengthBytes = remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4;
  return 1 + lengthBytes + remaining;
}
