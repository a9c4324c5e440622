import BetterSqlite3 from 'better-sqlite3';
import type { IPublishPacket, Packet } from 'mqtt';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteMqttStore } from '../../src/mqtt/sqlite-store.js';
import { openStore } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const clock = { now: () => Date.UTC(2026, 10, 28, 12, 0, 0) };

function publish(messageId: number, extra: Partial<IPublishPacket> = {}): IPublishPacket {
  return { cmd: 'publish', messageId, topic: 'iot/d/events', payload: Buffer.from(`{"n":${messageId}}`), qos: 1, retain: false, dup: false, ...extra };
}
const put = (s: SqliteMqttStore, p: Packet): Promise<void> => new Promise((resolve, reject) => s.put(p, (err) => (err ? reject(err) : resolve())));
const get = (s: SqliteMqttStore, messageId: number): Promise<Packet> =>
  new Promise((resolve, reject) => s.get({ messageId }, (err, p) => (err ? reject(err) : resolve(p!))));
const del = (s: SqliteMqttStore, messageId: number): Promise<Packet> =>
  new Promise((resolve, reject) => s.del({ messageId }, (err, p) => (err ? reject(err) : resolve(p!))));
async function drain(s: SqliteMqttStore): Promise<Packet[]> {
  const out: Packet[] = [];
  for await (const p of s.createStream() as unknown as AsyncIterable<Packet>) out.push(p);
  return out;
}
/** What another process would read from the file. */
function rowsOf(path: string): Array<{ store: string; message_id: number; app_id: string | null }> {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    return db.prepare('SELECT store, message_id, app_id FROM mqtt_inflight ORDER BY seq').all() as Array<{ store: string; message_id: number; app_id: string | null }>;
  } finally {
    db.close();
  }
}

describe('SqliteMqttStore (the mqtt.js store in the agent database)', () => {
  it('has a put on disk when its callback runs, and keeps packets faithfully across a reopen', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    const v5 = publish(7, {
      retain: true,
      topic: 'iot/d/status',
      payload: Buffer.from([0, 1, 2, 255]),
      properties: { correlationData: Buffer.from('corr'), userProperties: { a: 'b', list: ['1', '2'] }, messageExpiryInterval: 60, contentType: 'application/json' },
    });
    await put(s, v5);
    expect(rowsOf(path)).toEqual([{ store: 'outgoing', message_id: 7, app_id: null }]);
    await put(s, publish(8, { payload: 'a string payload' as unknown as Buffer }));
    store.close();

    const again = openStore(path);
    const s2 = new SqliteMqttStore(again.db, 'outgoing', { clock });
    const p7 = (await get(s2, 7)) as IPublishPacket;
    expect(p7).toEqual({ ...v5 });
    expect(Buffer.isBuffer(p7.payload)).toBe(true);
    expect(Buffer.isBuffer(p7.properties?.correlationData)).toBe(true);
    const p8 = (await get(s2, 8)) as IPublishPacket;
    expect(p8.payload).toEqual(Buffer.from('a string payload'));
    expect(s2.size).toBe(2);
    again.close();
  });

  it('streams packets in the order stored, a replaced packet last; deletes answer at once and reach the disk', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    for (const id of [3, 1, 2]) await put(s, publish(id));
    // A PUBREL takes the place of the PUBLISH it follows (QoS 2), and is re-sent after the others.
    await put(s, { cmd: 'pubrel', messageId: 3 });
    expect((await drain(s)).map((p) => [p.cmd, p.messageId])).toEqual([['publish', 1], ['publish', 2], ['pubrel', 3]]);
    expect(((await del(s, 1)) as IPublishPacket).topic).toBe('iot/d/events');
    await expect(del(s, 1)).rejects.toThrow('missing packet');
    await expect(get(s, 1)).rejects.toThrow('missing packet');
    s.flush();
    expect(rowsOf(path).map((r) => r.message_id)).toEqual([2, 3]);
    // close (mqtt.js ends a client) keeps the rows for the next client.
    await new Promise<void>((resolve) => s.close(() => resolve()));
    expect(rowsOf(path).map((r) => r.message_id)).toEqual([2, 3]);
    // The other store kind is separate.
    const incoming = new SqliteMqttStore(store.db, 'incoming', { clock });
    expect(incoming.size).toBe(0);
    store.close();
  });

  it('records the caller id of a tagged publish and says which message id it got', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const stored: Array<[string, number]> = [];
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock, onStored: (tag, id) => stored.push([tag.id, id]) });
    const payload = Buffer.from('{"id":"m-1"}');
    s.tag({ id: 'm-1', topic: 'iot/d/events', payload, held: false });
    const other = { id: 'm-2', topic: 'iot/d/events', payload: Buffer.from('other'), held: false };
    s.tag(other);
    await put(s, publish(5)); // not the tagged payload
    await put(s, publish(6, { payload: Buffer.from('{"id":"m-1"}') }));
    s.untag(other);
    await put(s, publish(9, { payload: Buffer.from('other') }));
    expect(stored).toEqual([['m-1', 6]]);
    expect(s.appIdOf(6)).toBe('m-1');
    expect(s.appIdOf(9)).toBeNull();
    store.close();
    const again = openStore(path);
    expect(new SqliteMqttStore(again.db, 'outgoing', { clock }).publishes().map((p) => [p.messageId, p.appId])).toEqual([
      [5, null],
      [6, 'm-1'],
      [9, null],
    ]);
    again.close();
  });

  it('deletes from the disk a packet it read back after a restart, once the broker acknowledged it', async () => {
    const path = join(dirs.make(), 'agent.db');
    const first = openStore(path);
    await put(new SqliteMqttStore(first.db, 'outgoing', { clock }), publish(4));
    first.close();
    const second = openStore(path);
    const s = new SqliteMqttStore(second.db, 'outgoing', { clock });
    await del(s, 4);
    s.flush();
    second.close();
    expect(rowsOf(path)).toEqual([]);
  });

  it('matches each of several deferred tags of one topic to its own put, in any order', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const stored: Array<[string, number]> = [];
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock, onStored: (tag, id) => stored.push([tag.id, id]) });
    // mqtt.js holds new publishes while it re-sends stored ones: three tags before the first put.
    for (const id of ['a', 'b', 'c']) s.tag({ id, topic: 'iot/d/events', payload: Buffer.from(id), held: false });
    for (const [messageId, id] of [[11, 'a'], [13, 'c'], [12, 'b']] as const) await put(s, publish(messageId, { payload: Buffer.from(id) }));
    expect(stored).toEqual([['a', 11], ['c', 13], ['b', 12]]);
    store.close();
  });

  it('refuses a packet without a valid message id, naming its kind and the id', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    await expect(put(s, { cmd: 'pubrel' } as Packet)).rejects.toThrow('cannot store a pubrel packet without a message id (got undefined)');
    await expect(put(s, publish(70_000))).rejects.toMatchObject({ code: 'MQTT_STORE_INVALID_PACKET', message: 'cannot store a publish packet without a message id (got 70000)' });
    expect(s.size).toBe(0);
    store.close();
  });

  it('keeps a held publish in memory only: re-sent by the next client of this process, gone after a reopen, never written', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    await put(s, publish(1));
    const payload = Buffer.from('{"id":"held-2"}');
    s.tag({ id: 'held-2', topic: 'iot/d/events', payload, held: true });
    // Answered at once: no commit to wait for.
    let answered = false;
    s.put(publish(2, { payload }), () => (answered = true));
    expect(answered).toBe(true);
    // A held publish taking the message id of a stored one replaces it on disk too.
    const payload3 = Buffer.from('{"id":"held-3"}');
    s.tag({ id: 'held-3', topic: 'iot/d/events', payload: payload3, held: true });
    await put(s, publish(1, { payload: payload3 }));
    s.flush();
    expect(rowsOf(path)).toEqual([]);
    expect((await drain(s)).map((p) => [p.messageId, (p as IPublishPacket).payload.toString()])).toEqual([
      [2, '{"id":"held-2"}'],
      [1, '{"id":"held-3"}'],
    ]);
    expect(s.appIdOf(2)).toBe('held-2');
    await del(s, 2);
    expect(s.size).toBe(1);
    store.close();
    const again = openStore(path);
    expect(new SqliteMqttStore(again.db, 'outgoing', { clock }).size).toBe(0);
    again.close();
  });

  it("commits with durability 'process' without an fsync, and leaves the connection's setting as it was", async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    expect(store.db.pragma('synchronous', { simple: true })).toBe(2);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock, durability: 'process' });
    await put(s, publish(1));
    expect(rowsOf(path).map((r) => r.message_id)).toEqual([1]); // committed: another connection sees it
    expect(store.db.pragma('synchronous', { simple: true })).toBe(2);
    store.close();
  });

  it("lowers synchronous to NORMAL for its own commits only with durability 'process' on a FULL connection, outside a transaction", async () => {
    const path = join(dirs.make(), 'agent.db');
    openStore(path).close();
    /** The statements the connection ran (better-sqlite3's verbose hook), reduced to the pragmas and the insert. */
    const traced = (synchronous: string) => {
      const ran: string[] = [];
      const db = new BetterSqlite3(path, { verbose: (sql) => void ran.push(String(sql)) });
      db.pragma(`synchronous = ${synchronous}`);
      ran.length = 0;
      const steps = (): string[] => ran.filter((q) => /^PRAGMA synchronous|^INSERT/.test(q)).map((q) => (q.startsWith('INSERT') ? 'INSERT' : q));
      return { db, steps };
    };
    const full = traced('FULL');
    let n = 0;
    const processStore = new SqliteMqttStore(full.db, 'outgoing', { clock, durability: 'process' });
    full.steps(); // the constructor reads the level
    await put(processStore, publish(++n));
    expect(full.steps().slice(-3)).toEqual(['PRAGMA synchronous = NORMAL', 'INSERT', 'PRAGMA synchronous = 2']);
    expect(full.db.pragma('synchronous', { simple: true })).toBe(2);
    // Inside a caller's transaction the level cannot change: the commit is theirs.
    const before = full.steps().length;
    full.db.transaction(() => {
      processStore.put(publish(++n), () => undefined);
      processStore.flush();
    })();
    expect(full.steps().slice(before)).toEqual(['INSERT']);
    full.db.close();

    for (const [synchronous, durability] of [['FULL', 'database'], ['NORMAL', 'process']] as const) {
      const t = traced(synchronous);
      const store = new SqliteMqttStore(t.db, 'outgoing', { clock, durability });
      const start = t.steps().length;
      await put(store, publish(++n));
      expect(t.steps().slice(start)).toEqual(['INSERT']);
      t.db.close();
    }
  });

  it('keeps a plain publish in its columns alone, with no JSON copy of them', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    await put(s, { ...publish(1), length: 30 } as IPublishPacket);
    await put(s, publish(2, { properties: { contentType: 'application/json' } }));
    const fields = store.db.prepare('SELECT fields FROM mqtt_inflight ORDER BY seq').all() as Array<{ fields: string | null }>;
    expect(fields.map((r) => r.fields)).toEqual([null, JSON.stringify({ properties: { contentType: 'application/json' } })]);
    store.close();
  });

  it('takes message ids 1 to 65535 only', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    await put(s, publish(65_535));
    await put(s, publish(1));
    for (const bad of [0, 65_536, 1.5]) await expect(put(s, publish(bad))).rejects.toMatchObject({ code: 'MQTT_STORE_INVALID_PACKET' });
    expect(s.publishes().map((p) => p.messageId)).toEqual([65_535, 1]);
    store.close();
  });

  it('a held publish that takes the id of a stored packet removes that packet from the disk', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    await put(s, publish(5));
    const held = { id: 'h', topic: 'iot/d/events', payload: Buffer.from('held'), held: true };
    s.tag(held);
    await put(s, publish(5, { payload: Buffer.from('held') }));
    await new Promise((r) => setImmediate(r));
    expect(rowsOf(path)).toEqual([]);
    expect(s.appIdOf(5)).toBe('h');
    store.close();
  });

  it('commits what is pending when mqtt.js closes the store', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    s.put(publish(3), () => undefined);
    await new Promise<void>((resolve, reject) => s.close((err) => (err ? reject(err) : resolve())));
    expect(rowsOf(path).map((r) => r.message_id)).toEqual([3]);
    store.close();
  });

  it('matches a tag by topic and payload: the same payload on another topic is not it; a withdrawn deferred tag matches nothing', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const stored: string[] = [];
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock, onStored: (tag) => stored.push(tag.id) });
    const a = { id: 'a', topic: 'iot/d/events', payload: Buffer.from('same'), held: false };
    s.tag(a);
    await put(s, publish(1, { topic: 'iot/d/metrics', payload: Buffer.from('same') }));
    expect(stored).toEqual([]);
    const b = { id: 'b', topic: 'iot/d/events', payload: Buffer.from('other'), held: false };
    s.tag(b); // a is deferred now
    s.untag(a);
    await put(s, publish(2, { payload: Buffer.from('same') }));
    await put(s, publish(3, { payload: Buffer.from('other') }));
    expect(stored).toEqual(['b']);
    expect([s.appIdOf(2), s.appIdOf(3)]).toEqual([null, 'b']);
    store.close();
  });

  it('keeps what was put, whatever the caller changes in its packet afterwards', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    const p = publish(4, { properties: { contentType: 'application/json' } });
    await put(s, p);
    p.topic = 'changed';
    p.properties!.contentType = 'text/plain';
    expect(await get(s, 4)).toMatchObject({ topic: 'iot/d/events', properties: { contentType: 'application/json' } });
    store.close();
  });

  it('keeps packets other than publishes, and binary or odd-looking fields, faithfully across a reopen', async () => {
    const path = join(dirs.make(), 'agent.db');
    const store = openStore(path);
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock });
    const pubrel = { cmd: 'pubrel', messageId: 9, reasonCode: 0x92, properties: { reasonString: 'later', userProperties: { empty: null } } } as unknown as Packet;
    const odd = publish(10, { properties: { correlationData: new Uint8Array([1, 2, 3]) as Buffer, userProperties: { $buffer: 'aGk=', note: 'x' } } });
    await put(s, pubrel);
    await put(s, odd);
    store.close();
    const again = openStore(path);
    const s2 = new SqliteMqttStore(again.db, 'outgoing', { clock });
    expect(await get(s2, 9)).toStrictEqual({ cmd: 'pubrel', messageId: 9, qos: 0, reasonCode: 0x92, properties: { reasonString: 'later', userProperties: { empty: null } } });
    const p10 = (await get(s2, 10)) as IPublishPacket;
    expect(p10.properties?.correlationData).toEqual(Buffer.from([1, 2, 3]));
    expect(p10.properties?.userProperties).toStrictEqual({ $buffer: 'aGk=', note: 'x' });
    again.close();
  });

  it('fails the puts of a batch that cannot be written, and forgets them', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const lost: number[][] = [];
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock, onError: (_err, ids) => lost.push(ids) });
    store.db.exec("CREATE TEMP TRIGGER full_disk BEFORE INSERT ON mqtt_inflight BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;");
    await expect(put(s, publish(1))).rejects.toThrow(/could not write MQTT outgoing packets to the database: database or disk is full/);
    expect(lost).toEqual([[1]]);
    expect(s.has(1)).toBe(false);
    // One batch: a delete, a put replaced before the commit, another put. Lost: each id not on disk, once.
    store.db.exec('DROP TRIGGER full_disk');
    await put(s, publish(7));
    store.db.exec("CREATE TEMP TRIGGER full_disk BEFORE INSERT ON mqtt_inflight BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;");
    const errors: unknown[] = [];
    s.del({ messageId: 7 }, () => undefined);
    s.put(publish(2), (err) => errors.push(err));
    s.put(publish(2, { payload: Buffer.from('newer') }), (err) => errors.push(err));
    s.put(publish(3), (err) => errors.push(err));
    s.flush();
    expect(lost[1]).toEqual([2, 3]);
    expect(errors).toHaveLength(3);
    expect(errors[0]).toMatchObject({ code: 'MQTT_STORE_WRITE_FAILED', cause: expect.objectContaining({ message: 'database or disk is full' }) });
    store.close();
  });
});
