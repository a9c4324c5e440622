import type { EventEmitter } from 'node:events';
import { createServer, isIP, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Aedes, Client, ConnectPacket, PublishPacket, Subscription } from 'aedes';
import { isOutboxError } from '../outbox/types.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import { LIMIT_DEFAULTS } from '../config/schema.js';
import { depthMessage, jsonDeeperThan } from '../util/json-limits.js';
import type { HeldListener } from '../util/held-listener.js';
import { dropPacketNumberCache } from '../util/mqtt-packet-cache.js';
import { BoundedSocket, type ReadGate } from './bounded-socket.js';
import type { BrokerPersistence } from './broker-persistence.js';

/**
 * The local MQTT listener (`features.localBroker`): an embedded aedes broker on loopback where local
 * apps hand telemetry to the agent and talk to each other while the device is offline.
 *
 * - **Topics.** Clients may publish only under `local/`. `local/telemetry/{stream}` (stream: 1-64
 *   letters, digits, `.`, `_`, `-`, starting with a letter or digit, as for `POST /v2/telemetry`)
 *   is telemetry for the cloud; every other `local/...` topic is module-to-module traffic, routed to
 *   local subscribers as by any broker and never sent anywhere else. Anything outside `local/`
 *   (`iot/...` above all) is refused, so a local app cannot speak for the device toward the cloud.
 *   A will outside `local/` is refused at CONNECT for the same reason.
 * - **Shadow.** `local/shadow/reported` takes a JSON merge patch of the device shadow's reported
 *   state (acknowledged once stored); the agent publishes `local/shadow/desired` (retained) with
 *   the desired state and what the reported state does not match yet. Apps may not publish anything
 *   else under `local/shadow/`, so no app can tell the others what to do.
 * - **Durable before acknowledged.** A telemetry publish is handed to `ingest` in aedes's
 *   authorizePublish step, which runs before aedes writes the PUBACK (QoS 1) or PUBREC (QoS 2) and
 *   before local subscribers get the message: the app's acknowledgement means "on disk".
 * - **Telemetry payloads** must be UTF-8 JSON of at most `maxPayloadBytes`, nested at most
 *   `maxJsonDepth` deep; module-to-module payloads are opaque bytes.
 * - **Bounded.** aedes holds a packet whole until its last byte, whatever size it announces, so each
 *   connection's bytes pass through a frame scanner first: a client that announces a packet over
 *   `limits.maxLocalPacketBytes` is disconnected before the packet is read. At most
 *   `limits.maxLocalConnections` connections are held; more are closed as they arrive.
 * - **Refusals.** aedes (1.x) speaks MQTT 3.1 and 3.1.1 only: it answers an MQTT 5 CONNECT with
 *   "unacceptable protocol version", so there are no PUBACK reason codes to send, and MQTT 3.1.1 has
 *   no negative PUBACK. Every refusal is published (QoS 1, not retained) on
 *   `local/errors/{clientId}` (the id URI-encoded) as JSON naming the topic, the code and the reason,
 *   counted in `stats().refused` and logged once per client connection and code. Then:
 *   - a message refused for what it is (topic outside `local/`, bad stream name, payload not JSON or
 *     too large, the shadow refusing the patch, the outbox refusing the item itself) is acknowledged
 *     (PUBACK / PUBREC) and routed nowhere: sending it again could never succeed, and a client with
 *     a persistent session would otherwise send it at every reconnect, forever;
 *   - a message refused for the agent's state (the outbox at a limit, as the telemetry channel's
 *     `onLimit` says: docs/outbox.md; a write failing; the broker stopping) closes the connection
 *     without an acknowledgement, so it stays in the app's in-flight store and its client sends it
 *     again after reconnecting (mqtt.js does so by default; mosquitto_pub exits 7): a full queue
 *     turns into a retry at the app's reconnect period, not a loss.
 *   A QoS 0 message refused is lost, which is what QoS 0 promises.
 * - **Persistent.** With a `persistence` (broker-persistence.ts), retained messages, persistent
 *   sessions (clean session false), their queued and in-flight messages and wills are in the agent's
 *   database and outlive a restart. A retained publish is stored before it is acknowledged.
 * - **At least once.** A PUBACK lost with a dropped connection makes the app send the message again,
 *   and it is queued again under a new id: apps that care put their own id in the payload.
 * - **Backpressure.** aedes reads nothing more from a client until every packet of the chunk it last
 *   read is handled, `ingest` included, so a fast publisher is slowed to the outbox's pace by TCP
 *   itself (the publishes of one chunk are ingested together and share the outbox's group commit).
 *   While the outbox delivers, `gate` (the LoopShare) pauses reading after each ingest turn, so that
 *   a flood leaves the delivery more than half the event loop (outbox/loop-share.ts).
 * - **No authentication.** The listener binds to loopback by default, so only processes on the
 *   device reach it. Binding it elsewhere lets any host that can reach the port write into the
 *   outbox; `start` logs a warning when the host is not a loopback address.
 */

export const LOCAL_PREFIX = 'local/';
export const LOCAL_TELEMETRY_PREFIX = 'local/telemetry/';
/** The device shadow's topics: apps publish reported patches; the agent publishes desired (retained). */
export const LOCAL_SHADOW_PREFIX = 'local/shadow/';
export const LOCAL_SHADOW_REPORTED = 'local/shadow/reported';
export const LOCAL_SHADOW_DESIRED = 'local/shadow/desired';
/** The agent publishes each refusal on `local/errors/{clientId}`; apps may not publish under it. */
export const LOCAL_ERRORS_PREFIX = 'local/errors/';
/**
 * Where a refused message that is acknowledged goes instead of its topic: no subscriber may match it
 * (see `authorizeSubscribe`) and nothing is forwarded on it (`authorizeForward`).
 */
const REFUSED_SINK = '$agent/refused';
const SINK_PREFIX = '$agent/';
/** The same rule as the local API's `POST /v2/telemetry`. */
const STREAM = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576;

export type LocalBrokerErrorCode =
  | 'LOCAL_BROKER_LISTEN_FAILED'
  | 'LOCAL_BROKER_STARTED'
  | 'LOCAL_BROKER_STOPPING'
  | 'LOCAL_TOPIC_FORBIDDEN'
  | 'LOCAL_STREAM_INVALID'
  | 'LOCAL_PAYLOAD_INVALID'
  | 'LOCAL_PAYLOAD_TOO_LARGE'
  | 'LOCAL_PACKET_TOO_LARGE'
  | 'LOCAL_INGEST_REFUSED'
  | 'LOCAL_SHADOW_REFUSED'
  | 'LOCAL_BROKER_WRITE_FAILED';

export class LocalBrokerError extends AgentError {
  declare readonly code: LocalBrokerErrorCode;
  constructor(code: LocalBrokerErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'LocalBrokerError';
  }
}

export interface LocalBrokerOptions {
  /** Default `127.0.0.1`. The listener has no authentication: keep it on loopback. */
  host?: string;
  /** Default 1884; 0 picks a free port (`start` returns it). */
  port?: number;
  /** Makes a telemetry message durable; resolves once it is on disk, rejects when the queue refuses it. */
  ingest: (stream: string, payload: Json) => Promise<void>;
  logger: Logger;
  /** Largest telemetry payload accepted, in bytes. Default 1 MiB (the local API's body limit). */
  maxPayloadBytes?: number;
  /** Largest MQTT packet a client may send (`limits.maxLocalPacketBytes`). */
  maxPacketBytes?: number;
  /** Most connections at once (`limits.maxLocalConnections`). */
  maxConnections?: number;
  /** Deepest JSON nesting of a telemetry or shadow payload (`limits.maxJsonDepth`). */
  maxJsonDepth?: number;
  /**
   * Applies a reported-state patch published on `local/shadow/reported` (the shadow's `patch`);
   * throws to refuse it. Absent: the shadow is off and the topic is refused.
   */
  shadowReported?: (patch: Json) => void;
  /** Shares the event loop with delivery (the LoopShare): clients are not read while it pauses. */
  gate?: ReadGate;
  /** Keeps retained messages and persistent sessions across restarts; absent: aedes's in-memory store. */
  persistence?: BrokerPersistence;
}

export interface LocalBrokerStats {
  /** MQTT clients connected now. */
  clients: number;
  /** Telemetry messages `ingest` accepted (each one acknowledged to its app after that). */
  accepted: number;
  /** Publishes refused, for any reason. */
  refused: number;
  /** Of those, the ones acknowledged (refused for what they are: the client does not send them again). */
  refusedAcknowledged: number;
  /** Connections closed for a packet over `limits.maxLocalPacketBytes`. */
  oversizePackets: number;
  /** Connections closed on arrival because `limits.maxLocalConnections` were open. */
  connectionsRefused: number;
  /** Retained topics kept, and messages queued for persistent sessions (0 without a persistence). */
  retained: number;
  queued: number;
  /** Retained messages not kept at `localBroker.maxRetained`; queued ones dropped at `localBroker.maxQueuedPerClient`. */
  retainedDropped: number;
  queuedDropped: number;
}

/** What a publish to `topic` is: telemetry for the outbox, local traffic, or refused (and why). */
export type LocalPublish =
  | { kind: 'telemetry'; stream: string; payload: Json }
  | { kind: 'shadow-reported'; payload: Json }
  | { kind: 'local' }
  | { kind: 'refused'; error: LocalBrokerError };

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function classifyLocalPublish(topic: string, payload: Buffer | string, maxPayloadBytes: number, maxJsonDepth: number = LIMIT_DEFAULTS.maxJsonDepth): LocalPublish {
  if (!topic.startsWith(LOCAL_PREFIX)) {
    return refused('LOCAL_TOPIC_FORBIDDEN', `topic "${topic}": local apps may publish only under "${LOCAL_PREFIX}"`);
  }
  if (topic.startsWith(LOCAL_ERRORS_PREFIX)) {
    return refused('LOCAL_TOPIC_FORBIDDEN', `topic "${topic}": "${LOCAL_ERRORS_PREFIX}" is the agent's, where it reports refusals`);
  }
  if (topic.startsWith(LOCAL_SHADOW_PREFIX)) {
    // The agent alone publishes the desired state: an app must not be able to tell the others what to do.
    if (topic !== LOCAL_SHADOW_REPORTED) return refused('LOCAL_TOPIC_FORBIDDEN', `topic "${topic}": local apps may publish only ${LOCAL_SHADOW_REPORTED} under "${LOCAL_SHADOW_PREFIX}"`);
    const parsed = jsonPayload(topic, payload, maxPayloadBytes, maxJsonDepth);
    return 'kind' in parsed ? parsed : { kind: 'shadow-reported', payload: parsed.json };
  }
  if (!topic.startsWith(LOCAL_TELEMETRY_PREFIX)) return { kind: 'local' };
  const stream = topic.slice(LOCAL_TELEMETRY_PREFIX.length);
  if (!STREAM.test(stream)) {
    return refused('LOCAL_STREAM_INVALID', `topic "${topic}": expected ${LOCAL_TELEMETRY_PREFIX}{stream}, a stream name of 1-64 letters, digits, ".", "_" or "-"`);
  }
  const parsed = jsonPayload(topic, payload, maxPayloadBytes, maxJsonDepth);
  return 'kind' in parsed ? parsed : { kind: 'telemetry', stream, payload: parsed.json };
}

function jsonPayload(topic: string, payload: Buffer | string, maxPayloadBytes: number, maxJsonDepth: number): { json: Json } | Extract<LocalPublish, { kind: 'refused' }> {
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (bytes.length > maxPayloadBytes) {
    return refused('LOCAL_PAYLOAD_TOO_LARGE', `topic "${topic}": a payload of ${bytes.length} bytes, expected at most ${maxPayloadBytes}`);
  }
  if (jsonDeeperThan(bytes, maxJsonDepth)) return refused('LOCAL_PAYLOAD_INVALID', `topic "${topic}": ${depthMessage('the payload', 'limits.maxJsonDepth', maxJsonDepth)}`);
  try {
    return { json: JSON.parse(utf8.decode(bytes)) as Json };
  } catch {
    return refused('LOCAL_PAYLOAD_INVALID', `topic "${topic}": expected a UTF-8 JSON payload`);
  }
}

function refused(code: LocalBrokerErrorCode, message: string): Extract<LocalPublish, { kind: 'refused' }> {
  return { kind: 'refused', error: new LocalBrokerError(code, message) };
}

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  const h = host.toLowerCase();
  return h === '::1' || h.startsWith('::ffff:127.');
}

interface Running {
  aedes: Aedes;
  server: Server;
  sockets: Set<Socket>;
}

export class LocalBroker {
  private readonly host: string;
  private readonly port: number;
  private readonly maxPayloadBytes: number;
  private readonly maxPacketBytes: number;
  private readonly maxJsonDepth: number;
  private readonly log: Logger;
  private oversizePackets = 0;
  private connectionsRefused = 0;
  /** Connections refused since the last one accepted: only the first of a run is logged. */
  private refusedInRun = 0;
  private running: Running | undefined;
  private stopping = false;
  /** `ingest` calls not settled yet: `stop` waits for them, so none runs after it returns. */
  private readonly pending = new Set<Promise<void>>();
  private accepted = 0;
  private refused = 0;
  private refusedAcknowledged = 0;
  /** clientId → refusal codes logged during its connection: one warning each, the rest at debug. */
  private readonly refusalsLogged = new Map<string, Set<string>>();

  constructor(private readonly o: LocalBrokerOptions) {
    this.host = o.host ?? '127.0.0.1';
    this.port = o.port ?? 1884;
    this.maxPayloadBytes = o.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
    this.maxPacketBytes = o.maxPacketBytes ?? LIMIT_DEFAULTS.maxLocalPacketBytes;
    this.maxJsonDepth = o.maxJsonDepth ?? LIMIT_DEFAULTS.maxJsonDepth;
    this.log = o.logger;
  }

  /**
   * Starts listening; rejects with LOCAL_BROKER_LISTEN_FAILED (port taken, bad host) and keeps nothing open.
   * `held`: the port bound early in the start (its waiting clients are served now), used when it is `host:port`.
   */
  async start(held?: HeldListener): Promise<{ port: number }> {
    if (this.running) throw new LocalBrokerError('LOCAL_BROKER_STARTED', 'the local broker is already started');
    this.stopping = false;
    // Loaded here, not at the agent's start: a device with the broker off never holds aedes.
    const { Aedes: Broker } = await import('aedes');
    await dropPacketNumberCache();
    const aedes = await Broker.createBroker({
      preConnect: (client, packet, done) => this.checkConnect(client, packet, done),
      authorizePublish: (client, packet, done) => this.authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => this.authorizeSubscribe(client, sub, done),
      authorizeForward: (_client, packet) => (packet.topic === REFUSED_SINK ? null : packet),
      ...(this.o.persistence ? { persistence: this.o.persistence } : {}),
    });
    // aedes emits 'error' for persistence failures; without a listener it would throw.
    const emitter: EventEmitter = aedes;
    emitter.on('error', (err: unknown) => this.log.error({ err: errorMessage(err) }, 'local broker error'));
    aedes.on('clientError', (client, err) => this.log.debug({ clientId: client.id, err: err.message }, 'local client closed on error'));
    aedes.on('connectionError', (_client, err) => this.log.debug({ err: err.message }, 'local connection closed on error'));
    aedes.on('client', (client) => this.log.debug({ clientId: client.id }, 'local client connected'));
    aedes.on('clientDisconnect', (client) => {
      this.refusalsLogged.delete(client.id);
      this.log.debug({ clientId: client.id }, 'local client disconnected');
    });

    const sockets = new Set<Socket>();
    const onConnection = (socket: Socket): void => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      // A PUBACK is a few bytes sent alone: with Nagle's algorithm it waits for the client's delayed
      // ACK (40 ms on Linux), and a client that waits for each PUBACK gets about 20 a second.
      socket.setNoDelay(true);
      if (this.refusedInRun > 0) {
        this.log.warn({ refused: this.refusedInRun }, `local broker: ${this.refusedInRun} connection(s) were refused while limits.maxLocalConnections (${this.o.maxConnections ?? LIMIT_DEFAULTS.maxLocalConnections}) were open`);
        this.refusedInRun = 0;
      }
      aedes.handle(new BoundedSocket(socket, this.maxPacketBytes, (size) => this.onOversize(socket, size), this.o.gate));
    };
    let server: Server;
    try {
      server = await this.listen(onConnection, held);
    } catch (err) {
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      throw new LocalBrokerError('LOCAL_BROKER_LISTEN_FAILED', `local broker: cannot listen on ${this.host}:${this.port}: ${errorMessage(err)}`, { cause: err });
    }
    server.on('error', (err) => this.log.error({ err: err.message }, 'local broker listener error'));
    this.running = { aedes, server, sockets };
    const { port } = server.address() as AddressInfo;
    if (isLoopbackHost(this.host)) {
      this.log.info({ host: this.host, port }, 'local MQTT broker listening');
    } else {
      this.log.warn({ host: this.host, port }, 'local MQTT broker listening on a non-loopback address: any host that reaches it can publish telemetry, without authentication');
    }
    return { port };
  }

  /** Node closes connections past maxConnections as they arrive, and says so with 'drop'. */
  private limit(server: Server): Server {
    server.maxConnections = this.o.maxConnections ?? LIMIT_DEFAULTS.maxLocalConnections;
    server.on('drop', (d) => {
      this.connectionsRefused++;
      if (this.refusedInRun++ === 0) {
        this.log.warn({ remote: `${d?.remoteAddress ?? '?'}:${d?.remotePort ?? '?'}` }, `local broker: connection refused, limits.maxLocalConnections (${server.maxConnections}) are open`);
      }
    });
    return server;
  }

  /** The held listener when it is this broker's address, else a new one. */
  private async listen(onConnection: (socket: Socket) => void, held: HeldListener | undefined): Promise<Server> {
    if (held?.available && held.host === this.host && held.requestedPort === this.port) {
      this.limit(held.netServer);
      held.adopt(onConnection);
      return held.netServer;
    }
    await held?.close();
    const server = this.limit(createServer(onConnection));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server;
  }

  /** Closes the listener and every connection, waits for `ingest` calls under way, then closes aedes. Idempotent. */
  async stop(): Promise<void> {
    const running = this.running;
    if (!running) return;
    this.running = undefined;
    this.stopping = true;
    const { aedes, server, sockets } = running;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    // Not every socket is an aedes client yet (one may not have sent CONNECT): end them all here.
    for (const s of sockets) s.destroy();
    await closed;
    await Promise.allSettled([...this.pending]);
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    this.o.persistence?.flush();
    this.refusalsLogged.clear();
    this.log.info('local MQTT broker stopped');
  }

  /**
   * Publishes a retained QoS 1 message from the agent itself to local subscribers (the shadow's
   * desired state). Not run through the client rules; a no-op while the broker is not running.
   */
  publishRetained(topic: string, payload: string): void {
    const running = this.running;
    if (!running) return;
    running.aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: true, dup: false }, (err) => {
      if (err) this.log.warn({ topic, err: err.message }, `local broker: could not publish on ${topic}`);
    });
  }

  stats(): LocalBrokerStats {
    const p = this.o.persistence?.stats();
    return {
      clients: this.running?.aedes.connectedClients ?? 0,
      accepted: this.accepted,
      refused: this.refused,
      refusedAcknowledged: this.refusedAcknowledged,
      oversizePackets: this.oversizePackets,
      connectionsRefused: this.connectionsRefused,
      retained: p?.retained ?? 0,
      queued: p?.queued ?? 0,
      retainedDropped: p?.retainedDropped ?? 0,
      queuedDropped: p?.queuedDropped ?? 0,
    };
  }

  /** No client may subscribe where acknowledged refusals go (granted: failure, 0x80). */
  private authorizeSubscribe(_client: Client | null, sub: Subscription, done: (err: Error | null, sub: Subscription | null) => void): void {
    done(null, sub.topic.startsWith(SINK_PREFIX) ? null : sub);
  }

  /** A will is published on the client's behalf later: the same topic rules apply, checked up front. */
  private checkConnect(_client: Client, packet: ConnectPacket, done: (err: Error | null, ok: boolean) => void): void {
    const will = packet.will;
    if (will) {
      const verdict = classifyLocalPublish(will.topic, will.payload, this.maxPayloadBytes, this.maxJsonDepth);
      if (verdict.kind === 'refused') {
        this.log.warn({ clientId: packet.clientId, code: verdict.error.code, reason: verdict.error.message }, 'local client refused: its will breaks the topic rules');
        done(verdict.error, false);
        return;
      }
    }
    done(null, true);
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const clientId = client?.id ?? null;
    if (this.stopping) {
      this.refused++;
      done(new LocalBrokerError('LOCAL_BROKER_STOPPING', 'the local broker is stopping'));
      return;
    }
    const verdict = classifyLocalPublish(packet.topic, packet.payload, this.maxPayloadBytes, this.maxJsonDepth);
    if (verdict.kind === 'refused') {
      this.refuse(clientId, packet, verdict.error, done, 'acknowledge');
      return;
    }
    if (verdict.kind === 'local') {
      this.keepRetained(clientId, packet, done);
      return;
    }
    if (verdict.kind === 'shadow-reported') {
      // The shadow commits synchronously: the PUBACK that follows means "stored".
      try {
        if (!this.o.shadowReported) throw new Error('the device shadow is off here (features.shadow is false)');
        this.o.shadowReported(verdict.payload);
      } catch (err) {
        const refusal = new LocalBrokerError('LOCAL_SHADOW_REFUSED', `topic "${packet.topic}": ${errorMessage(err)}`, { cause: err });
        this.refuse(clientId, packet, refusal, done, 'acknowledge');
        return;
      }
      this.accepted++;
      this.keepRetained(clientId, packet, done);
      return;
    }
    const settled = this.o.ingest(verdict.stream, verdict.payload).then(
      () => {
        this.accepted++;
        this.keepRetained(clientId, packet, done);
      },
      (err: unknown) => {
        const refusal = new LocalBrokerError('LOCAL_INGEST_REFUSED', `topic "${packet.topic}": the agent could not queue it: ${errorMessage(err)}`, { cause: err });
        // The item itself (too large, invalid) will never be taken; a full queue or a failed write may be later.
        const forGood = isOutboxError(err, 'OUTBOX_TOO_LARGE') || isOutboxError(err, 'OUTBOX_INVALID');
        this.refuse(clientId, packet, refusal, done, forGood ? 'acknowledge' : 'disconnect', isOutboxError(err) ? err.code : undefined);
      },
    );
    // `done` hands control to aedes; anything it throws is a bug to see in the log, not a lost rejection.
    const tracked = settled.catch((err: unknown) => this.log.error({ err: errorMessage(err), topic: packet.topic }, 'local broker failed after ingest'));
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  /** A retained message is stored before its PUBACK, so an acknowledged one outlives a kill -9 (aedes stores it after). */
  private keepRetained(clientId: string | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const persistence = this.o.persistence;
    if (!packet.retain || !persistence) {
      done(null);
      return;
    }
    persistence.storeRetained({ cmd: 'publish', topic: packet.topic, payload: packet.payload, qos: packet.qos, retain: true }).then(
      () => done(null),
      (err: unknown) => this.refuse(clientId, packet, new LocalBrokerError('LOCAL_BROKER_WRITE_FAILED', `topic "${packet.topic}": the retained message could not be stored: ${errorMessage(err)}`, { cause: err }), done, 'disconnect'),
    );
  }

  private onOversize(socket: Socket, size: number): void {
    this.oversizePackets++;
    const what = size < 0 ? 'a packet with a malformed length' : `a packet of ${size} bytes`;
    this.log.warn(
      { remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, bytes: size, limit: this.maxPacketBytes },
      `local broker: client disconnected: it announced ${what}, over limits.maxLocalPacketBytes (${this.maxPacketBytes})`,
    );
  }

  /**
   * Refuses a publish visibly (see the header): reported on local/errors/{clientId}, counted, logged once
   * per client connection and code; then either acknowledged and routed nowhere, or left unacknowledged
   * with the connection closed so the client sends it again later.
   */
  private refuse(clientId: string | null, packet: PublishPacket, error: LocalBrokerError, done: (err?: Error | null) => void, how: 'acknowledge' | 'disconnect', outboxCode?: string): void {
    this.refused++;
    const topic = packet.topic;
    const acknowledged = how === 'acknowledge';
    const fields = { clientId, topic, code: error.code, ...(outboxCode ? { outboxCode } : {}), reason: error.message };
    const msg = acknowledged ? 'local publish refused: acknowledged and dropped, the reason published on local/errors/{clientId}' : 'local publish refused: closing the client without an acknowledgement, so it sends the message again later';
    if (this.firstRefusal(clientId, outboxCode ?? error.code)) this.log.warn(fields, msg);
    else this.log.debug(fields, msg);
    if (clientId !== null) this.report(clientId, { topic, code: error.code, ...(outboxCode ? { outboxCode } : {}), reason: error.message, acknowledged });
    if (!acknowledged) {
      done(error);
      return;
    }
    this.refusedAcknowledged++;
    // aedes acknowledges what is authorized: the message goes where nothing is stored or forwarded.
    packet.topic = REFUSED_SINK;
    packet.payload = Buffer.alloc(0);
    packet.retain = false;
    done(null);
  }

  private firstRefusal(clientId: string | null, code: string): boolean {
    if (clientId === null) return true;
    let codes = this.refusalsLogged.get(clientId);
    if (!codes) {
      codes = new Set();
      this.refusalsLogged.set(clientId, codes);
    }
    if (codes.has(code)) return false;
    codes.add(code);
    return true;
  }

  private report(clientId: string, what: Record<string, unknown>): void {
    const running = this.running;
    if (!running) return;
    const topic = `${LOCAL_ERRORS_PREFIX}${encodeURIComponent(clientId)}`;
    const payload = Buffer.from(JSON.stringify({ clientId, ...what }));
    running.aedes.publish({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false }, (err) => {
      if (err) this.log.debug({ topic, err: err.message }, `local broker: could not publish on ${topic}`);
    });
  }
}
