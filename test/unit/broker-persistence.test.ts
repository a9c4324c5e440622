import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import type { Store } from '../../src/store/store.js';
import { BrokerPersistence, topicMatches, type StoredPacket } from '../../src/telemetry/broker-persistence.js';
import { captureLogger } from '../helpers/logger.js';
import { openStore } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const open: Store[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.close();
  dirs.cleanup();
});
const clock = { now: () => Date.UTC(2026, 11, 6, 2, 0, 0) };

/** A persistence on a real agent database file; `reopen` closes it and opens the file again, as a restart does. */
function setup(limits: { maxRetained?: number; maxQueuedPerClient?: number } = {}) {
  const path = join(dirs.make(), 'agent.db');
  const log = captureLogger();
  const make = async () => {
    const store = openStore(path);
    open.push(store);
    const p = new BrokerPersistence({ db: store.db, clock, logger: log.logger, maxRetained: limits.maxRetained ?? 100, maxQueuedPerClient: limits.maxQueuedPerClient ?? 100 });
    await p.setup({ id: `broker-${open.length}` });
    return { p, store };
  };
  return {
    log,
    make,
    async reopen(prev: { p: BrokerPersistence; store: Store }) {
      prev.p.flush();
      prev.store.close();
      open.splice(open.indexOf(prev.store), 1);
      return make();
    },
  };
}

function pub(topic: string, payload: string, extra: Partial<StoredPacket> = {}): StoredPacket {
  return { cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false, brokerId: 'b1', brokerCounter: 1, ...extra };
}

async function all<T>(stream: Readable): Promise<T[]> {
  const out: T[] = [];
  for await (const x of stream) out.push(x as T);
  return out;
}
const texts = (packets: StoredPacket[]) => packets.map((p) => `${p.topic}=${Buffer.from(p.payload).toString()}`);

describe('topicMatches', () => {
  it('matches MQTT filters, and no leading wildcard matches a $ topic', () => {
    expect(topicMatches('a/+/c', 'a/b/c')).toBe(true);
    expect(topicMatches('a/+/c', 'a/b/d')).toBe(false);
    expect(topicMatches('a/#', 'a')).toBe(true);
    expect(topicMatches('a/#', 'a/b/c')).toBe(true);
    expect(topicMatches('a/b', 'a/b/c')).toBe(false);
    expect(topicMatches('a/b/c', 'a/b')).toBe(false);
    expect(topicMatches('#', '$agent/refused')).toBe(false);
    expect(topicMatches('+/refused', '$agent/refused')).toBe(false);
    expect(topicMatches('$agent/#', '$agent/refused')).toBe(true);
  });
});

describe('BrokerPersistence (aedes persistence in the agent database)', () => {
  it('sets, replaces and deletes retained messages, and a reopen has the same', async () => {
    const t = setup();
    let s = await t.make();
    await s.p.storeRetained(pub('local/a', 'one', { retain: true }));
    await s.p.storeRetained(pub('local/b', 'two', { retain: true }));
    await s.p.storeRetained(pub('local/a', 'three', { retain: true }));
    await s.p.storeRetained(pub('local/c', 'x', { retain: true }));
    await s.p.storeRetained(pub('local/c', '', { retain: true })); // an empty retained payload deletes
    expect(texts(await all(s.p.createRetainedStreamCombi(['local/#'])))).toEqual(['local/a=three', 'local/b=two']);
    expect(texts(await all(s.p.createRetainedStream('local/b')))).toEqual(['local/b=two']);
    expect(s.p.stats().retained).toBe(2);

    s = await t.reopen(s);
    const retained = await all<StoredPacket>(s.p.createRetainedStream('#'));
    expect(texts(retained)).toEqual(['local/a=three', 'local/b=two']);
    expect(retained[0]).toMatchObject({ retain: true, qos: 1 });
    expect(s.p.stats().retained).toBe(2);
  });

  it('keeps persistent subscriptions across a reopen and matches topics to them (QoS > 0, one entry per client)', async () => {
    const t = setup();
    let s = await t.make();
    await s.p.addSubscriptions({ id: 'app1' }, [{ topic: 'local/+/temp', qos: 1 }, { topic: 'local/#', qos: 2 }, { topic: 'local/zero', qos: 0 }]);
    await s.p.addSubscriptions({ id: 'app2' }, [{ topic: 'local/x/temp', qos: 1 }]);
    await s.p.removeSubscriptions({ id: 'app2' }, ['local/x/temp']);
    await s.p.addSubscriptions({ id: 'app3' }, [{ topic: 'local/x/temp', qos: 1 }]);

    s = await t.reopen(s);
    // In no particular order (the table is keyed by client and topic).
    expect((await s.p.subscriptionsByClient({ id: 'app1' })).sort((a, b) => a.topic.localeCompare(b.topic))).toEqual([
      { topic: 'local/#', qos: 2 },
      { topic: 'local/+/temp', qos: 1 },
      { topic: 'local/zero', qos: 0 },
    ]);
    expect(await s.p.subscriptionsByClient({ id: 'app2' })).toEqual([]);
    const byTopic = await s.p.subscriptionsByTopic('local/x/temp');
    expect(byTopic.sort((a, b) => a.clientId.localeCompare(b.clientId))).toEqual([
      { clientId: 'app1', topic: 'local/#', qos: 2 },
      { clientId: 'app3', topic: 'local/x/temp', qos: 1 },
    ]);
    expect(await s.p.subscriptionsByTopic('local/zero')).toEqual([{ clientId: 'app1', topic: 'local/#', qos: 2 }]);

    await s.p.cleanSubscriptions({ id: 'app1' });
    s = await t.reopen(s);
    expect(await s.p.subscriptionsByClient({ id: 'app1' })).toEqual([]);
    expect(await s.p.countOffline()).toEqual({ subsCount: 1, clientsCount: 1 });
  });

  it('queues messages for an offline client in order, keeps in-flight ids, and a reopen re-sends what was not acknowledged', async () => {
    const t = setup();
    let s = await t.make();
    for (let i = 1; i <= 3; i++) await s.p.outgoingEnqueueCombi([{ clientId: 'app1' }, { clientId: 'app2' }], pub('local/t', `m${i}`, { brokerCounter: i }));
    // m1 is sent to app1 with id 7 and acknowledged; m2 is sent with id 8 and not acknowledged.
    await s.p.outgoingUpdate({ id: 'app1' }, { ...pub('local/t', 'm1', { brokerCounter: 1 }), messageId: 7 });
    await s.p.outgoingUpdate({ id: 'app1' }, { ...pub('local/t', 'm2', { brokerCounter: 2 }), messageId: 8 });
    expect(texts([(await s.p.outgoingClearMessageId({ id: 'app1' }, { messageId: 7 }))!])).toEqual(['local/t=m1']);
    expect(await s.p.outgoingClearMessageId({ id: 'app1' }, { messageId: 99 })).toBeUndefined();
    await expect(s.p.outgoingUpdate({ id: 'app1' }, { ...pub('local/t', 'gone', { brokerId: 'other', brokerCounter: 5 }), messageId: 42 })).rejects.toThrow(/no such packet/);

    s = await t.reopen(s);
    const app1 = await all<StoredPacket>(s.p.outgoingStream({ id: 'app1' }));
    expect(texts(app1)).toEqual(['local/t=m2', 'local/t=m3']);
    expect(app1.map((p) => p.messageId)).toEqual([8, undefined]);
    expect(texts(await all(s.p.outgoingStream({ id: 'app2' })))).toEqual(['local/t=m1', 'local/t=m2', 'local/t=m3']);
    expect(s.p.stats().queued).toBe(5);

    // QoS 2: the PUBREL takes the PUBLISH's place, and the PUBCOMP clears it.
    await s.p.outgoingUpdate({ id: 'app1' }, { cmd: 'pubrel', messageId: 8 } as StoredPacket);
    await s.p.outgoingUpdate({ id: 'app1' }, { cmd: 'pubrel', messageId: 8 } as StoredPacket);
    expect((await all<StoredPacket>(s.p.outgoingStream({ id: 'app1' }))).map((p) => p.cmd)).toEqual(['pubrel', 'publish']);
    expect((await s.p.outgoingClearMessageId({ id: 'app1' }, { messageId: 8 }))?.cmd).toBe('pubrel');
    // A clean session drops the queue.
    await s.p.cleanSubscriptions({ id: 'app2' });
    expect(await all(s.p.outgoingStream({ id: 'app2' }))).toEqual([]);
    expect(s.p.stats().queued).toBe(1);
  });

  it('keeps inbound QoS 2 packets until released, and wills by broker', async () => {
    const t = setup();
    let s = await t.make();
    await s.p.incomingStorePacket({ id: 'app1' }, { ...pub('local/q2', 'x', { qos: 2 }), messageId: 5 });
    await s.p.putWill({ id: 'app1' }, pub('local/apps/app1/status', 'offline', { qos: 1, retain: true }));
    await s.p.putWill({ id: 'app2' }, pub('local/apps/app2/status', 'offline'));
    await s.p.delWill({ id: 'app2' });

    s = await t.reopen(s);
    expect(texts([await s.p.incomingGetPacket({ id: 'app1' }, { messageId: 5 })])).toEqual(['local/q2=x']);
    await s.p.incomingDelPacket({ id: 'app1' }, { messageId: 5 });
    await expect(s.p.incomingGetPacket({ id: 'app1' }, { messageId: 5 })).rejects.toThrow(/no such packet/);
    await expect(s.p.incomingDelPacket({ id: 'app1' }, { messageId: 5 })).rejects.toThrow(/no such packet/);

    // The will was put by the last run's broker ("broker-1"): a new broker alive does not hide it.
    const wills = await all<StoredPacket>(s.p.streamWill({ 'broker-2': Date.now() }));
    expect(wills).toHaveLength(1);
    expect(wills[0]).toMatchObject({ clientId: 'app1', brokerId: 'broker-1', topic: 'local/apps/app1/status', retain: true });
    expect(await all(s.p.streamWill({ 'broker-1': Date.now() }))).toEqual([]);
    expect((await s.p.getWill({ id: 'app1' }))?.topic).toBe('local/apps/app1/status');
    expect(await s.p.getWill({ id: 'app2' })).toBeUndefined();
  });

  it('bounds retained topics (a new topic past the limit is not kept; replacing and deleting still work), logged once', async () => {
    const t = setup({ maxRetained: 2 });
    let s = await t.make();
    for (const topic of ['local/a', 'local/b', 'local/c', 'local/d']) await s.p.storeRetained(pub(topic, topic, { retain: true }));
    await s.p.storeRetained(pub('local/a', 'new a', { retain: true }));
    expect(texts(await all(s.p.createRetainedStream('#')))).toEqual(['local/a=new a', 'local/b=local/b']);
    expect(s.p.stats()).toMatchObject({ retained: 2, retainedDropped: 2 });
    expect(t.log.records().filter((r) => String(r.msg).includes('localBroker.maxRetained (2)'))).toHaveLength(1);

    await s.p.storeRetained(pub('local/b', '', { retain: true }));
    await s.p.storeRetained(pub('local/e', 'e', { retain: true }));
    s = await t.reopen(s);
    expect(texts(await all(s.p.createRetainedStream('#')))).toEqual(['local/a=new a', 'local/e=e']);
    await s.p.storeRetained(pub('local/f', 'f', { retain: true }));
    expect(s.p.stats()).toMatchObject({ retained: 2, retainedDropped: 1 });
  });

  it('bounds each client\'s queue: the oldest is dropped, counted, logged once per run of drops', async () => {
    const t = setup({ maxQueuedPerClient: 3 });
    let s = await t.make();
    for (let i = 1; i <= 6; i++) await s.p.outgoingEnqueue({ clientId: 'slow' }, pub('local/t', `m${i}`, { brokerCounter: i }));
    await s.p.outgoingEnqueue({ clientId: 'other' }, pub('local/t', 'o1', { brokerCounter: 7 }));
    expect(texts(await all(s.p.outgoingStream({ id: 'slow' })))).toEqual(['local/t=m4', 'local/t=m5', 'local/t=m6']);
    expect(s.p.stats()).toMatchObject({ queued: 4, queuedDropped: 3 });
    const lines = t.log.records().filter((r) => String(r.msg).includes('localBroker.maxQueuedPerClient (3)'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ clientId: 'slow' });

    s = await t.reopen(s);
    await s.p.outgoingEnqueue({ clientId: 'slow' }, pub('local/t', 'm7', { brokerCounter: 8 }));
    expect(texts(await all(s.p.outgoingStream({ id: 'slow' })))).toEqual(['local/t=m5', 'local/t=m6', 'local/t=m7']);
    expect(s.p.stats()).toMatchObject({ queued: 4, queuedDropped: 1 });
  });

  it('commits the writes of one turn together, and a read sees writes not yet committed', async () => {
    const t = setup();
    const s = await t.make();
    const writes = [s.p.storeRetained(pub('local/a', 'a', { retain: true })), s.p.addSubscriptions({ id: 'app1' }, [{ topic: 'local/#', qos: 1 }])];
    const rows = () => (s.store.db.prepare('SELECT count(*) AS n FROM broker_retained').get() as { n: number }).n;
    expect(rows()).toBe(0); // queued, not yet written
    expect(texts(await all(s.p.createRetainedStream('#')))).toEqual(['local/a=a']);
    expect(rows()).toBe(1);
    await Promise.all(writes);
  });
});
