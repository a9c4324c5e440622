import type { Database } from 'better-sqlite3';
import { ErrorWithReasonCode, type IClientPublishOptions, type PacketCallback } from 'mqtt';
import type { ConnectionMonitor } from '../resilience/connection-monitor.js';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import type { MqttVersion } from './negotiation.js';
import { hex, isPermanentPubackFailure, isPubackFailure, reasonName } from './reasons.js';
import { SqliteMqttStore, type StoreDurability } from './sqlite-store.js';
import { publishTopicProblem } from './topics.js';

/**
 * The session's publish window: the QoS 1 publishes on their way to the broker, from the caller's
 * `publish` to the PUBACK.
 *
 * - **Bound**: at most `maxInflight` publishes are unacknowledged at once (fewer when the broker's
 *   MQTT 5 Receive Maximum says so); further publishes wait in memory, in call order.
 * - **Ids**: a publish whose id is on its way joins it; an answer nobody waited for is kept for the
 *   next publish of its id (see `UNCLAIMED_OUTCOMES_KEPT`).
 * - **PUBACKs** are mapped to messages by packet id, whatever order they come in.
 * - **Across connections**: a message in the in-flight store stays in flight when a connection ends
 *   (mqtt.js re-sends it on the next one); the store's rows of an earlier run are restored at start.
 *
 * The connection's life (connect, reconnect, watchdog) is not this class's: it `attach`es each ready
 * connection and reports the broker's limits from the CONNACK.
 */

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

/** What the window needs of a connection: where to publish, and whether it still takes new sends. */
export interface PublishLink {
  /** The connection is up and mqtt.js has re-sent what was in flight; cleared once it is going away. */
  ready: boolean;
  readonly version: MqttVersion;
  readonly client: { publish(topic: string, message: Buffer, opts: IClientPublishOptions, callback?: PacketCallback): unknown };
}

/** The broker's limits from its (MQTT 5) CONNACK; absent when it announced none. */
export interface BrokerLimits {
  receiveMaximum?: number | undefined;
  maximumPacketSize?: number | undefined;
}

export interface WindowCounts {
  /** Publishes sent (or stored to be re-sent) and not yet acknowledged. */
  inflight: number;
  /** Publishes waiting for an in-flight slot or a connection. */
  queued: number;
  acknowledged: number;
  /** Refused by the broker (PUBACK reason code >= 0x80). */
  rejected: number;
}

export interface PublishWindowDeps {
  /** The agent's database, opened with `MQTT_MIGRATION` among its migrations. */
  db: Database;
  maxInflight: number;
  /** Commit strength of the in-flight table (see `MqttSessionDeps.inflightDurability`). */
  durability: StoreDurability;
  /** PUBACKs mark the `mqtt` channel's `publish` operation a success. */
  monitor: Pick<ConnectionMonitor, 'markSuccess' | 'channelStatus'>;
  clock: Pick<Clock, 'now' | 'monotonic'>;
  logger: Logger;
  /** A batch of sends could not be written to the database (for the session's `lastError`). */
  onStoreError?: (message: string) => void;
}

type EntryState = 'queued' | 'sending' | 'stored' | 'done';

interface Waiter {
  resolve(outcome: PublishOutcome): void;
  detach(): void;
}

/** One message on its way: queued for a slot, handed to mqtt.js, or in the store awaiting its PUBACK. */
export interface WindowEntry {
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

/** Marks of success at most this often while the channel is online: one per PUBACK would cost a drain. */
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
export const UNCLAIMED_OUTCOMES_KEPT = 10_000;

export class PublishWindow {
  /** mqtt.js's `outgoingStore` for every connection: the in-flight table. */
  readonly outgoing: SqliteMqttStore<WindowEntry>;
  private readonly deps: PublishWindowDeps;
  private readonly byId = new Map<string, WindowEntry>();
  private readonly unclaimed = new Map<string, PublishOutcome>();
  private readonly byMessageId = new Map<number, WindowEntry>();
  private readonly inflightEntries = new Set<WindowEntry>();
  /** Sends that must go first: the message sent ahead (the birth), then sends that never reached the store. */
  private readonly urgent: WindowEntry[] = [];
  private readonly queue: WindowEntry[] = [];
  private link: PublishLink | undefined;
  private stopping = false;
  private ahead: WindowEntry | undefined;
  private pumpScheduled = false;
  /** The broker's maximum packet size (MQTT 5 CONNACK), when it announced one. */
  private maximumPacketSize: number | undefined;
  /** In-flight window of the current connection: maxInflight, or less if the broker's Receive Maximum says so. */
  private window: number;
  private lastPublishMark = -Infinity;
  private acknowledged = 0;
  private rejected = 0;

  constructor(deps: PublishWindowDeps) {
    this.deps = deps;
    this.window = deps.maxInflight;
    this.outgoing = new SqliteMqttStore<WindowEntry>(deps.db, 'outgoing', {
      clock: deps.clock,
      durability: deps.durability,
      onError: (err, lost) => this.onStoreError(err, lost),
      onStored: (entry, messageId) => {
        // Stryker disable next-line BooleanLiteral: equivalent: untagging a stored entry is a no-op of the store (its put took the tag); this only skips the call
        entry.tagged = false;
        entry.messageId = messageId;
        entry.state = 'stored';
        this.byMessageId.set(messageId, entry);
      },
    });
  }

  /** Set by `close`: nothing more is taken or sent. */
  get stopped(): boolean {
    return this.stopping;
  }

  counts(): WindowCounts {
    return { inflight: this.inflightEntries.size, queued: this.urgent.length + this.queue.length, acknowledged: this.acknowledged, rejected: this.rejected };
  }

  /** Takes one publish; `done` is called once with its outcome (synchronously when it is known at once). See `MqttSession.publish`. */
  submit(req: PublishRequest, done: (outcome: PublishOutcome) => void): void {
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
      entry = newEntry(req.id, req.topic, payload, req.retain === true, req.heldByCaller === true);
      this.byId.set(req.id, entry);
      this.queue.push(entry);
      this.schedulePump();
    }
    this.wait(entry, done, req.signal);
  }

  /**
   * Sends a message (held in memory, like a held publish) ahead of everything waiting: the birth of
   * each connection. One sent ahead earlier that is still waiting is superseded by it.
   */
  sendAhead(message: { id: string; topic: string; payload: Buffer; retain: boolean }, done: (outcome: PublishOutcome) => void): void {
    const stale = this.ahead;
    if (stale?.state === 'queued') {
      const i = this.urgent.indexOf(stale);
      // Stryker disable next-line ConditionalExpression,EqualityOperator: equivalent: left in the list, the finished entry is skipped by pump(); this only frees it sooner
      if (i >= 0) this.urgent.splice(i, 1);
      this.finish(stale, { ok: false, permanent: false, reason: 'superseded' });
    }
    const entry = newEntry(message.id, message.topic, message.payload, message.retain, true);
    this.byId.set(entry.id, entry);
    this.urgent.unshift(entry);
    this.ahead = entry;
    this.wait(entry, done);
  }

  /** The CONNACK of a new connection accepted us: its limits hold from now on. */
  setBrokerLimits(limits: BrokerLimits): void {
    this.maximumPacketSize = limits.maximumPacketSize;
    // MQTT 5: more unacknowledged QoS 1 publishes than the broker's Receive Maximum is a protocol
    // error that costs the connection; mqtt.js does not enforce it, so the window does.
    this.window = Math.min(this.deps.maxInflight, limits.receiveMaximum ?? this.deps.maxInflight);
  }

  /** New publishes go through `link` while it is ready. */
  attach(link: PublishLink): void {
    this.link = link;
    this.schedulePump();
  }

  /** `link` closed: what it had in the store waits there for the next connection. */
  // Stryker disable next-line BlockStatement: equivalent: a detached link is never ready again (the connection's life clears it first), so pump() sends nothing through it
  detach(link: PublishLink): void {
    if (this.link === link) this.link = undefined;
  }

  /** A PUBACK (mqtt.js's `packetreceive`), matched to its message by packet id. */
  onPuback(messageId: number | undefined, reasonCode: number | undefined, reasonString: string | undefined): void {
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
      this.acknowledged++;
      this.finish(entry, ACKED);
    } else {
      const rc = reasonCode as number;
      const reason = `${reasonName(rc)} (${hex(rc)})${reasonString ? `: ${reasonString}` : ''}`;
      this.rejected++;
      const permanent = isPermanentPubackFailure(rc);
      this.deps.logger.warn({ id: entry.id, topic: entry.topic, reasonCode: rc, permanent }, `mqtt: the broker refused message ${entry.id} on ${entry.topic}: ${reason}`);
      this.finish(entry, permanent ? { ok: false, permanent: true, reasonCode: rc, reason } : { ok: false, permanent: false, reasonCode: rc, reason });
    }
    this.schedulePump();
  }

  /**
   * Stops taking publishes. Every waiting caller gets `outcome`. Messages not yet sent are dropped
   * from memory (the caller still has them); messages in the store stay there for the next start.
   */
  close(outcome: PublishOutcome): void {
    this.stopping = true;
    // Stryker disable next-line ArrayDeclaration: equivalent: the loop below resolves the same waiters with the same outcome; this also marks the entries done
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
  restore(): void {
    const stored = this.outgoing.publishes();
    for (const p of stored) {
      // Stryker disable next-line StringLiteral: equivalent: nobody publishes under this id; the entry is found by its packet id
      const entry = newEntry(p.appId ?? `mqtt-stored-${p.messageId}`, p.topic, p.payload, p.retain, false);
      entry.state = 'stored';
      entry.messageId = p.messageId;
      this.byId.set(entry.id, entry);
      this.byMessageId.set(p.messageId, entry);
      this.inflightEntries.add(entry);
    }
    if (stored.length > 0) this.deps.logger.info({ count: stored.length }, `mqtt: ${stored.length} unacknowledged message(s) from the last run will be sent again`);
  }

  private schedulePump(): void {
    // Stryker disable next-line ConditionalExpression: equivalent: a second pump in the same turn finds nothing more to send
    if (this.pumpScheduled) return;
    // Stryker disable next-line BooleanLiteral: equivalent: as above
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Hands waiting messages to mqtt.js while there is a connection and a free in-flight slot. */
  private pump(): void {
    const link = this.link;
    if (!link || this.stopping) return;
    // `ready` is read on every turn: mqtt.js refuses a send of a client that is ending (the frame
    // guard ended it) synchronously, and the refused message goes back to the front of `urgent`.
    while (link.ready && this.inflightEntries.size < this.window) {
      const entry = this.urgent.shift() ?? this.queue.shift();
      if (!entry) return;
      if (entry.state !== 'queued') continue;
      this.send(link, entry);
    }
  }

  private send(link: PublishLink, entry: WindowEntry): void {
    const size = publishPacketSize(entry, link.version);
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
    link.client.publish(entry.topic, entry.payload, entry.retain ? QOS1_RETAINED : QOS1, (err) => {
      if (!err || err instanceof ErrorWithReasonCode || entry.state === 'done') return;
      this.sendFailed(link, entry, err);
    });
  }

  /**
   * A send ended without a PUBACK ("Connection closed", "client disconnecting"): the connection is
   * going away, so it takes nothing more. A message in the store stays there (the next connection
   * re-sends it); one that never reached it waits for the next connection, ahead of the queue.
   */
  private sendFailed(link: PublishLink, entry: WindowEntry, err: Error): void {
    link.ready = false;
    this.untag(entry);
    if (entry.messageId !== undefined && this.outgoing.has(entry.messageId)) return;
    if (entry.messageId !== undefined) this.byMessageId.delete(entry.messageId);
    entry.messageId = undefined;
    this.inflightEntries.delete(entry);
    const code = (err as { code?: unknown }).code;
    if (code === 'MQTT_STORE_WRITE_FAILED') {
      this.finish(entry, { ok: false, permanent: false, reason: err.message });
      // Stryker disable next-line ConditionalExpression,BlockStatement: equivalent: at a stop close() has answered every waiter already; this only keeps the entry from being queued again
    } else if (this.stopping) {
      // Stryker disable next-line ObjectLiteral,StringLiteral,BooleanLiteral: equivalent: as above, nobody waits for this outcome any more
      this.finish(entry, { ok: false, permanent: false, reason: 'the MQTT session stopped' });
    } else {
      entry.state = 'queued';
      this.urgent.push(entry);
    }
  }

  private untag(entry: WindowEntry): void {
    if (!entry.tagged) return;
    entry.tagged = false;
    this.outgoing.untag(entry);
  }

  /** The message is no longer on its way: tell every waiter, free its slot and its id. */
  private finish(entry: WindowEntry, outcome: PublishOutcome): void {
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
  private wait(entry: WindowEntry, resolve: (outcome: PublishOutcome) => void, signal?: AbortSignal): void {
    // Stryker disable next-line ConditionalExpression,ObjectLiteral,BooleanLiteral,StringLiteral: equivalent: submit() answers a signal aborted already before it gets here
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
    // Stryker disable next-line ObjectLiteral,BooleanLiteral: equivalent: a signal aborts once
    signal.addEventListener('abort', onAbort, { once: true });
  }

  /** A batch of sends could not be written to the database: those messages are not in flight. */
  private onStoreError(err: Error, lostMessageIds: number[]): void {
    this.deps.onStoreError?.(err.message);
    this.deps.logger.error({ err: err.message, lost: lostMessageIds.length }, `mqtt: ${err.message}`);
    for (const messageId of lostMessageIds) {
      const entry = this.byMessageId.get(messageId);
      if (!entry) continue;
      this.byMessageId.delete(messageId);
      this.finish(entry, { ok: false, permanent: false, reason: err.message });
    }
    this.schedulePump();
  }
}

function newEntry(id: string, topic: string, payload: Buffer, retain: boolean, held: boolean): WindowEntry {
  // Stryker disable next-line BooleanLiteral: equivalent: untagging an entry that was never tagged is a no-op of the store
  return { id, topic, payload, retain, held, state: 'queued', messageId: undefined, waiters: [], tagged: false };
}

/** The size of the PUBLISH on the wire (fixed header, topic, packet id, empty MQTT 5 properties, payload). */
export function publishPacketSize(entry: Pick<WindowEntry, 'topic' | 'payload'>, protocolVersion: MqttVersion): number {
  const remaining = 2 + Buffer.byteLength(entry.topic, 'utf8') + 2 + (protocolVersion === 5 ? 1 : 0) + entry.payload.length;
  const lengthBytes = remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4;
  return 1 + lengthBytes + remaining;
}
