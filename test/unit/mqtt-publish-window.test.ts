import { ErrorWithReasonCode, type IClientPublishOptions, type PacketCallback } from 'mqtt';
import { generate } from 'mqtt-packet';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PublishWindow, publishPacketSize, type PublishLink, type PublishOutcome, type PublishRequest } from '../../src/mqtt/publish-window.js';
import type { Store } from '../../src/store/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger } from '../helpers/logger.js';
import { openStore } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const opened: Store[] = [];
afterEach(() => {
  for (const s of opened.splice(0)) s.close();
  dirs.cleanup();
});

interface Sent {
  topic: string;
  payload: string;
  retain: boolean;
  messageId: number;
  callback: PacketCallback | undefined;
}

/** Lets queued microtasks (the window's pump) and the store's group commit run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * A connection as mqtt.js makes it, reduced to what the window uses: each publish gets the next
 * packet id and is put in the outgoing store before it would go on the wire.
 */
function fakeLink(window: PublishWindow, firstId = 1): PublishLink & { sent: Sent[] } {
  const sent: Sent[] = [];
  let nextId = firstId;
  return {
    ready: true,
    version: 5,
    sent,
    client: {
      publish(topic: string, message: Buffer, opts: IClientPublishOptions, callback?: PacketCallback) {
        const messageId = nextId++;
        const retain = opts.retain === true;
        sent.push({ topic, payload: message.toString('utf8'), retain, messageId, callback });
        window.outgoing.put({ cmd: 'publish', topic, payload: message, qos: 1, retain, dup: false, messageId }, () => undefined);
      },
    },
  };
}

interface Harness {
  window: PublishWindow;
  store: Store;
  clock: FakeClock;
  marks: string[];
  /** What the monitor answers for the channel's status. */
  status: 'online' | 'degraded' | 'offline';
  logged(): Record<string, unknown>[];
  /** Publishes `req` and records its outcome in `outcomes` under its id once it comes. */
  publish(req: PublishRequest): Promise<PublishOutcome>;
  outcomes: Map<string, PublishOutcome>;
  /** The broker's PUBACK for `messageId`, as mqtt.js hands it on: the session first, then its store. */
  puback(messageId: number, reasonCode?: number, reasonString?: string): void;
}

function harness(opts: { maxInflight?: number; path?: string; onStoreError?: (message: string) => void } = {}): Harness {
  const store = openStore(opts.path ?? join(dirs.make(), 'agent.db'));
  opened.push(store);
  const marks: string[] = [];
  const clock = new FakeClock();
  const log = captureLogger('info');
  const window = new PublishWindow({
    db: store.db,
    maxInflight: opts.maxInflight ?? 10,
    durability: 'process',
    monitor: { markSuccess: (channel, operation) => void marks.push(`${channel}:${operation}`), channelStatus: () => h.status },
    clock,
    logger: log.logger,
    ...(opts.onStoreError ? { onStoreError: opts.onStoreError } : {}),
  });
  const outcomes = new Map<string, PublishOutcome>();
  const h: Harness = {
    window,
    store,
    clock,
    marks,
    status: 'online',
    logged: log.records,
    outcomes,
    publish: (req) =>
      new Promise((resolve) =>
        window.submit(req, (o) => {
          outcomes.set(req.id, o);
          resolve(o);
        }),
      ),
    puback(messageId, reasonCode, reasonString) {
      window.onPuback(messageId, reasonCode, reasonString);
      window.outgoing.del({ messageId }, () => undefined);
    },
  };
  return h;
}

const msg = (id: string, extra: Partial<PublishRequest> = {}): PublishRequest => ({ id, topic: 'iot/d/events', payload: JSON.stringify({ id }), heldByCaller: true, ...extra });

describe('PublishWindow: the in-flight bound', () => {
  it('sends at most maxInflight, the rest in call order as PUBACKs free slots', async () => {
    const h = harness({ maxInflight: 3 });
    const link = fakeLink(h.window);
    h.window.attach(link);
    for (const id of ['a', 'b', 'c', 'd', 'e']) void h.publish(msg(id, id === 'b' ? { retain: true } : {}));
    await settle();
    expect(link.sent.map((s) => JSON.parse(s.payload).id)).toEqual(['a', 'b', 'c']);
    // Retained only when asked.
    expect(link.sent.map((s) => s.retain)).toEqual([false, true, false]);
    expect(h.window.counts()).toEqual({ inflight: 3, queued: 2, acknowledged: 0, rejected: 0 });

    h.puback(2);
    await settle();
    expect(link.sent.map((s) => JSON.parse(s.payload).id)).toEqual(['a', 'b', 'c', 'd']);
    h.puback(1);
    h.puback(3);
    await settle();
    expect(link.sent).toHaveLength(5);
    expect(h.window.counts()).toMatchObject({ inflight: 2, queued: 0, acknowledged: 3 });
  });

  it('takes the broker Receive Maximum when it is lower, and sends nothing without a ready connection', async () => {
    const h = harness({ maxInflight: 5 });
    for (const id of ['a', 'b', 'c', 'd']) void h.publish(msg(id));
    await settle();
    expect(h.window.counts()).toMatchObject({ inflight: 0, queued: 4 });

    h.window.setBrokerLimits({ receiveMaximum: 2 });
    const link = fakeLink(h.window);
    link.ready = false;
    h.window.attach(link);
    await settle();
    expect(link.sent).toHaveLength(0);

    link.ready = true;
    h.window.attach(link);
    await settle();
    expect(link.sent).toHaveLength(2);

    // A new connection without a Receive Maximum has the whole window again.
    h.window.setBrokerLimits({});
    h.puback(1);
    await settle();
    expect(link.sent).toHaveLength(4);
  });
});

describe('PublishWindow: PUBACKs and outcomes', () => {
  it('maps PUBACKs to their messages by packet id whatever order they come in', async () => {
    const h = harness();
    const link = fakeLink(h.window);
    h.window.attach(link);
    const done = ['m1', 'm2', 'm3', 'm4'].map((id) => h.publish(msg(id)));
    await settle();
    const idOf = (messageId: number): string => JSON.parse(link.sent.find((s) => s.messageId === messageId)!.payload).id;
    expect([1, 2, 3, 4].map(idOf)).toEqual(['m1', 'm2', 'm3', 'm4']);

    // mqtt.js also hands a refusal to the publish's callback: an answer, not a broken link, in whichever order.
    link.sent[2]!.callback?.(new ErrorWithReasonCode('Quota exceeded', 0x97));
    expect(link.ready).toBe(true);
    h.puback(3, 0x97, 'slow down');
    h.puback(1);
    h.puback(4, 0x87);
    h.puback(2, 0x10);
    const [m1, m2, m3, m4] = await Promise.all(done);
    expect(m1).toEqual({ ok: true });
    expect(m2).toEqual({ ok: true });
    expect(m3).toEqual({ ok: false, permanent: false, reasonCode: 0x97, reason: 'Quota exceeded (0x97): slow down' });
    expect(m4).toEqual({ ok: false, permanent: true, reasonCode: 0x87, reason: 'Not authorized (0x87)' });
    expect(h.window.counts()).toEqual({ inflight: 0, queued: 0, acknowledged: 2, rejected: 2 });
    // One success mark a second at most while the channel is online.
    expect(h.marks).toEqual(['mqtt:publish']);
    await new Promise((r) => setImmediate(r));
    expect(h.logged().filter((r) => r.level === 40)).toEqual([
      expect.objectContaining({ id: 'm3', topic: 'iot/d/events', reasonCode: 0x97, permanent: false, msg: 'mqtt: the broker refused message m3 on iot/d/events: Quota exceeded (0x97): slow down' }),
      expect.objectContaining({ id: 'm4', topic: 'iot/d/events', reasonCode: 0x87, permanent: true, msg: 'mqtt: the broker refused message m4 on iot/d/events: Not authorized (0x87)' }),
    ]);
  });

  it('marks the link working at most once a second while online, and at every PUBACK while it is not', async () => {
    const h = harness();
    const link = fakeLink(h.window);
    h.window.attach(link);
    for (const id of ['a', 'b', 'c', 'd', 'e']) void h.publish(msg(id));
    await settle();
    h.puback(1);
    await h.clock.advance(999);
    h.puback(2);
    expect(h.marks).toHaveLength(1);
    await h.clock.advance(1);
    h.puback(3);
    expect(h.marks).toHaveLength(2);
    // Degraded or offline: every answer from the broker counts toward coming back.
    h.status = 'degraded';
    h.puback(4);
    h.puback(5);
    expect(h.marks).toEqual(['mqtt:publish', 'mqtt:publish', 'mqtt:publish', 'mqtt:publish']);
  });

  it('classifies refusals by reason code: transient ones may be retried, the rest park the message', async () => {
    const codes = [0x80, 0x83, 0x87, 0x90, 0x91, 0x89, 0x96, 0x97, 0x99, 0xa0];
    const h = harness({ maxInflight: codes.length });
    const link = fakeLink(h.window);
    h.window.attach(link);
    const done = codes.map((rc) => h.publish(msg(`rc-${rc}`)));
    await settle();
    codes.forEach((rc, i) => h.puback(i + 1, rc));
    const outcomes = await Promise.all(done);
    const permanent = codes.filter((_, i) => !outcomes[i]!.ok && (outcomes[i] as { permanent: boolean }).permanent);
    expect(permanent).toEqual([0x80, 0x83, 0x87, 0x90, 0x99, 0xa0]);
    expect(outcomes.every((o, i) => !o.ok && o.reasonCode === codes[i])).toBe(true);
  });

  it('refuses before sending: an invalid topic (0x90), a packet over the broker Maximum Packet Size (0x95)', async () => {
    const h = harness();
    const link = fakeLink(h.window);
    h.window.setBrokerLimits({ maximumPacketSize: 100 });
    h.window.attach(link);
    expect(await h.publish(msg('bad', { topic: 'iot/d/+' }))).toMatchObject({ ok: false, permanent: true, reasonCode: 0x90, reason: expect.stringMatching(/^topic name invalid: ./) });
    const big = msg('big', { payload: 'x'.repeat(100) });
    expect(await h.publish(big)).toEqual({ ok: false, permanent: true, reasonCode: 0x95, reason: `packet too large: ${publishPacketSize({ topic: 'iot/d/events', payload: Buffer.from(big.payload) }, 5)} bytes, the broker takes at most 100` });
    const fits = msg('fits', { payload: 'x'.repeat(100 - publishPacketSize({ topic: 'iot/d/events', payload: Buffer.alloc(0) }, 5)) });
    void h.publish(fits);
    await settle();
    expect(link.sent.map((s) => s.topic)).toEqual(['iot/d/events']);
  });

  it('joins a publish of an id on its way, and keeps an answer nobody waited for', async () => {
    const path = join(dirs.make(), 'agent.db');
    const before = harness({ path });
    before.window.restore();
    const link = fakeLink(before.window);
    before.window.attach(link);
    // Not held by the caller: the in-flight table keeps it for the next run.
    void before.publish(msg('kept', { heldByCaller: false }));
    await settle();
    before.window.outgoing.flush();
    opened.splice(0).forEach((s) => s.close());
    // Nothing was left by a run before that one: nothing to say.
    await new Promise((r) => setImmediate(r));
    expect(before.logged()).toEqual([]);

    const after = harness({ path });
    after.window.restore();
    expect(after.window.counts()).toMatchObject({ inflight: 1, queued: 0 });
    await new Promise((r) => setImmediate(r));
    expect(after.logged().map((r) => [r.msg, r.count])).toEqual([['mqtt: 1 unacknowledged message(s) from the last run will be sent again', 1]]);
    // Re-sent by mqtt.js from the store and answered before the caller asked again.
    after.puback(1);
    const relink = fakeLink(after.window);
    after.window.attach(relink);
    expect(await after.publish(msg('kept', { heldByCaller: false }))).toEqual({ ok: true });
    await settle();
    expect(relink.sent).toHaveLength(0);

    const first = after.publish(msg('twice'));
    const second = after.publish(msg('twice'));
    await settle();
    expect(relink.sent).toHaveLength(1);
    after.puback(relink.sent[0]!.messageId);
    expect(await Promise.all([first, second])).toEqual([{ ok: true }, { ok: true }]);
  });
});

describe('PublishWindow: waiters across disconnects and at stop', () => {
  it('keeps a publish pending across a lost connection: in the store it stays in flight, else it goes first next time', async () => {
    const h = harness({ maxInflight: 2 });
    const link = fakeLink(h.window);
    h.window.attach(link);
    const a = h.publish(msg('a'));
    await settle();
    // mqtt.js refuses the next send at once: the client is going away and never stored it.
    link.client.publish = (_topic, _message, _opts, callback) => callback?.(new Error('client disconnecting'));
    const b = h.publish(msg('b'));
    void h.publish(msg('c'));
    await settle();
    expect(link.ready).toBe(false);
    // The connection closes before the PUBACK of 'a' and mqtt.js fails its send too.
    link.sent[0]!.callback?.(new Error('Connection closed'));
    h.window.detach(link);
    await settle();
    expect(h.outcomes.size).toBe(0);
    expect(h.window.counts()).toMatchObject({ inflight: 1, queued: 2 });

    // 'a' is in the store: mqtt.js re-sends it with its packet id. 'b' goes before 'c'.
    const next = fakeLink(h.window, 100);
    h.window.attach(next);
    await settle();
    expect(next.sent.map((s) => JSON.parse(s.payload).id)).toEqual(['b']);
    h.puback(link.sent[0]!.messageId);
    expect(await a).toEqual({ ok: true });
    await settle();
    expect(next.sent.map((s) => JSON.parse(s.payload).id)).toEqual(['b', 'c']);
    h.puback(next.sent[0]!.messageId);
    expect(await b).toEqual({ ok: true });
  });

  it('releases every waiter at stop and takes nothing after', async () => {
    const h = harness({ maxInflight: 1 });
    const link = fakeLink(h.window);
    h.window.attach(link);
    const sent = h.publish(msg('sent'));
    const queued = h.publish(msg('queued'));
    await settle();
    h.window.close({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
    expect(await sent).toEqual({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
    expect(await queued).toEqual({ ok: false, permanent: false, reason: 'the MQTT session stopped' });
    expect(h.window.stopped).toBe(true);
    expect(await h.publish(msg('late'))).toEqual({ ok: false, permanent: false, reason: 'the MQTT session is stopped' });
    expect(h.window.counts()).toMatchObject({ queued: 0 });
  });

  it('ends the wait of an aborted caller; a message not sent yet is forgotten', async () => {
    const h = harness({ maxInflight: 1 });
    const link = fakeLink(h.window);
    h.window.attach(link);
    void h.publish(msg('first'));
    const ctl = new AbortController();
    const waiting = h.publish(msg('second', { signal: ctl.signal }));
    await settle();
    ctl.abort();
    expect(await waiting).toEqual({ ok: false, permanent: false, reason: 'aborted' });
    h.puback(1);
    await settle();
    expect(link.sent).toHaveLength(1);
  });

  it('a late detach of an earlier connection leaves the current one in use', async () => {
    const h = harness();
    const old = fakeLink(h.window);
    const current = fakeLink(h.window, 100);
    h.window.attach(old);
    h.window.attach(current);
    h.window.detach(old);
    void h.publish(msg('m'));
    await settle();
    expect(old.sent).toEqual([]);
    expect(current.sent.map((s) => s.messageId)).toEqual([100]);
  });

  it('answers a caller whose signal is already aborted at once, and sends nothing for it', async () => {
    const h = harness();
    const link = fakeLink(h.window);
    h.window.attach(link);
    const ctl = new AbortController();
    ctl.abort();
    expect(await h.publish(msg('late', { signal: ctl.signal }))).toEqual({ ok: false, permanent: false, reason: 'aborted' });
    await settle();
    expect(link.sent).toEqual([]);
    expect(h.window.counts()).toMatchObject({ inflight: 0, queued: 0 });
  });

  it('fails the messages whose send could not be written to the database, says why, and goes on with the next', async () => {
    const errors: string[] = [];
    const h = harness({ maxInflight: 1, onStoreError: (m) => void errors.push(m) });
    const link = fakeLink(h.window);
    h.window.attach(link);
    h.store.db.exec("CREATE TEMP TRIGGER full_disk BEFORE INSERT ON mqtt_inflight BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;");
    // Not held by the caller (a message of the session's own): the window writes it to the database.
    const failed = h.publish(msg('first', { heldByCaller: false }));
    const second = h.publish(msg('second', { heldByCaller: false }));
    expect(await failed).toEqual({ ok: false, permanent: false, reason: expect.stringMatching(/could not write MQTT outgoing packets to the database: database or disk is full/) });
    expect(errors).toEqual([expect.stringMatching(/database or disk is full/)]);
    // Its in-flight slot is free again: the next message is sent.
    h.store.db.exec('DROP TRIGGER full_disk');
    await settle();
    expect(link.sent.map((s) => JSON.parse(s.payload).id)).toEqual(['first', 'second']);
    h.puback(link.sent[1]!.messageId);
    expect(await second).toMatchObject({ ok: true });
    await settle();
  });

  it('sends the message sent ahead before the queue, and a newer one supersedes it while it waits', async () => {
    const h = harness({ maxInflight: 1 });
    void h.publish(msg('queued'));
    const birth = (n: number): Promise<PublishOutcome> =>
      new Promise((resolve) => h.window.sendAhead({ id: `birth-${n}`, topic: 'iot/d/status', payload: Buffer.from(`{"n":${n}}`), retain: true }, resolve));
    const old = birth(1);
    void birth(2);
    expect(await old).toEqual({ ok: false, permanent: false, reason: 'superseded' });
    const link = fakeLink(h.window);
    h.window.attach(link);
    await settle();
    expect(link.sent.map((s) => [s.topic, s.payload, s.retain])).toEqual([['iot/d/status', '{"n":2}', true]]);
  });
});

describe('PublishWindow: answers and their callers', () => {
  it('sends an id again once its answer was given: nothing is answered from a publish its caller already heard of', async () => {
    const h = harness();
    const link = fakeLink(h.window);
    h.window.attach(link);
    expect(await (async () => {
      const p = h.publish(msg('again'));
      await settle();
      h.puback(link.sent[0]!.messageId);
      return p;
    })()).toEqual({ ok: true });
    // The outbox sends it again (its own retry): it goes on the wire again.
    const second = h.publish(msg('again'));
    await settle();
    expect(link.sent).toHaveLength(2);
    h.puback(link.sent[1]!.messageId);
    expect(await second).toEqual({ ok: true });
  });

  it('keeps only final answers nobody waited for: a transient refusal of a restored message is sent again when asked', async () => {
    const path = join(dirs.make(), 'agent.db');
    const before = harness({ path });
    const link = fakeLink(before.window);
    before.window.attach(link);
    void before.publish(msg('q', { heldByCaller: false }));
    await settle();
    before.window.outgoing.flush();
    opened.splice(0).forEach((st) => st.close());

    const after = harness({ path });
    after.window.restore();
    after.puback(1, 0x97); // re-sent from the store, refused for now, nobody waiting
    const relink = fakeLink(after.window, 50);
    after.window.attach(relink);
    const retried = after.publish(msg('q', { heldByCaller: false }));
    await settle();
    expect(relink.sent.map((x) => x.messageId)).toEqual([50]);
    after.puback(50);
    expect(await retried).toEqual({ ok: true });
    await settle();
  });

  it('an abort by one of two callers of a queued message leaves it to the other; an abort after sending keeps it in flight', async () => {
    const h = harness({ maxInflight: 1 });
    const link = fakeLink(h.window);
    h.window.attach(link);
    void h.publish(msg('first'));
    const quitter = new AbortController();
    const leaving = h.publish(msg('shared', { signal: quitter.signal }));
    const staying = h.publish(msg('shared'));
    await settle();
    quitter.abort();
    expect(await leaving).toEqual({ ok: false, permanent: false, reason: 'aborted' });
    h.puback(1);
    await settle();
    expect(link.sent.map((x) => JSON.parse(x.payload).id)).toEqual(['first', 'shared']);

    // Aborted once on the wire: a later publish of the id joins the one in flight, no second copy.
    const sentCtl = new AbortController();
    h.puback(2);
    expect(await staying).toEqual({ ok: true });
    const inFlight = h.publish(msg('late', { signal: sentCtl.signal }));
    await settle();
    sentCtl.abort();
    expect(await inFlight).toMatchObject({ reason: 'aborted' });
    const joined = h.publish(msg('late'));
    await settle();
    expect(link.sent).toHaveLength(3);
    h.puback(3);
    expect(await joined).toEqual({ ok: true });
  });

  it('tells each caller once, even when its signal aborts after the answer', async () => {
    const h = harness();
    const link = fakeLink(h.window);
    h.window.attach(link);
    const ctl = new AbortController();
    const calls: PublishOutcome[] = [];
    h.window.submit(msg('once', { signal: ctl.signal }), (o) => calls.push(o));
    await settle();
    h.puback(1);
    ctl.abort();
    expect(calls).toEqual([{ ok: true }]);
  });

  it('a send mqtt.js refuses before storing: a failed write fails its caller, else it waits for the next connection; at a stop the caller has the stop\'s answer', async () => {
    const h = harness({ maxInflight: 3 });
    const link = fakeLink(h.window);
    h.window.attach(link);
    const refusals = [Object.assign(new Error('could not write MQTT outgoing packets: disk full'), { code: 'MQTT_STORE_WRITE_FAILED' }), new Error('client disconnecting')];
    link.client.publish = (_topic, _message, _opts, callback) => callback?.(refusals.shift()!);
    const failed = h.publish(msg('w'));
    const waits = h.publish(msg('x'));
    await settle();
    expect(await failed).toEqual({ ok: false, permanent: false, reason: 'could not write MQTT outgoing packets: disk full' });
    expect(h.window.counts()).toMatchObject({ inflight: 0, queued: 1 });

    // At a stop: a send refused while stopping is answered as such.
    const s2 = harness();
    const l2 = fakeLink(s2.window);
    let refuse: ((err: Error) => void) | undefined;
    l2.client.publish = (_topic, _message, _opts, callback) => {
      refuse = (err) => callback?.(err);
    };
    s2.window.attach(l2);
    const stopped = s2.publish(msg('s'));
    await settle();
    s2.window.close({ ok: false, permanent: false, reason: 'closing' });
    refuse?.(new Error('client disconnecting'));
    expect(await stopped).toEqual({ ok: false, permanent: false, reason: 'closing' });
    // 'x' waits for the next connection, first in line.
    const next = fakeLink(h.window, 200);
    h.window.attach(next);
    await settle();
    expect(next.sent.map((x) => JSON.parse(x.payload).id)).toEqual(['x']);
    h.puback(200);
    expect(await waits).toEqual({ ok: true });
  });
});

describe('publishPacketSize', () => {
  it('is the size of the PUBLISH mqtt.js writes, at every length boundary, in MQTT 3.1.1 and 5', () => {
    const topic = 'iot/d/events';
    for (const version of [4, 5] as const) {
      for (const remaining of [127, 128, 16_383, 16_384, 2_097_151, 2_097_152]) {
        const payload = Buffer.alloc(remaining - (2 + topic.length + 2 + (version === 5 ? 1 : 0)));
        const wire = generate({ cmd: 'publish', topic, payload, qos: 1, messageId: 1, retain: false, dup: false, ...(version === 5 ? { properties: {} } : {}) }, { protocolVersion: version });
        expect({ version, remaining, size: publishPacketSize({ topic, payload }, version) }).toEqual({ version, remaining, size: wire.length });
      }
    }
  });
});

