import { ErrorWithReasonCode } from 'mqtt';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { abortError } from '../../src/util/clock.js';
import { FLOOR_MS, harness, refused, settle } from '../helpers/connection-life.js';
import { captureLogger } from '../helpers/logger.js';

describe('ConnectionLife: a connection', () => {
  it('subscribes, hands the ready connection to the window, marks the monitor and says connected', async () => {
    const h = harness();
    h.start();
    await settle();
    expect(h.clients).toHaveLength(1);
    expect(h.clients[0]!.options).toMatchObject({ protocolVersion: 5, clean: false, reconnectPeriod: 0 });
    h.clients[0]!.accept();
    expect(h.life.connected).toBe(true);
    expect(h.clients[0]!.subscriptions).toEqual(deviceTopics('device-1').subscriptions.map((s) => s.topic));
    expect(h.attached).toHaveLength(1);
    expect(h.attached[0]!.ready).toBe(true);
    expect(h.events.connected).toEqual([{ sessionPresent: false, reconnect: false, at: h.clock.now() }]);
    expect(h.monitor.channelStatus('mqtt')).toBe('online');
    expect(h.life.stats()).toMatchObject({ connected: true, subscribed: true, reconnects: 0, connectionFailures: 0, sessionPresent: false });
  });

  it('closes a connection silent for 1.5 x keep-alive; the loss counts against ping', async () => {
    const h = harness({ mqtt: { keepAliveSeconds: 10 } });
    h.start();
    await settle();
    h.clients[0]!.accept();
    await h.clock.advance(14_999);
    expect(h.clients[0]!.closed).toBe(false);
    await h.clock.advance(1);
    await settle();
    expect(h.clients[0]!.closed).toBe(true);
    expect(h.failures[0]).toMatchObject({ operation: 'ping', kind: 'transport' });
    expect(h.failures[0]!.error).toMatch(/^connection lost: nothing from the broker for 15000 ms/);
    expect(h.events.disconnected).toEqual([expect.objectContaining({ connectedForMs: 15_000 })]);
    expect(h.life.connected).toBe(false);
    // Its moment is the device's own (timed by its last ping), so the retry is drawn as an already spread one.
    expect(h.retryOptions).toEqual([{ timedOut: false, phased: true }]);
  });

  it('a connection the broker closes is not a silent one: its retry spreads like any first one', async () => {
    const h = harness();
    h.start();
    await settle();
    h.clients[0]!.accept();
    h.clients[0]!.fail(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
    await settle();
    expect(h.failures[0]).toMatchObject({ operation: 'connect', kind: 'transport' });
    expect(h.retryOptions).toEqual([{ timedOut: false, phased: false }]);
  });

  it('passes on the JSON messages of the topics the agent handles, and drops the rest', async () => {
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    const topics = deviceTopics('device-1');
    c.emit('message', topics.subscriptions[0]!.topic, Buffer.from('{"v":1}'), { retain: true });
    c.emit('message', topics.subscriptions[0]!.topic, Buffer.from('not json'), { retain: false });
    c.emit('message', 'iot/device-1/elsewhere', Buffer.from('{}'), { retain: false });
    expect(h.events.message).toEqual([{ kind: topics.subscriptions[0]!.kind, topic: topics.subscriptions[0]!.topic, payload: { v: 1 }, retained: true, at: h.clock.now() }]);
    expect(h.life.stats().droppedIncoming).toBe(1);
  });

  it('reads the device key and the credentials registration issued at each attempt (a key that came later is used without a restart)', async () => {
    const cloud: { key?: string; issued?: { username: string; password: string } } = {};
    const h = harness({ credentials: { apiKey: () => cloud.key, issued: () => cloud.issued } });
    h.start();
    await settle();
    expect(h.clients[0]!.options).toMatchObject({ username: 'device-1' });
    expect(h.clients[0]!.options.password).toBeUndefined();
    cloud.key = 'issued-device-key';
    cloud.issued = { username: 'fleet-user', password: 'fleet-pass' };
    h.clients[0]!.fail(refused());
    await h.clock.advance(1_000);
    await settle();
    expect(h.clients).toHaveLength(2);
    expect(h.clients[1]!.options).toMatchObject({ username: 'fleet-user', password: 'fleet-pass' });
  });

  it('asks the broker to publish the will at a stop (MQTT 5 DISCONNECT 0x04)', async () => {
    const h = harness();
    h.start();
    await settle();
    h.clients[0]!.accept();
    await h.stop();
    expect(h.clients[0]!.ends[0]).toEqual([false, { reasonCode: 0x04 }]);
    expect(h.failures).toEqual([]);
  });
});

describe('ConnectionLife: between attempts', () => {
  it('waits the backoff after a failed attempt, and the probe ends the wait and starts the backoff over', async () => {
    const h = harness();
    h.start();
    await settle();
    h.clients[0]!.fail(refused());
    await settle();
    expect(h.failures).toEqual([{ operation: 'connect', error: expect.stringContaining('ECONNREFUSED'), kind: 'transport' }]);
    await h.clock.advance(999);
    expect(h.clients).toHaveLength(1);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(2);

    // The second failure waits the doubled step; the probe wakes the loop before it is over.
    h.clients[1]!.fail(refused());
    await h.clock.advance(1_000);
    expect(h.clients).toHaveLength(2);
    expect(h.wakeup.wake('the broker port accepts connections')).toBe(1);
    await h.clock.advance(0);
    await settle();
    expect(h.clients).toHaveLength(3);
    // Back to the first step: a connection that is lost at once waits 1 s again.
    h.clients[2]!.accept();
    h.clients[2]!.fail(refused());
    await h.clock.advance(1_000);
    await settle();
    expect(h.clients).toHaveLength(4);
    expect(h.life.stats()).toMatchObject({ connectionFailures: 3, reconnects: 0 });
  });

  it('while the channel is offline for want of a connection, tries once per offline floor; the probe is the way back', async () => {
    const h = harness();
    h.start();
    for (const wait of [1_000, 2_000]) {
      await settle();
      h.clients.at(-1)!.fail(refused());
      await h.clock.advance(wait);
    }
    await settle();
    // The third failure in a row takes the channel offline: the floor, not the backoff's 4 s.
    h.clients[2]!.fail(refused());
    await settle();
    expect(h.monitor.channelStatus('mqtt')).toBe('offline');
    await h.clock.advance(FLOOR_MS - 1);
    expect(h.clients).toHaveLength(3);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(4);

    h.clients[3]!.fail(refused());
    await h.clock.advance(10_000);
    expect(h.clients).toHaveLength(4);
    h.wakeup.wake('the broker port accepts connections');
    await h.clock.advance(0);
    await settle();
    expect(h.clients).toHaveLength(5);
    h.clients[4]!.accept();
    expect(h.monitor.channelStatus('mqtt')).toBe('online');
  });

  it('retries refused credentials after half to all of the backoff cap, marked auth on the monitor, not a network fault', async () => {
    const h = harness({ random: 0.5 });
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.emit('packetreceive', { cmd: 'connack', reasonCode: 0x87, sessionPresent: false });
    c.fail(new ErrorWithReasonCode('Connection refused: Not authorized', 0x87));
    await settle();
    expect(h.failures).toHaveLength(1);
    expect(h.failures[0]).toMatchObject({ operation: 'connect', kind: 'auth' });
    expect(h.failures[0]!.error).toMatch(/the broker refused the credentials/);
    // 8 s cap x (0.5 + 0.5 x 0.5)
    await h.clock.advance(5_999);
    expect(h.clients).toHaveLength(1);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(2);
  });

  it('connects with a clean session after two connections in a row were ended by a packet over the limit', async () => {
    const h = harness({ limits: { maxCloudResponseBytes: 1_000, maxJsonDepth: 64 } });
    h.start();
    // A PUBLISH header announcing 5,000 bytes: the connection ends before the body comes.
    const oversize = Buffer.from([0x30, 0x88, 0x27]);
    for (let i = 0; i < 2; i++) {
      await settle();
      const c = h.clients[i]!;
      expect(c.options.clean).toBe(false);
      c.accept();
      c.stream.write(oversize);
      await settle();
      expect(c.closed).toBe(true);
      await h.clock.advance(8_000);
    }
    await settle();
    expect(h.clients).toHaveLength(3);
    expect(h.clients[2]!.options.clean).toBe(true);
    expect(h.life.stats().droppedIncoming).toBe(2);
    expect(h.life.stats().lastError).toMatch(/a packet of 5003 bytes, over limits.maxCloudResponseBytes \(1000\)/);
    // Once the clean session is up, the next connection resumes the stored session again.
    h.clients[2]!.accept();
    h.clients[2]!.fail(refused());
    await h.clock.advance(8_000);
    await settle();
    expect(h.clients[3]!.options.clean).toBe(false);
  });
});

const INFO = 30;
const WARN = 40;
const ERROR = 50;
const DEBUG = 20;
const URL_LOGGED = 'mqtt://broker.test:1883';

describe('ConnectionLife: what the operator reads', () => {
  it('reports a connection as up only once the broker accepted it, and subscribed only once every SUBACK came', async () => {
    const h = harness({ holdSubacks: true });
    expect(h.life.stats()).toMatchObject({ connected: false, subscribed: false, since: null });
    h.start();
    await settle();
    // Attempting since the first attempt's wall time.
    const firstAttemptAt = h.clock.now();
    expect(h.life.connected).toBe(false);
    expect(h.life.stats()).toMatchObject({ connected: false, subscribed: false, since: firstAttemptAt });
    h.clients[0]!.accept();
    expect(h.life.stats()).toMatchObject({ connected: true, subscribed: false });
    h.clients[0]!.pendingSubacks.shift()!();
    expect(h.life.stats()).toMatchObject({ connected: true, subscribed: true });
    // Lost: neither up nor subscribed, and the window's link is no longer ready.
    h.clients[0]!.fail(refused());
    await settle();
    expect(h.life.stats()).toMatchObject({ connected: false, subscribed: false });
    expect(h.attached[0]!.ready).toBe(false);
  });

  it('keeps `since` at the first attempt while attempts fail, and at the loss after a connection', async () => {
    const h = harness();
    h.start();
    await settle();
    const firstAttemptAt = h.clock.now();
    h.clients[0]!.fail(refused());
    await h.clock.advance(1_000);
    await settle();
    expect(h.clients).toHaveLength(2);
    expect(h.life.stats().since).toBe(firstAttemptAt);
    h.clients[1]!.accept();
    await h.clock.advance(500);
    h.clients[1]!.fail(refused());
    await settle();
    const lostAt = h.clock.now();
    await h.clock.advance(8_000);
    await settle();
    expect(h.clients).toHaveLength(3);
    expect(h.life.stats().since).toBe(lostAt);
    // A connection lost with an error of its own counts against connect, not ping.
    expect(h.failures.map((f) => f.operation)).toEqual(['connect', 'connect']);
  });

  it('shows the latest error recorded from elsewhere in the session', () => {
    const h = harness();
    h.life.recordError('the outbox store is full');
    expect(h.life.stats().lastError).toBe('the outbox store is full');
  });

  it('marks the first PINGRESP as a success, then at most once a second while online', async () => {
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.accept();
    c.emit('packetreceive', { cmd: 'pingresp' });
    c.emit('packetreceive', { cmd: 'pingresp' });
    await h.clock.advance(1_000);
    c.emit('packetreceive', { cmd: 'pingresp' });
    expect(h.successes).toEqual(['connect', 'ping', 'ping']);
  });

  it('logs a connection never made at info, with the url, the error and the wait', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.fail(refused());
    await settle();
    const line = log.records().find((r) => String(r.msg).includes('retrying'));
    expect(line).toMatchObject({
      level: INFO,
      url: URL_LOGGED,
      error: expect.stringContaining('ECONNREFUSED'),
      retryInMs: 1_000,
      msg: expect.stringMatching(/^mqtt: could not connect: .*ECONNREFUSED.*; retrying in 1000 ms$/),
    });
    expect(String(line!.msg)).not.toContain('credentials');
  });

  it('logs a lost connection at warn', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.accept();
    h.clients[0]!.drop();
    await settle();
    expect(log.records().find((r) => String(r.msg).includes('retrying'))).toMatchObject({
      level: WARN,
      error: 'the connection closed',
      retryInMs: 1_000,
      msg: 'mqtt: connection lost: the connection closed; retrying in 1000 ms',
    });
    expect(h.failures).toEqual([{ operation: 'connect', error: 'connection lost: the connection closed', kind: 'transport' }]);
    expect(h.events.disconnected).toEqual([expect.objectContaining({ error: 'the connection closed' })]);
    // The closed client is ended at once, so its stores hold nothing.
    expect(h.clients[0]!.ends).toEqual([[true, undefined]]);
  });

  it('warns of refused credentials once per outage, with the reason in words; the repeats are debug', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, random: 0.5 });
    h.start();
    const refuse = async (): Promise<void> => {
      await settle();
      h.clients.at(-1)!.fail(new ErrorWithReasonCode('Connection refused: Not authorized', 0x87));
      await settle();
      await h.clock.advance(6_000);
    };
    await refuse();
    await refuse();
    await settle();
    h.clients.at(-1)!.accept();
    h.clients.at(-1)!.drop();
    await settle();
    await h.clock.advance(60_000);
    await refuse();
    const said = log.records().filter((r) => String(r.msg).includes('refused the credentials'));
    expect(said.map((r) => r.level)).toEqual([WARN, DEBUG, WARN]);
    expect(said[0]).toMatchObject({
      refusal: 'auth',
      reasonCode: 0x87,
      retryInMs: 6_000,
      msg: expect.stringMatching(/^mqtt: could not connect: the broker refused the connection: Not authorized \(0x87\); the broker refused the credentials: check device\.apiKey .*; retrying in 6000 ms \(the long backoff: retrying sooner cannot fix credentials\)$/),
    });
  });

  it('counts options mqtt.js cannot take as a failed attempt and tries again after the backoff', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, connectThrows: new Error('invalid protocol') });
    h.start();
    await settle();
    expect(h.failures).toEqual([{ operation: 'connect', error: 'invalid protocol', kind: 'transport' }]);
    expect(log.records().find((r) => String(r.msg).includes('retrying'))).toMatchObject({ level: INFO, msg: 'mqtt: could not connect: invalid protocol; retrying in 1000 ms' });
    await h.clock.advance(1_000);
    expect(h.failures).toHaveLength(2);
    expect(h.life.stats().connectionFailures).toBe(2);
  });

  it('counts a CA file it cannot read as an attempt that never connected', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, mqtt: { url: 'mqtts://broker.test:8883', caFile: '/nonexistent/ca.pem' } });
    h.start();
    await settle();
    expect(h.clients).toHaveLength(0);
    expect(h.failures).toEqual([{ operation: 'connect', error: expect.stringContaining('mqtt.caFile: cannot read /nonexistent/ca.pem'), kind: 'transport' }]);
    expect(log.records().find((r) => String(r.msg).includes('retrying'))).toMatchObject({ level: INFO, msg: expect.stringMatching(/^mqtt: could not connect: mqtt.caFile/) });
  });

  it('says why the broker closed the connection, and who took the client id over', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.accept();
    h.clients[0]!.emit('disconnect', { cmd: 'disconnect', reasonCode: 0x8e });
    h.clients[0]!.drop();
    await h.clock.advance(1_000);
    await settle();
    h.clients[1]!.accept();
    h.clients[1]!.emit('disconnect', { cmd: 'disconnect', reasonCode: 0x8b });
    h.clients[1]!.drop();
    await settle();
    expect(h.failures.map((f) => f.error)).toEqual([
      'connection lost: the broker closed the connection: Session taken over (0x8e) — another client is using client id device-1',
      'connection lost: the broker closed the connection: Server shutting down (0x8b)',
    ]);
    expect(log.records().filter((r) => String(r.msg).startsWith('mqtt: the broker closed'))).toEqual([
      expect.objectContaining({ level: WARN, reasonCode: 0x8e, msg: 'mqtt: the broker closed the connection: Session taken over (0x8e) — another client is using client id device-1' }),
      expect.objectContaining({ level: WARN, reasonCode: 0x8b, msg: 'mqtt: the broker closed the connection: Server shutting down (0x8b)' }),
    ]);
  });

  it('warns once when it connects with a clean session to drop a packet the broker keeps re-sending', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, limits: { maxCloudResponseBytes: 1_000, maxJsonDepth: 64 } });
    h.start();
    for (let i = 0; i < 2; i++) {
      await settle();
      h.clients[i]!.accept();
      h.clients[i]!.stream.write(Buffer.from([0x30, 0x88, 0x27]));
      await settle();
      // Closed at once, without waiting for the DISCONNECT.
      expect(h.clients[i]!.ends[0]).toEqual([true, undefined]);
      await h.clock.advance(8_000);
    }
    await settle();
    h.clients[2]!.accept();
    h.clients[2]!.fail(refused());
    await h.clock.advance(8_000);
    await settle();
    expect(h.clients).toHaveLength(4);
    expect(log.records().filter((r) => String(r.msg).includes('clean session'))).toEqual([
      expect.objectContaining({ level: WARN, closes: 2, msg: expect.stringMatching(/^mqtt: the broker keeps re-sending a packet over limits.maxCloudResponseBytes/) }),
    ]);
  });
});

describe('ConnectionLife: the loop', () => {
  it('falls back to MQTT 3.1.1 at once when the broker refuses version 5, without counting a failure', async () => {
    const h = harness({ protocol: 'auto' });
    h.start();
    await settle();
    h.clients[0]!.emit('packetreceive', { cmd: 'connack', reasonCode: 0x84, sessionPresent: false });
    h.clients[0]!.fail(new ErrorWithReasonCode('Connection refused: Unsupported Protocol Version', 0x84));
    await settle();
    await settle();
    expect(h.clients).toHaveLength(2);
    expect(h.clients[1]!.options.protocolVersion).toBe(4);
    expect(h.life.stats().connectionFailures).toBe(0);
    expect(h.failures).toEqual([]);
  });

  it('counts a close before any CONNACK once the broker\'s end accepted as an answer (a balancer with no broker behind it)', async () => {
    const reached = harness();
    reached.start();
    await settle();
    reached.clients[0]!.stream.emit('connect');
    reached.clients[0]!.drop();
    await settle();
    // The way is open: the probe's handshake can tell nothing new, and no offline floor holds the session.
    expect(reached.failures).toEqual([{ operation: 'connect', error: 'the connection closed before the broker accepted it', kind: 'answer' }]);
    const unreached = harness();
    unreached.start();
    await settle();
    unreached.clients[0]!.drop();
    await settle();
    expect(unreached.failures).toEqual([{ operation: 'connect', error: 'the connection closed before the broker accepted it', kind: 'transport' }]);
  });

  it('takes two closes before any CONNACK, with no error, for a refusal of version 5; network errors are not', async () => {
    const h = harness({ protocol: 'auto' });
    h.start();
    await settle();
    for (let i = 0; i < 2; i++) {
      h.clients.at(-1)!.fail(refused());
      await h.clock.advance(8_000);
      await settle();
    }
    expect(h.clients.map((c) => c.options.protocolVersion)).toEqual([5, 5, 5]);
    // The third failure in a row: the offline floor.
    h.clients[2]!.drop();
    await h.clock.advance(FLOOR_MS);
    await settle();
    h.clients[3]!.drop();
    await settle();
    await settle();
    expect(h.clients).toHaveLength(5);
    expect(h.clients[4]!.options.protocolVersion).toBe(4);
    expect(h.failures.at(-1)!.error).toBe('the connection closed before the broker accepted it');
  });

  it('stops without counting a failure when it is stopped while connecting, and leaves clients of past attempts alone', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger });
    h.start();
    await settle();
    h.clients[0]!.fail(refused());
    await h.clock.advance(1_000);
    await settle();
    const endsOfFirst = h.clients[0]!.ends.length;
    await h.stop();
    expect(h.clients[0]!.ends).toHaveLength(endsOfFirst);
    expect(h.clients[1]!.ends[0]).toEqual([true, undefined]);
    expect(h.life.stats().connectionFailures).toBe(1);
    expect(h.failures).toHaveLength(1);
    expect(log.records().filter((r) => String(r.msg).includes('retrying'))).toHaveLength(1);
  });

  it('ignores what an ended connection reports late', async () => {
    const h = harness();
    h.start();
    await settle();
    const c = h.clients[0]!;
    c.fail(refused());
    await settle();
    c.accept();
    c.emit('packetreceive', { cmd: 'pingresp' });
    expect(h.successes).toEqual([]);
    expect(h.events.connected).toEqual([]);
    expect(h.life.stats()).toMatchObject({ connected: false, lastConnectAt: null });
  });

  it('waits on the clock when the backoff wait breaks, logs it, and goes on', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, wait: () => Promise.reject(new Error('sleeper broke')) });
    h.start();
    await settle();
    h.clients[0]!.fail(refused());
    await settle();
    expect(log.records().filter((r) => String(r.msg).includes('backoff wait'))).toEqual([
      expect.objectContaining({ level: ERROR, err: 'sleeper broke', msg: 'mqtt: the backoff wait failed: sleeper broke' }),
    ]);
    await h.clock.advance(999);
    expect(h.clients).toHaveLength(1);
    await h.clock.advance(1);
    await settle();
    expect(h.clients).toHaveLength(2);
  });

  it('ends the loop when the backoff wait is aborted', async () => {
    const log = captureLogger();
    const h = harness({ logger: log.logger, wait: () => Promise.reject(abortError()) });
    h.start();
    await settle();
    h.clients[0]!.fail(refused());
    await h.running();
    await h.clock.advance(10_000);
    expect(h.clients).toHaveLength(1);
    expect(log.records().filter((r) => String(r.msg).includes('backoff wait'))).toEqual([]);
  });
});

describe('ConnectionLife: the CONNACK backstop', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('ends an attempt with no CONNACK a second after mqtt.connectTimeoutMs, keeping the error that came first', async () => {
    const h = harness({ mqtt: { connectTimeoutMs: 5_000 } });
    h.start();
    await settle();
    vi.advanceTimersByTime(5_999);
    expect(h.clients[0]!.ends).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(h.clients[0]!.ends[0]).toEqual([true, undefined]);
    await settle();
    expect(h.failures).toEqual([{ operation: 'connect', error: 'no CONNACK from the broker within 5000 ms (mqtt.connectTimeoutMs)', kind: 'transport' }]);

    await h.clock.advance(1_000);
    await settle();
    h.clients[1]!.emit('error', Object.assign(new Error('getaddrinfo EAI_AGAIN broker.test'), { code: 'EAI_AGAIN' }));
    vi.advanceTimersByTime(6_000);
    await settle();
    expect(h.failures[1]!.error).toContain('EAI_AGAIN');
  });

  it('leaves an established connection alone', async () => {
    const h = harness({ mqtt: { connectTimeoutMs: 5_000 } });
    h.start();
    await settle();
    h.clients[0]!.accept();
    vi.advanceTimersByTime(60_000);
    await settle();
    expect(h.clients[0]!.ends).toEqual([]);
    expect(h.life.connected).toBe(true);
  });
});
