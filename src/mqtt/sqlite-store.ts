import type { Database, Statement } from 'better-sqlite3';
import type { IStore, Packet } from 'mqtt';
import { Readable } from 'node:stream';
import { commitWithoutFsync, syncLevel } from '../store/sync-level.js';
import type { Clock } from '../util/clock.js';
import { AgentError } from '../util/errors.js';

/**
 * An mqtt.js message store (`outgoingStore` / `incomingStore`) kept in the agent's SQLite database
 * (table `mqtt_inflight`, see `migration.ts`), so a QoS 1 PUBLISH that was sent but not yet
 * acknowledged survives a kill -9 and is sent again when the next connection starts.
 *
 * mqtt.js calls `put` before it writes a PUBLISH to the socket and writes only from `put`'s
 * callback, so the packet is on disk before it is on the wire. Puts are group-committed: every
 * put and delete of one turn of the event loop goes into one transaction (one fsync with
 * `synchronous = FULL`), and the put callbacks run after the commit. A delete (after the PUBACK) is
 * answered at once from memory and committed with the next batch: losing it in a crash costs one
 * duplicate send, never a message. Reads (`get`, `createStream`) come from an in-memory mirror of the
 * table, loaded when the store is built; the process that builds it owns the rows from then on.
 *
 * The store is one object for the life of the session and survives every mqtt.js client built on
 * it: `close` (called by mqtt.js when a client ends) commits what is pending and keeps the rows.
 */

/** The stream type mqtt.js's `IStore` names (readable-stream's `Readable`). */
type MqttReadable = ReturnType<IStore['createStream']>;

export type StoreKind = 'outgoing' | 'incoming';

/** An outgoing PUBLISH found in the store, for the session to track after a restart. */
export interface StoredPublish {
  messageId: number;
  /** The caller's id, when the packet was stored through a `tag`; null otherwise. */
  appId: string | null;
  topic: string;
  payload: Buffer;
  qos: number;
  retain: boolean;
}

/**
 * Announces a PUBLISH about to be handed to mqtt.js: the next `put` of a publish with this topic
 * and payload records `id` with it (as its `app_id`) and is reported to `onStored` with its message
 * id, synchronously, before the commit. The session passes its own message objects as tags.
 */
export interface PublishTag {
  /** The caller's id of the message. */
  readonly id: string;
  readonly topic: string;
  readonly payload: Buffer;
  /**
   * Keep the packet in memory only: the caller holds the message durably itself (see
   * `PublishRequest.heldByCaller`). It is re-sent by every new connection of this process, and not
   * after a restart. Its put is answered at once.
   */
  readonly held: boolean;
}

/**
 * How hard a commit of the store is: `database` as the connection is set (`store.synchronous`;
 * `full` survives a power cut, at one fsync per commit); `process` survives a crash or kill -9 of
 * the process but may lose the latest commits in a power cut (SQLite's `synchronous = NORMAL` in WAL
 * mode: no fsync per commit; the next fsync of the database, e.g. the outbox's next commit with
 * `full`, takes these commits with it).
 */
export type StoreDurability = 'database' | 'process';

export interface SqliteMqttStoreOptions<T extends PublishTag = PublishTag> {
  clock: Pick<Clock, 'now'>;
  /** A tagged publish was put (see `tag`), with the message id mqtt.js gave it. */
  onStored?: (tag: T, messageId: number) => void;
  /** Default `database`. */
  durability?: StoreDurability;
  /**
   * A batch that could not be committed, with the message ids of the puts it lost (they are no
   * longer held; their callbacks get the error too, though mqtt.js does not pass it on to the
   * publisher, so the session learns it here).
   */
  onError?: (err: Error, lostMessageIds: number[]) => void;
}

interface Entry {
  packet: Packet;
  appId: string | null;
  /** In memory only (`PublishTag.volatile`): never written, so never deleted from the table either. */
  volatile: boolean;
}

type Op = { op: 'put'; messageId: number; entry: Entry; storedAt: number; cb: ((err?: Error) => void) | undefined } | { op: 'del'; messageId: number };

interface Row {
  message_id: number;
  cmd: string;
  topic: string | null;
  payload: Buffer | null;
  qos: number;
  retain: number;
  dup: number;
  fields: string | null;
  app_id: string | null;
}

/** Packet fields that have a column of their own; everything else goes to `fields` (JSON). */
const COLUMNS = new Set(['cmd', 'messageId', 'topic', 'payload', 'qos', 'retain', 'dup', 'length']);

export class SqliteMqttStore<T extends PublishTag = PublishTag> implements IStore {
  readonly kind: StoreKind;
  private readonly db: Database;
  private readonly clock: Pick<Clock, 'now'>;
  private readonly onError: ((err: Error, lostMessageIds: number[]) => void) | undefined;
  private readonly onStored: ((tag: T, messageId: number) => void) | undefined;
  /** The table's rows of this store, in `seq` order (a replaced packet moves to the end, as in the table). */
  private readonly mirror = new Map<number, Entry>();
  /** The latest tag: mqtt.js usually stores a publish at once, so its put matches this one. */
  private expected: T | undefined;
  /** Older tags whose puts were deferred (mqtt.js holds new publishes while it re-sends stored ones). */
  private readonly tags = new Map<string, T[]>();
  private pending: Op[] = [];
  private flushScheduled = false;
  private readonly insert: Statement;
  private readonly remove: Statement;
  /** The level put back after a commit lighter than the connection (0: commits as the connection does). */
  private readonly lightenFrom: number;
  private readonly commit: (ops: Op[]) => void;

  constructor(db: Database, kind: StoreKind, opts: SqliteMqttStoreOptions<T>) {
    this.db = db;
    this.kind = kind;
    this.clock = opts.clock;
    this.onError = opts.onError;
    this.onStored = opts.onStored;
    // INSERT OR REPLACE gives a replaced packet (a PUBREL taking a PUBLISH's place) a new seq.
    this.insert = db.prepare(
      `INSERT OR REPLACE INTO mqtt_inflight (store, message_id, cmd, topic, payload, qos, retain, dup, fields, app_id, stored_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.remove = db.prepare('DELETE FROM mqtt_inflight WHERE store = ? AND message_id = ?');
    this.lightenFrom = opts.durability === 'process' ? syncLevel(db) : 0;
    this.commit = db.transaction((ops: Op[]) => {
      for (const o of ops) {
        if (o.op === 'del') {
          this.remove.run(this.kind, o.messageId);
          continue;
        }
        const p = o.entry.packet as Packet & Partial<{ topic: string; payload: string | Buffer; qos: number; retain: boolean; dup: boolean }>;
        this.insert.run(
          this.kind,
          o.messageId,
          p.cmd,
          p.topic ?? null,
          p.payload === undefined ? null : toBuffer(p.payload),
          p.qos ?? 0,
          p.retain ? 1 : 0,
          p.dup ? 1 : 0,
          encodeFields(p),
          o.entry.appId,
          o.storedAt,
        );
      }
    });
    const rows = db
      .prepare('SELECT message_id, cmd, topic, payload, qos, retain, dup, fields, app_id FROM mqtt_inflight WHERE store = ? ORDER BY seq')
      .all(kind) as Row[];
    for (const row of rows) this.mirror.set(row.message_id, { packet: decodePacket(row), appId: row.app_id, volatile: false });
  }

  /** Packets held, committed or about to be. */
  get size(): number {
    return this.mirror.size;
  }

  has(messageId: number): boolean {
    return this.mirror.has(messageId);
  }

  appIdOf(messageId: number): string | null | undefined {
    return this.mirror.get(messageId)?.appId;
  }

  /** The outgoing PUBLISH packets held, in the order they will be re-sent. */
  publishes(): StoredPublish[] {
    const out: StoredPublish[] = [];
    for (const [messageId, { packet, appId }] of this.mirror) {
      if (packet.cmd !== 'publish') continue;
      out.push({ messageId, appId, topic: packet.topic, payload: toBuffer(packet.payload), qos: packet.qos, retain: packet.retain });
    }
    return out;
  }

  /** See `PublishTag`. `untag` withdraws it if the packet never reaches the store. */
  tag(tag: T): void {
    const older = this.expected;
    if (older) {
      let list = this.tags.get(older.topic);
      if (!list) {
        list = [];
        this.tags.set(older.topic, list);
      }
      list.push(older);
    }
    this.expected = tag;
  }

  put(packet: Packet, cb: (error?: Error) => void): this {
    const messageId = packet.messageId;
    if (messageId === undefined || !Number.isInteger(messageId) || messageId < 1 || messageId > 65_535) {
      cb(new AgentError('MQTT_STORE_INVALID_PACKET', `cannot store a ${packet.cmd} packet without a message id (got ${String(messageId)})`));
      return this;
    }
    let appId: string | null = null;
    let volatile = false;
    if (packet.cmd === 'publish') {
      const tag = this.takeTag(packet.topic, packet.payload);
      if (tag) {
        appId = tag.id;
        volatile = tag.held;
        this.onStored?.(tag, messageId);
      }
    }
    // A copy, so a caller changing its packet later cannot change what is stored or re-sent.
    const entry: Entry = { packet: copyPacket(packet), appId, volatile };
    const replaced = this.mirror.get(messageId);
    this.mirror.delete(messageId);
    this.mirror.set(messageId, entry);
    if (volatile) {
      // A stored packet it replaces must not come back after a restart.
      if (replaced && !replaced.volatile) this.pending.push({ op: 'del', messageId });
      if (this.pending.length > 0) this.scheduleFlush();
      cb();
      return this;
    }
    this.pending.push({ op: 'put', messageId, entry, storedAt: Math.round(this.clock.now()), cb });
    this.scheduleFlush();
    return this;
  }

  get(packet: Pick<Packet, 'messageId'>, cb: (error?: Error, packet?: Packet) => void): this {
    const entry = packet.messageId === undefined ? undefined : this.mirror.get(packet.messageId);
    if (entry) cb(undefined, copyPacket(entry.packet));
    else cb(new Error('missing packet'));
    return this;
  }

  del(packet: Pick<Packet, 'messageId'>, cb: (error?: Error, packet?: Packet) => void): this {
    const messageId = packet.messageId;
    const entry = messageId === undefined ? undefined : this.mirror.get(messageId);
    if (!entry || messageId === undefined) {
      cb(new Error('missing packet'));
      return this;
    }
    this.mirror.delete(messageId);
    if (!entry.volatile) {
      this.pending.push({ op: 'del', messageId });
      this.scheduleFlush();
    }
    cb(undefined, entry.packet);
    return this;
  }

  /**
   * The held packets in order, read synchronously (as mqtt.js's own store does): mqtt.js registers
   * each re-sent message id as it reads it, and a stream that made it wait could let a new publish
   * take an id that a stored packet still holds.
   */
  createStream(): MqttReadable {
    this.flush();
    const packets = [...this.mirror.values()].map((e) => copyPacket(e.packet));
    let i = 0;
    const stream = new Readable({
      objectMode: true,
      read() {
        this.push(i < packets.length ? packets[i++] : null);
      },
    });
    // mqtt.js types its stores with readable-stream's Readable; it uses only what node's has too.
    return stream as unknown as MqttReadable;
  }

  /** Called by mqtt.js when a client ends: commits what is pending, keeps every row. */
  close(cb: (error?: Error) => void): void {
    try {
      this.flush();
      // Stryker disable next-line BlockStatement: equivalent: flush() reports its own failures (onError and the puts' callbacks) and does not throw
    } catch (err) {
      cb(err as Error);
      return;
    }
    cb();
  }

  /** Commits every pending put and delete now, in one transaction. */
  flush(): void {
    const ops = this.pending;
    if (ops.length === 0) return;
    this.pending = [];
    try {
      // `synchronous` is per connection and the connection is shared: lowered for this commit only
      // (nothing else can commit in between: better-sqlite3 is synchronous).
      commitWithoutFsync(this.db, this.lightenFrom, () => this.commit(ops));
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      const wrapped = new AgentError('MQTT_STORE_WRITE_FAILED', `could not write MQTT ${this.kind} packets to the database: ${err.message}`, { cause: err });
      const lost: number[] = [];
      for (const o of ops) {
        // The packet is not on disk: forget it, unless a later put has replaced it in the meantime.
        if (o.op === 'put' && this.mirror.get(o.messageId) === o.entry) {
          this.mirror.delete(o.messageId);
          lost.push(o.messageId);
        }
      }
      this.onError?.(wrapped, lost);
      for (const o of ops) if (o.op === 'put') o.cb?.(wrapped);
      return;
    }
    for (const o of ops) if (o.op === 'put') o.cb?.();
  }

  private scheduleFlush(): void {
    // Stryker disable next-line ConditionalExpression: equivalent: a second flush in the same turn finds nothing pending
    if (this.flushScheduled) return;
    // Stryker disable next-line BooleanLiteral: equivalent: as above
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private takeTag(topic: string, payload: string | Buffer): T | undefined {
    const e = this.expected;
    if (e && e.topic === topic && (e.payload === payload || e.payload.equals(toBuffer(payload)))) {
      this.expected = undefined;
      return e;
    }
    const list = this.tags.get(topic);
    if (!list) return undefined;
    const bytes = toBuffer(payload);
    const i = list.findIndex((t) => t.payload.equals(bytes));
    if (i < 0) return undefined;
    const [tag] = list.splice(i, 1);
    // Stryker disable next-line ConditionalExpression: equivalent when false: an empty list left in the map matches nothing
    if (list.length === 0) this.tags.delete(topic);
    return tag;
  }

  /** Withdraws a tag whose packet did not reach the store (a no-op for one that did). */
  untag(tag: T): void {
    if (this.expected === tag) {
      this.expected = undefined;
      return;
    }
    const list = this.tags.get(tag.topic);
    if (!list) return;
    const i = list.indexOf(tag);
    if (i >= 0) list.splice(i, 1);
    // Stryker disable next-line ConditionalExpression: equivalent when false: as in takeTag
    if (list.length === 0) this.tags.delete(tag.topic);
  }
}

function toBuffer(payload: string | Buffer): Buffer {
  return typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
}

/** A copy deep enough that changing the copy's fields or properties cannot change the original (Buffers are shared: nobody writes into them). */
function copyPacket(packet: Packet): Packet {
  const copy = { ...packet } as Packet & { properties?: Record<string, unknown> };
  if (copy.properties) copy.properties = { ...copy.properties };
  return copy;
}

/** JSON of the packet's fields that have no column; null when there are none. */
function encodeFields(packet: Packet): string | null {
  const rest: Record<string, unknown> = {};
  let any = false;
  for (const [k, v] of Object.entries(packet)) {
    if (COLUMNS.has(k) || v === undefined) continue;
    rest[k] = encodeValue(v);
    any = true;
  }
  return any ? JSON.stringify(rest) : null;
}

function decodePacket(row: Row): Packet {
  const packet: Record<string, unknown> = { cmd: row.cmd, messageId: row.message_id, qos: row.qos };
  if (row.cmd === 'publish') {
    packet.topic = row.topic ?? '';
    packet.payload = row.payload ?? Buffer.alloc(0);
    packet.retain = row.retain === 1;
    packet.dup = row.dup === 1;
  } else {
    if (row.topic !== null) packet.topic = row.topic;
    if (row.payload !== null) packet.payload = row.payload;
  }
  if (row.fields !== null) Object.assign(packet, decodeValue(JSON.parse(row.fields)));
  return packet as unknown as Packet;
}

/** Buffers (MQTT 5 correlation data, payloads) become `{ "$buffer": base64 }` in JSON. */
function encodeValue(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return { $buffer: v.toString('base64') };
  if (v instanceof Uint8Array) return { $buffer: Buffer.from(v).toString('base64') };
  if (Array.isArray(v)) return v.map(encodeValue);
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    // Stryker disable next-line ConditionalExpression: equivalent: JSON.stringify leaves out undefined values anyway
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = encodeValue(x);
    return out;
  }
  return v;
}

function decodeValue(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(decodeValue);
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o);
    if (keys.length === 1 && typeof o.$buffer === 'string') return Buffer.from(o.$buffer, 'base64');
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(o)) out[k] = decodeValue(x);
    return out;
  }
  return v;
}
