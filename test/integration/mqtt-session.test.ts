import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { observe, testSession, TEST_UUID, until, type Observer, type TestSession } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import type { IncomingMessage } from '../../src/mqtt/session.js';

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

async function broker(opts: Parameters<typeof startMosquitto>[0] = {}): Promise<Mosquitto> {
  const b = await startMosquitto(opts);
  cleanup(() => b.dispose());
  return b;
}
function session(opts: Parameters<typeof testSession>[0]): TestSession {
  const s = testSession(opts);
  cleanup(() => s.close());
  return s;
}
async function observer(url: string, topic: string, opts = {}): Promise<Observer> {
  const o = await observe(url, topic, opts);
  cleanup(() => o.close());
  return o;
}

describe('MqttSession against a private Mosquitto', () => {
  it('connects, announces itself (retained birth), and publishes at QoS 1 with PUBACK outcomes', async () => {
    const b = await broker();
    const s = session({ dbPath: join(dirs.make(), 'agent.db'), url: b.url });
    const connected = new Promise((resolve) => s.session.once('connected', resolve));
    s.start();
    await connected;
    const obs = await observer(b.url, `iot/${TEST_UUID}/#`);
    // The birth is retained: a subscriber that comes later still sees it.
    await until('the retained birth', () => obs.received.find((r) => r.topic.endsWith('/status') && r.retain));
    const status = JSON.parse(obs.received.find((r) => r.topic.endsWith('/status'))!.payload) as { state: string; ts: number };
    expect(status.state).toBe('online');
    const outcome = await s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: JSON.stringify({ id: 'e-1', ts: 1, type: 'x' }), id: 'e-1' });
    expect(outcome).toEqual({ ok: true });
    await until('the event', () => obs.ids().includes('e-1'));
    const stats = s.session.stats();
    expect(stats).toMatchObject({ connected: true, inflight: 0, queued: 0, reconnects: 0, sessionPresent: false });
    expect(s.monitor.health().channels.mqtt?.lastSuccess.connect).toBeGreaterThan(0);
  });

  it('subscribes on every connection: notifies arrive as typed events, invalid JSON is dropped, and a broker that lost the session gets the subscriptions again', async () => {
    const b = await broker();
    const s = session({ dbPath: join(dirs.make(), 'agent.db'), url: b.url });
    const messages: IncomingMessage[] = [];
    s.session.on('message', (m) => messages.push(m));
    const connects: boolean[] = [];
    s.session.on('connected', (e) => connects.push(e.sessionPresent));
    s.start();
    await until('subscribed', () => s.session.stats().subscribed);
    const cloud = await observer(b.url, 'nothing/here');
    await cloud.client.publishAsync(`iot/${TEST_UUID}/target/notify`, '{}', { qos: 1 });
    await until('the first notify', () => messages.length > 0);
    expect(messages[0]).toMatchObject({ kind: 'target-notify', topic: `iot/${TEST_UUID}/target/notify`, payload: {}, retained: false });
    await cloud.client.publishAsync(`iot/${TEST_UUID}/jobs/notify`, 'not json', { qos: 1 });
    await cloud.client.publishAsync(`iot/${TEST_UUID}/jobs/notify`, JSON.stringify({ jobId: 'j-1' }), { qos: 1 });
    await cloud.client.publishAsync(`iot/${TEST_UUID}/shadow/desired`, JSON.stringify({ version: 2, state: { led: 'on' } }), { qos: 1, retain: true });
    await until('the job and shadow messages', () => messages.length >= 3);
    expect(messages.slice(1).map((m) => [m.kind, m.payload])).toEqual([
      ['jobs-notify', { jobId: 'j-1' }],
      ['shadow-desired', { version: 2, state: { led: 'on' } }],
    ]);
    expect(s.session.stats().droppedIncoming).toBe(1);

    // A broker without persistence forgets the session: the session must subscribe again itself.
    await b.kill();
    await b.start();
    await until('the reconnect', () => connects.length === 2 && s.session.stats().subscribed, 20_000);
    expect(connects).toEqual([false, false]);
    const before = messages.length;
    await until('the observer back', () => cloud.client.connected);
    await cloud.client.publishAsync(`iot/${TEST_UUID}/target/notify`, '{"again":true}', { qos: 1 });
    await until('a notify after the reconnect', () => messages.length > before);
    // The retained desired shadow is gone with the broker's memory; the notify came through the new subscription.
    expect(messages.at(-1)).toMatchObject({ kind: 'target-notify', payload: { again: true } });
    expect(s.session.stats().reconnects).toBe(1);
  });

  it('authenticates with uuid/apiKey by default and reports a broker refusal (PUBACK 0x87) as permanent', async () => {
    const b = await broker({
      users: { [TEST_UUID]: 'api-key-0123456789', observer: 'observer-secret' },
      acl: `user ${TEST_UUID}\ntopic readwrite iot/${TEST_UUID}/#\n\nuser observer\ntopic read #\n`,
    });
    const s = session({ dbPath: join(dirs.make(), 'agent.db'), url: b.url, apiKey: 'api-key-0123456789' });
    s.start();
    await until('connected', () => s.session.connected);
    const ok = await s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: '{"id":"a"}', id: 'a' });
    expect(ok).toEqual({ ok: true });
    const refused = await s.session.publish({ topic: 'iot/another-device/events', payload: '{"id":"b"}', id: 'b' });
    expect(refused).toMatchObject({ ok: false, permanent: true, reasonCode: 0x87 });
    if (!refused.ok) expect(refused.reason).toContain('Not authorized');
    // One refusal does not block what follows.
    expect(await s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: '{"id":"c"}', id: 'c' })).toEqual({ ok: true });
    expect(s.session.stats()).toMatchObject({ acknowledged: 3, rejected: 1, inflight: 0 }); // 3: the birth too

    // A wrong password: the attempt fails with the broker's reason and counts against the channel.
    const bad = session({ dbPath: join(dirs.make(), 'agent.db'), url: b.url, uuid: TEST_UUID, apiKey: 'wrong-password-000', mqtt: { clientId: 'intruder' } });
    bad.start();
    await until('a refused attempt', () => bad.session.stats().lastError);
    expect(bad.session.stats().lastError).toMatch(/refused the connection: (Bad User Name or Password|Not authorized) \(0x8[67]\)/);
    expect(bad.monitor.health().channels.mqtt?.failures.connect).toBeGreaterThanOrEqual(1);
  });

  it('rejects a topic the broker would refuse without sending it, and joins a second publish of the same id', async () => {
    const b = await broker();
    const s = session({ dbPath: join(dirs.make(), 'agent.db'), url: b.url, mqtt: { protocolVersion: 4 } });
    const obs = await observer(b.url, `iot/${TEST_UUID}/telemetry/#`);
    s.start();
    expect(await s.session.publish({ topic: 'iot/x/+', payload: '{}', id: 'w' })).toMatchObject({ ok: false, permanent: true, reasonCode: 0x90 });
    const payload = JSON.stringify({ id: 't-1', ts: 1, payload: 1 });
    const [first, second] = await Promise.all([
      s.session.publish({ topic: `iot/${TEST_UUID}/telemetry/temp`, payload, id: 't-1' }),
      s.session.publish({ topic: `iot/${TEST_UUID}/telemetry/temp`, payload, id: 't-1' }),
    ]);
    expect(first).toEqual({ ok: true });
    expect(second).toEqual({ ok: true });
    await s.session.publish({ topic: `iot/${TEST_UUID}/telemetry/temp`, payload: JSON.stringify({ id: 't-2' }), id: 't-2' });
    await until('t-2', () => obs.ids().includes('t-2'));
    expect(obs.ids()).toEqual(['t-1', 't-2']);
  });

  it('an aborted wait for a message not yet sent forgets it; stop settles every waiting caller', async () => {
    const b = await broker();
    await b.stop();
    const s = session({ dbPath: join(dirs.make(), 'agent.db'), url: b.url });
    s.start();
    const ctl = new AbortController();
    const aborted = s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: '{}', id: 'x', signal: ctl.signal });
    const waiting = s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: '{"y":1}', id: 'y' });
    expect(s.session.stats().queued).toBe(2);
    ctl.abort();
    expect(await aborted).toEqual({ ok: false, permanent: false, reason: 'aborted' });
    await s.session.stop();
    expect(await waiting).toMatchObject({ ok: false, permanent: false });
    expect(await s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: '{}', id: 'z' })).toMatchObject({ ok: false, permanent: false });
  });

  it('re-establishes a connection that is reset or cut; a message caught in flight resolves once it is acknowledged', async () => {
    const b = await broker();
    const proxy = await FaultProxy.start({ target: b });
    cleanup(() => proxy.close());
    const cloud = await observer(b.url, `iot/${TEST_UUID}/events`);
    const s = session({ dbPath: join(dirs.make(), 'agent.db'), url: proxy.url });
    s.start();
    await until('connected', () => s.session.connected && s.session.stats().inflight === 0);
    proxy.delay(300, 'down'); // the PUBACK will not make it before the reset
    const outcome = s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: JSON.stringify({ id: 'r-1' }), id: 'r-1' });
    await until('the message at the broker', () => cloud.ids().includes('r-1'));
    proxy.reset();
    proxy.pass();
    expect(await outcome).toEqual({ ok: true });
    expect(s.session.stats().reconnects).toBe(1);
    expect(s.monitor.health().channels.mqtt?.failures.connect).toBe(1);
    expect(s.session.stats().lastError).toMatch(/^connection lost: connection reset \(ECONNRESET\)$|^connection lost: the connection closed$/);

    proxy.cut();
    await until('the second reconnect', () => s.session.stats().reconnects === 2 && s.session.connected);
    expect(await s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: JSON.stringify({ id: 'r-2' }), id: 'r-2' })).toEqual({ ok: true });
    // r-1 was re-sent once after the reset (the broker had it, its PUBACK was lost): one extra copy, same id.
    await until('r-2', () => cloud.ids().includes('r-2'));
    expect(cloud.ids().filter((id) => id === 'r-1').length).toBe(2);
  });
});
