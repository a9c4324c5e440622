import type { Database } from 'better-sqlite3';
import { Readable } from 'node:stream';
import { commitWithoutFsync, syncLevel } from '../store/sync-level.js';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { brokerStatements, type BrokerStatements, type OutgoingRow, type StoredPacket, toBuffer, topicMatches } from './broker-rows.js';

export { topicMatches, type StoredPacket } from './broker-rows.js';

/**
 * The local broker's persistence (aedes 1.x's async interface, as aedes-persistence's memory one):
 * retained messages, persistent sessions' subscriptions, the messages queued and in flight to them,
 * inbound QoS 2 packets and wills, in the agent's database (tables of broker-migration.ts), so they
 * outlive an agent restart and a kill -9 of it.
 *
 * - **Batched.** Writes are queued and committed together once per turn of the event loop, in one
 *   transaction without an fsync of its own (`synchronous = NORMAL` for that commit: safe against a
 *   kill -9, the next fsync of the database takes it to the disk). Each write's promise settles after
 *   its commit, so aedes goes on (routes, sends) only once the state is in the WAL. Reads commit what
 *   is pending first, so they always see every write before them.
 * - **Bounded.** At most `maxRetained` retained topics: a retained message on a new topic past it is
 *   routed but not kept (counted, logged once per run). At most `maxQueuedPerClient` messages queued
 *   or in flight per persistent session: past it the oldest is dropped (counted, logged once per run
 *   per client). Subscriptions and wills are few per client and replaced, not accumulated.
 * - **Mirrors.** The subscriptions (a few per client) and each client's queue length are kept in
 *   memory for matching and limits; messages stay on disk and are read when they are sent.
 */

export interface BrokerPersistenceOptions {
  db: Database;
  clock: Pick<Clock, 'now'>;
  logger: Logger;
  /** Most retained topics kept (`localBroker.maxRetained`). */
  maxRetained: number;
  /** Most messages queued or in flight per persistent session (`localBroker.maxQueuedPerClient`). */
  maxQueuedPerClient: number;
}

export interface BrokerPersistenceStats {
  /** Retained topics kept now. */
  retained: number;
  /** Messages queued or in flight to persistent sessions now. */
  queued: number;
  /** Retained messages not kept because `maxRetained` topics were held. */
  retainedDropped: number;
  /** Queued messages dropped (oldest first) because a client had `maxQueuedPerClient`. */
  queuedDropped: number;
  /** Batches that could not be committed (their writes were lost and their promises rejected). */
  writeFailures: number;
}

interface ClientRef {
  id: string;
}
interface Sub {
  topic: string;
  qos: number;
}
type Pending = { run: () => unknown; resolve: (v: unknown) => void; reject: (e: unknown) => void };

export class BrokerPersistence {
  private readonly db: Database;
  private readonly st: BrokerStatements;
  private readonly o: BrokerPersistenceOptions;
  private readonly log: Logger;
  private readonly lightenFrom: number;
  private readonly commit: (ops: Pending[]) => void;
  /** clientId → topic filter → QoS, of persistent sessions. */
  private readonly subs = new Map<string, Map<string, number>>();
  /** clientId → rows in broker_outgoing. */
  private readonly queued = new Map<string, number>();
  /** Clients whose queue overflowed since it last had room: one log line per run of drops. */
  private readonly overflowing = new Set<string>();
  private retainedCount = 0;
  private retainedFull = false;
  private retainedDropped = 0;
  private queuedDropped = 0;
  private writeFailures = 0;
  private pending: Pending[] = [];
  private scheduled = false;
  private brokerId = '';

  constructor(opts: BrokerPersistenceOptions) {
    this.o = opts;
    this.db = opts.db;
    this.log = opts.logger;
    this.st = brokerStatements(opts.db);
    this.lightenFrom = syncLevel(opts.db);
    this.commit = opts.db.transaction((ops: Pending[]) => {
      for (const op of ops) {
        // One op's answer ("no such packet") must not roll back the others: each keeps its own result.
        try {
          op.resolve(op.run());
        } catch (err) {
          if (err instanceof NoSuchPacket) op.reject(err);
          else throw err;
        }
      }
    });
    this.load();
  }

  private load(): void {
    for (const r of this.st.allSubs.all() as Array<{ client_id: string; topic: string; qos: number }>) this.subsOf(r.client_id, true).set(r.topic, r.qos);
    for (const r of this.st.queuedCounts.all() as Array<{ client_id: string; n: number }>) this.queued.set(r.client_id, r.n);
    this.retainedCount = (this.st.retainedCount.get() as { n: number }).n;
  }

  async setup(broker: { id: string }): Promise<void> {
    this.brokerId = broker.id;
  }

  stats(): BrokerPersistenceStats {
    let queued = 0;
    for (const n of this.queued.values()) queued += n;
    return { retained: this.retainedCount, queued, retainedDropped: this.retainedDropped, queuedDropped: this.queuedDropped, writeFailures: this.writeFailures };
  }

  // --- retained ---

  /** Stores (or, with an empty payload, deletes) the retained message of `packet.topic`. */
  storeRetained(packet: StoredPacket): Promise<void> {
    const topic = packet.topic;
    const payload = toBuffer(packet.payload);
    return this.write(() => {
      if (payload.length === 0) {
        this.retainedCount -= this.st.deleteRetained.run(topic).changes;
        if (this.retainedCount < this.o.maxRetained) this.retainedFull = false;
        return;
      }
      const known = this.st.hasRetained.get(topic) !== undefined;
      if (!known && this.retainedCount >= this.o.maxRetained) {
        this.dropRetained(topic);
        return;
      }
      this.st.upsertRetained.run(topic, payload, packet.qos, Math.round(this.o.clock.now()));
      if (!known) this.retainedCount++;
    });
  }

  private dropRetained(topic: string): void {
    this.retainedDropped++;
    if (this.retainedFull) return;
    this.retainedFull = true;
    this.log.warn(
      { topic, limit: this.o.maxRetained, dropped: this.retainedDropped },
      `local broker: a retained message on "${topic}" is routed but not kept: localBroker.maxRetained (${this.o.maxRetained}) retained topics are held (clear one with an empty retained payload)`,
    );
  }

  createRetainedStream(pattern: string): Readable {
    return this.createRetainedStreamCombi([pattern]);
  }

  /**
   * The topics are listed now and each message read as the stream is consumed: a subscribe to `#` holds
   * a few payloads at a time, not every retained one. (A statement cannot stay open across turns: the
   * connection is shared.)
   */
  createRetainedStreamCombi(patterns: string[]): Readable {
    this.flush();
    const topics = (this.st.retainedTopics.pluck().all() as string[]).filter((t) => patterns.some((p) => topicMatches(p, t)));
    const st = this.st;
    function* read(): Generator<StoredPacket> {
      for (const topic of topics) {
        const r = st.getRetained.get(topic) as { payload: Buffer; qos: number } | undefined;
        if (r) yield { cmd: 'publish', topic, payload: r.payload, qos: r.qos, retain: true, dup: false };
      }
    }
    return Readable.from(read());
  }

  // --- subscriptions ---

  addSubscriptions(client: ClientRef, subs: Sub[]): Promise<void> {
    const mine = this.subsOf(client.id, true);
    for (const s of subs) mine.set(s.topic, s.qos);
    return this.write(() => {
      for (const s of subs) this.st.upsertSub.run(client.id, s.topic, s.qos);
    });
  }

  removeSubscriptions(client: ClientRef, topics: string[]): Promise<void> {
    const mine = this.subsOf(client.id, false);
    for (const t of topics) mine?.delete(t);
    if (mine?.size === 0) this.subs.delete(client.id);
    return this.write(() => {
      for (const t of topics) this.st.deleteSub.run(client.id, t);
    });
  }

  async subscriptionsByClient(client: ClientRef): Promise<Array<{ topic: string; qos: number }>> {
    return [...(this.subs.get(client.id) ?? [])].map(([topic, qos]) => ({ topic, qos }));
  }

  /** The persistent sessions a message on `topic` is queued for: one entry per client, at its highest QoS. */
  async subscriptionsByTopic(topic: string): Promise<Array<{ clientId: string; topic: string; qos: number }>> {
    const out: Array<{ clientId: string; topic: string; qos: number }> = [];
    for (const [clientId, mine] of this.subs) {
      let best: { clientId: string; topic: string; qos: number } | undefined;
      for (const [filter, qos] of mine) {
        if (qos > 0 && (!best || qos > best.qos) && topicMatches(filter, topic)) best = { clientId, topic: filter, qos };
      }
      if (best) out.push(best);
    }
    return out;
  }

  async countOffline(): Promise<{ subsCount: number; clientsCount: number }> {
    let subsCount = 0;
    for (const mine of this.subs.values()) for (const qos of mine.values()) if (qos > 0) subsCount++;
    return { subsCount, clientsCount: this.subs.size };
  }

  /** A clean session starts: its subscriptions and queue go. */
  cleanSubscriptions(client: ClientRef): Promise<void> {
    this.subs.delete(client.id);
    return this.write(() => {
      this.st.deleteSubsOf.run(client.id);
      this.st.deleteOutgoingOf.run(client.id);
      this.queued.delete(client.id);
      this.overflowing.delete(client.id);
    });
  }

  getClientList(topic: string): Readable {
    return Readable.from([...this.subs].filter(([, mine]) => mine.has(topic)).map(([id]) => id));
  }

  private subsOf(clientId: string, create: true): Map<string, number>;
  private subsOf(clientId: string, create: false): Map<string, number> | undefined;
  private subsOf(clientId: string, create: boolean): Map<string, number> | undefined {
    let mine = this.subs.get(clientId);
    if (!mine && create) {
      mine = new Map();
      this.subs.set(clientId, mine);
    }
    return mine;
  }

  // --- outgoing: queued for, and in flight to, persistent sessions ---

  outgoingEnqueue(sub: { clientId: string }, packet: StoredPacket): Promise<void> {
    return this.outgoingEnqueueCombi([sub], packet);
  }

  outgoingEnqueueCombi(subs: Array<{ clientId: string }>, packet: StoredPacket): Promise<void> {
    if (subs.length === 0) return Promise.resolve();
    const payload = toBuffer(packet.payload);
    const at = Math.round(this.o.clock.now());
    return this.write(() => {
      for (const { clientId } of subs) {
        this.st.insertOutgoing.run(clientId, packet.cmd ?? 'publish', packet.brokerId ?? null, packet.brokerCounter ?? null, null, packet.topic, payload, packet.qos, packet.retain ? 1 : 0, at);
        const n = (this.queued.get(clientId) ?? 0) + 1;
        this.queued.set(clientId, n);
        if (n > this.o.maxQueuedPerClient) this.dropOldest(clientId, packet.topic);
        else this.overflowing.delete(clientId);
      }
    });
  }

  private dropOldest(clientId: string, topic: string): void {
    this.st.deleteOldestOf.run(clientId);
    this.queued.set(clientId, this.o.maxQueuedPerClient);
    this.queuedDropped++;
    if (this.overflowing.has(clientId)) return;
    this.overflowing.add(clientId);
    this.log.warn(
      { clientId, topic, limit: this.o.maxQueuedPerClient, dropped: this.queuedDropped },
      `local broker: client "${clientId}" has localBroker.maxQueuedPerClient (${this.o.maxQueuedPerClient}) messages queued: the oldest is dropped for each new one`,
    );
  }

  /** Gives a queued message the id it is sent with, or puts a PUBREL in the place of its PUBLISH. */
  outgoingUpdate(client: ClientRef, packet: StoredPacket): Promise<void> {
    return this.write(() => {
      // The same message (broker id and counter: null for a PUBREL) gets its id; else one with this id is replaced.
      if (this.st.setMessageId.run(packet.messageId ?? null, client.id, packet.brokerId ?? null, packet.brokerCounter ?? null).changes > 0) return;
      const replaced = this.st.replaceByMessageId.run(
        packet.cmd ?? 'publish', packet.brokerId ?? null, packet.brokerCounter ?? null,
        packet.topic ?? null, packet.payload === undefined ? null : toBuffer(packet.payload), packet.qos ?? 0, packet.retain ? 1 : 0,
        client.id, packet.messageId ?? null, packet.brokerId ?? null,
      );
      if (replaced.changes === 0) throw new NoSuchPacket();
    });
  }

  /** Removes the message acknowledged with `packet.messageId` and answers it (undefined: none held). */
  outgoingClearMessageId(client: ClientRef, packet: { messageId?: number }): Promise<StoredPacket | undefined> {
    return this.write(() => {
      const row = this.st.outgoingByMessageId.get(client.id, packet.messageId ?? null) as OutgoingRow | undefined;
      if (!row) return undefined;
      this.st.deleteOutgoing.run(row.seq);
      const n = (this.queued.get(client.id) ?? 1) - 1;
      if (n > 0) this.queued.set(client.id, n);
      else this.queued.delete(client.id);
      return rowToPacket(row);
    });
  }

  /** The client's queue in order, each message read as the stream is consumed (see createRetainedStreamCombi). */
  outgoingStream(client: ClientRef): Readable {
    this.flush();
    const seqs = this.st.outgoingSeqsOf.pluck().all(client.id) as number[];
    const st = this.st;
    function* read(): Generator<StoredPacket> {
      for (const seq of seqs) {
        const row = st.outgoingBySeq.get(seq) as OutgoingRow | undefined;
        if (row) yield rowToPacket(row);
      }
    }
    return Readable.from(read());
  }

  // --- incoming QoS 2, not yet released ---

  incomingStorePacket(client: ClientRef, packet: StoredPacket): Promise<void> {
    const payload = toBuffer(packet.payload);
    return this.write(() => void this.st.upsertIncoming.run(client.id, packet.messageId ?? 0, packet.topic, payload, packet.qos, packet.retain ? 1 : 0));
  }

  async incomingGetPacket(client: ClientRef, packet: { messageId?: number }): Promise<StoredPacket> {
    this.flush();
    const row = this.st.getIncoming.get(client.id, packet.messageId ?? 0) as { topic: string; payload: Buffer; qos: number; retain: number } | undefined;
    if (!row) throw new NoSuchPacket();
    return { cmd: 'publish', topic: row.topic, payload: row.payload, qos: row.qos, retain: row.retain === 1, messageId: packet.messageId };
  }

  incomingDelPacket(client: ClientRef, packet: { messageId?: number }): Promise<void> {
    return this.write(() => {
      if (this.st.deleteIncoming.run(client.id, packet.messageId ?? 0).changes === 0) throw new NoSuchPacket();
    });
  }

  cleanIncoming(client: ClientRef): Promise<void> {
    return this.write(() => void this.st.deleteIncomingOf.run(client.id));
  }

  // --- wills ---

  putWill(client: ClientRef, packet: StoredPacket): Promise<void> {
    packet.brokerId = this.brokerId;
    packet.clientId = client.id;
    const payload = toBuffer(packet.payload);
    return this.write(() => void this.st.upsertWill.run(client.id, this.brokerId, packet.topic, payload, packet.qos, packet.retain ? 1 : 0));
  }

  async getWill(client: ClientRef): Promise<StoredPacket | undefined> {
    this.flush();
    const row = this.st.getWill.get(client.id) as WillRow | undefined;
    return row && willToPacket(row);
  }

  delWill(client: ClientRef): Promise<StoredPacket | undefined> {
    return this.write(() => {
      const row = this.st.getWill.get(client.id) as WillRow | undefined;
      if (row) this.st.deleteWill.run(client.id);
      return row && willToPacket(row);
    });
  }

  /** The wills of brokers not in `brokers` (alive): after a restart, those of the clients the last run held. */
  streamWill(brokers: Record<string, unknown> = {}): Readable {
    this.flush();
    return Readable.from((this.st.allWills.all() as WillRow[]).filter((w) => !brokers[w.broker_id]).map(willToPacket));
  }

  async destroy(): Promise<void> {
    this.flush();
  }

  // --- the batch ---

  private write<T>(run: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ run, resolve: resolve as (v: unknown) => void, reject });
      if (this.scheduled) return;
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.flush();
      });
    });
  }

  /** Commits every pending write now, in one transaction. */
  flush(): void {
    const ops = this.pending;
    if (ops.length === 0) return;
    this.pending = [];
    try {
      commitWithoutFsync(this.db, this.lightenFrom, () => this.commit(ops));
    } catch (e) {
      this.writeFailures++;
      const err = new AgentError('LOCAL_BROKER_WRITE_FAILED', `local broker: could not write its state to the database: ${errorMessage(e)}`, { cause: e });
      this.log.error({ err: err.message, writes: ops.length }, 'local broker: a batch of its state was not stored');
      // The mirrors may hold what the rollback undid: read them again.
      this.subs.clear();
      this.queued.clear();
      this.load();
      for (const op of ops) op.reject(err);
    }
  }
}

/** aedes-persistence's answer for a packet it does not hold. */
class NoSuchPacket extends Error {
  constructor() {
    super('no such packet');
  }
}

interface WillRow {
  client_id: string;
  broker_id: string;
  topic: string;
  payload: Buffer;
  qos: number;
  retain: number;
}

function willToPacket(w: WillRow): StoredPacket {
  return { cmd: 'publish', clientId: w.client_id, brokerId: w.broker_id, topic: w.topic, payload: w.payload, qos: w.qos, retain: w.retain === 1 };
}

function rowToPacket(r: OutgoingRow): StoredPacket {
  const p: StoredPacket = { cmd: r.cmd, topic: r.topic ?? undefined, payload: r.payload ?? undefined, qos: r.qos, retain: r.retain === 1, dup: false } as StoredPacket;
  if (r.broker_id !== null) p.brokerId = r.broker_id;
  if (r.broker_counter !== null) p.brokerCounter = r.broker_counter;
  if (r.message_id !== null) p.messageId = r.message_id;
  return p;
}
