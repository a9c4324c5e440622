import { ErrorWithReasonCode } from 'mqtt';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { harness, refused, settle } from '../helpers/connection-life.js';
import { captureLogger } from '../helpers/logger.js';

const INFO = 30;
const WARN = 40;
const topics = deviceTopics('device-1');

describe('ConnectionLife: the broker’s packets', () => {
  it('hands PUBACKs and the CONNACK’s limits to the publish window', async () => {
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept({ receiveMaximum: 10, maximumPacketSize: 4_096 });
    c.emit('packetreceive', { cmd: 'puback', messageId: 7, reasonCode: 0x97, properties: { reasonString: 'quota' } });
    c.emit('packetreceive', { cmd: 'pingresp' });
    c.emit('packetreceive', { cmd: 'suback', messageId: 8 });
    expect(h.window.pubacks).toEqual([[7, 0x97, 'quota']]);
    expect(h.window.limits).toEqual([{ receiveMaximum: 10, maximumPacketSize: 4_096 }]);
  });

  it('marks every PINGRESP while the channel is not online', async () => {
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    c.emit('packetreceive', { cmd: 'pingresp' });
    // The probe saw the broker fail meanwhile: the next PINGRESP, however soon, says it is back.
    h.monitor.markFailure('mqtt', 'ping', 'the broker port is closed');
    c.emit('packetreceive', { cmd: 'pingresp' });
    c.emit('packetreceive', { cmd: 'pingresp' });
    expect(h.successes).toEqual(['connect', 'ping', 'ping']);
    expect(h.monitor.channelStatus('mqtt')).toBe('online');
  });

  it('puts the watchdog off with every packet from the broker, and closes 1.5 x keep-alive after the last', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, mqtt: { keepAliveSeconds: 10 } });
    h.start();
    await settle();
    const c = h.clients[0]!;
    await h.clock.advance(2_000);
    c.accept();
    await h.clock.advance(8_000);
    c.emit('packetreceive', { cmd: 'pingresp' });
    await h.clock.advance(14_999);
    expect(c.closed).toBe(false);
    await h.clock.advance(1);
    expect(c.ends[0]).toEqual([true, undefined]);
    await settle();
    expect(h.failures[0]!.error).toBe('connection lost: nothing from the broker for 15000 ms (1.5 x keep-alive of 10 s): the connection is half-open');
    expect(h.events.disconnected).toEqual([expect.objectContaining({ connectedForMs: 23_000 })]);
    expect(log.records().filter((r) => String(r.msg).endsWith('closing it'))).toEqual([
      expect.objectContaining({ level: WARN, silentForMs: 15_000, msg: 'mqtt: nothing from the broker for 15000 ms (1.5 x keep-alive of 10 s): the connection is half-open; closing it' }),
    ]);
  });

  it('takes a half-open connection from the window at once, before its socket has closed', async () => {
    const h = harness({ mqtt: { keepAliveSeconds: 10 }, holdClose: true });
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    await h.clock.advance(15_000);
    expect(c.ends).toEqual([[true, undefined]]);
    expect(h.attached[0]!.ready).toBe(false);
    expect(h.life.stats()).toMatchObject({ connected: false, subscribed: false });
    c.drop();
    await settle();
    expect(h.failures).toHaveLength(1);
  });

  it('counts a keep-alive timeout of mqtt.js against ping, and logs client errors at debug', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.accept();
    h.clients[0]!.fail(new Error('Keepalive timeout'));
    await settle();
    const described = 'no answer to the keep-alive ping (mqtt.js keep-alive timeout)';
    expect(h.failures).toEqual([{ operation: 'ping', error: `connection lost: ${described}`, kind: 'transport' }]);
    expect(log.records().filter((r) => r.msg === `mqtt: ${described}`)).toEqual([expect.objectContaining({ level: 20, err: described })]);
  });

  it('names the clock for a certificate not yet valid while the clock is not synced, and counts it as an answer, not a network failure', async () => {
    let synced = false;
    const h = harness({ clockSynced: () => synced });
    h.start();
    await settle();
    h.clients[0]!.fail(Object.assign(new Error('certificate is not yet valid'), { code: 'CERT_NOT_YET_VALID' }));
    h.clients[0]!.end(true);
    await settle();
    expect(h.failures).toEqual([
      {
        operation: 'connect',
        error: "TLS to broker.test: the device clock is not synced (it reads 2026-01-01T00:00:00.000Z), and by it the server's certificate is not yet valid (CERT_NOT_YET_VALID); retrying once the clock is synced",
        kind: 'answer',
      },
    ]);
    synced = true;
    await h.clock.advance(1_000);
    h.clients[1]!.fail(Object.assign(new Error('certificate is not yet valid'), { code: 'CERT_NOT_YET_VALID' }));
    h.clients[1]!.end(true);
    await settle();
    expect(h.failures[1]).toMatchObject({ kind: 'transport', error: expect.stringContaining('(is the device clock right?)') });
  });

  it('takes only a CONNACK’s "Connection refused" for a refusal, not other errors with a reason code', async () => {
    const h = harness();
    h.start();
    await settle();
    h.clients[0]!.fail(new ErrorWithReasonCode('Not authorized to publish', 0x87));
    await settle();
    expect(h.failures).toEqual([{ operation: 'connect', error: 'Not authorized to publish (0x87)', kind: 'transport' }]);
  });
});

describe('ConnectionLife: each connection', () => {
  it('counts reconnects, logs each connection, and says when the broker did not keep the session', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.accept({}, false);
    h.clients[0]!.fail(refused());
    await h.clock.advance(1_000);
    h.clients[1]!.accept({}, true);
    h.clients[1]!.fail(refused());
    // Connections lost at once: the backoff does not start over.
    await h.clock.advance(2_000);
    h.clients[2]!.accept({}, false);
    expect(h.life.stats().reconnects).toBe(2);
    expect(h.events.connected.map((e) => [e.reconnect, e.sessionPresent])).toEqual([[false, false], [true, true], [true, false]]);
    const lines = log.records().filter((r) => String(r.msg).startsWith('mqtt: connected') || String(r.msg).includes('did not keep'));
    expect(lines).toEqual([
      expect.objectContaining({ level: INFO, msg: 'mqtt: connected', url: 'mqtt://broker.test:1883', sessionPresent: false, inflight: 2, queued: 3 }),
      expect.objectContaining({ level: INFO, msg: 'mqtt: connected (session resumed)', sessionPresent: true }),
      expect.objectContaining({ level: INFO, msg: 'mqtt: connected', sessionPresent: false }),
      expect.objectContaining({ level: INFO, msg: 'mqtt: the broker did not keep the session; messages sent to the device while it was away are lost, subscribing again' }),
    ]);
  });

  it('reports each subscription the broker refuses, and is not subscribed', async () => {
    const log = captureLogger();
    const refusedTopic = topics.subscriptions[0]!.topic;
    const h = harness({ logger: log.logger, suback: (ts) => ({ err: null, granted: ts.map((topic) => ({ topic, qos: topic === refusedTopic ? 0x80 : 1 })) }) });
    h.start();
    await settle();
    h.clients[0]!.accept();
    const error = `the broker refused the subscription to ${refusedTopic}: Unspecified error (0x80)`;
    expect(h.life.stats()).toMatchObject({ connected: true, subscribed: false, lastError: error });
    expect(h.failures).toEqual([{ operation: 'subscribe', error, kind: undefined }]);
    expect(log.records().filter((r) => String(r.msg).includes('refused the subscription'))).toEqual([
      expect.objectContaining({ level: 50, topic: refusedTopic, reasonCode: 0x80, msg: `mqtt: ${error}` }),
    ]);
  });

  it('takes a grant of QoS 2 for a subscription, and warns when subscribing failed', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, suback: (ts) => ({ err: null, granted: ts.map((topic) => ({ topic, qos: 2 })) }) });
    h.start();
    await settle();
    h.clients[0]!.accept();
    expect(h.life.stats().subscribed).toBe(true);

    const failing = harness({ logger: log.logger, suback: () => ({ err: new Error('connection closed'), granted: undefined }) });
    failing.start();
    await settle();
    failing.clients[0]!.accept();
    expect(failing.life.stats().subscribed).toBe(false);
    expect(log.records().filter((r) => String(r.msg).startsWith('mqtt: subscribing failed'))).toEqual([
      expect.objectContaining({ level: WARN, err: 'connection closed', msg: 'mqtt: subscribing failed: connection closed' }),
    ]);
  });

  it('says nothing of a SUBACK failure that comes after its connection was lost', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, holdSubacks: true, suback: () => ({ err: new Error('connection closed'), granted: undefined }) });
    h.start();
    await settle();
    h.clients[0]!.accept();
    h.clients[0]!.fail(refused());
    await settle();
    h.clients[0]!.pendingSubacks.shift()!();
    expect(log.records().filter((r) => String(r.msg).startsWith('mqtt: subscribing failed'))).toEqual([]);
  });

  it('sends a retained birth on every connection, and warns when one is not accepted', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.accept();
    const at = h.clock.now();
    h.clients[0]!.fail(refused());
    await h.clock.advance(1_000);
    h.clients[1]!.accept();
    expect(h.window.births.map((b) => b.message)).toEqual([
      { id: `birth-${at}-1`, topic: topics.status, payload: Buffer.from(JSON.stringify({ state: 'online', ts: at })), retain: true },
      { id: `birth-${at + 1_000}-2`, topic: topics.status, payload: Buffer.from(JSON.stringify({ state: 'online', ts: at + 1_000 })), retain: true },
    ]);
    const [first, second] = h.window.births;
    first!.done({ ok: false, permanent: false, reason: 'superseded' });
    second!.done({ ok: false, permanent: true, reasonCode: 0x87, reason: 'Not authorized (0x87)' });
    h.window.stopped = true;
    second!.done({ ok: false, permanent: false, reason: 'the session stopped' });
    expect(log.records().filter((r) => String(r.msg).includes('birth'))).toEqual([
      expect.objectContaining({ level: WARN, reason: 'Not authorized (0x87)', msg: 'mqtt: the birth message was not accepted: Not authorized (0x87)' }),
    ]);
  });
});

describe('ConnectionLife: a stop', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('closes an MQTT 3.1.1 connection at once', async () => {
    const h = harness({ protocol: 4 });
    h.start();
    await settle();
    h.clients[0]!.accept();
    await h.stop();
    expect(h.clients[0]!.ends[0]).toEqual([true, undefined]);
    expect(h.attached[0]!.ready).toBe(false);
  });

  it('closes the socket itself after stopTimeoutMs when the broker leaves it open after the DISCONNECT', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness({ lingerOnGracefulEnd: true, stopTimeoutMs: 500 });
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    const stopped = h.stop();
    // Going away: the window sends nothing more on it.
    expect(h.attached[0]!.ready).toBe(false);
    expect(c.ends).toEqual([[false, { reasonCode: 0x04 }]]);
    vi.advanceTimersByTime(499);
    expect(c.stream.destroyed).toBe(false);
    c.stream.on('close', () => c.drop());
    vi.advanceTimersByTime(1);
    expect(c.stream.destroyed).toBe(true);
    await stopped;
  });

  it('leaves the socket alone when the broker closed it in time', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    await h.stop();
    vi.advanceTimersByTime(5_000);
    expect(c.stream.destroyed).toBe(false);
  });
});
