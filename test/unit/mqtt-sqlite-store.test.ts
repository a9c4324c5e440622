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

  it('fails the puts of a batch that cannot be written, and forgets them', async () => {
    const store = openStore(join(dirs.make(), 'agent.db'));
    const lost: number[][] = [];
    const s = new SqliteMqttStore(store.db, 'outgoing', { clock, onError: (_err, ids) => lost.push(ids) });
    store.db.exec("CREATE TEMP TRIGGER full_disk BEFORE INSERT ON mqtt_inflight BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;");
    await expect(put(s, publish(1))).rejects.toThrow(/could not write MQTT outgoing packets to the database: database or disk is full/);
    expect(lost).toEqual([[1]]);
    expect(s.has(1)).toBe(false);
    store.close();
  });
});
