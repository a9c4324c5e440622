import { ErrorWithReasonCode } from 'mqtt';
import { describe, expect, it } from 'vitest';
import type { ProtocolSetting } from '../../src/mqtt/negotiation.js';
import { FLOOR_MS, harness, refused, settle, type FakeClient, type Harness } from '../helpers/connection-life.js';
import { captureLogger } from '../helpers/logger.js';

const A = 'mqtt://a.test:1883';
const B = 'mqtt://b.test:1883';
const C = 'mqtt://c.test:1883';

/** The session's own attempts (not the checks of the preferred broker), by broker URL. */
const attempts = (h: Harness): string[] => h.clients.filter((c) => !isProbe(c)).map((c) => new URL(c.url).host);
const probes = (h: Harness): FakeClient[] => h.clients.filter(isProbe);
const isProbe = (c: FakeClient): boolean => String(c.options.clientId).endsWith('-probe');
const last = (h: Harness): FakeClient => h.clients.filter((c) => !isProbe(c)).at(-1)!;

/** Advances the clock to just before `ms` (nothing new yet), then to it (the next attempt). */
async function waitExactly(h: Harness, ms: number): Promise<void> {
  const before = h.clients.length;
  await h.clock.advance(ms - 1);
  await settle();
  expect(h.clients.length, `no attempt before ${ms} ms`).toBe(before);
  await h.clock.advance(1);
  await settle();
}

const retryWaits = (records: () => Record<string, unknown>[]): unknown[] => records().filter((r) => 'retryInMs' in r).map((r) => r.retryInMs);

describe('ConnectionLife: a list of brokers', () => {
  it('tries the brokers in order, the next after each failure, with the one backoff growing between attempts over the round', async () => {
    const cap = captureLogger('debug');
    const h = harness({ mqtt: { urls: [A, B, C] }, logger: cap.logger });
    h.start();
    await settle();
    expect(attempts(h)).toEqual(['a.test:1883']);
    last(h).fail(refused());
    await settle();
    await waitExactly(h, 1_000);
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883']);
    last(h).fail(refused());
    await settle();
    await waitExactly(h, 2_000);
    last(h).fail(refused());
    await settle();
    await waitExactly(h, FLOOR_MS);
    // A full round failed: back to the first, and the wait kept growing (no spinning through the list).
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883', 'c.test:1883', 'a.test:1883']);
    // (The third is the offline floor of the harness's retry policy, which is longer: three failures make the channel offline.)
    expect(retryWaits(cap.records)).toEqual([1_000, 2_000, FLOOR_MS]);
    const said = cap.records().find((r) => r.retryInMs === 1_000)!;
    expect(said).toMatchObject({ url: 'mqtt://a.test:1883', next: 'mqtt://b.test:1883' });
    expect(String(said.msg)).toMatch(/^mqtt: could not connect \(mqtt:\/\/a\.test:1883\): .*; trying mqtt:\/\/b\.test:1883 in 1000 ms$/);
    expect(h.life.stats()).toMatchObject({ broker: 'mqtt://a.test:1883', brokerIndex: 0, connectionFailures: 3 });
  });

  it('moves to the next broker when an established connection is lost, and says which one it uses', async () => {
    const cap = captureLogger('info');
    // Keep-alive at its longest: the fake broker sends no PINGRESP, and the watchdog must not end the connection here.
    const h = harness({ mqtt: { urls: [A, B], returnToPreferredSeconds: 0, keepAliveSeconds: 3600 }, logger: cap.logger });
    h.start();
    await settle();
    last(h).accept();
    last(h).drop();
    await settle();
    await waitExactly(h, 1_000);
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883']);
    last(h).accept();
    expect(h.life.stats()).toMatchObject({ connected: true, broker: 'mqtt://b.test:1883', brokerIndex: 1 });
    expect(cap.records().filter((r) => String(r.msg).startsWith('mqtt: connected')).map((r) => r.msg)).toEqual([
      'mqtt: connected to mqtt://a.test:1883',
      'mqtt: connected to mqtt://b.test:1883 (not the preferred broker)',
    ]);
    // 0: never moves back by itself.
    await h.clock.advance(80 * 60_000);
    await settle();
    expect(probes(h)).toHaveLength(0);
    expect(h.life.stats().brokerIndex).toBe(1);
  });

  it('passes over a broker that refuses the credentials at the usual backoff; the slow retry only once every broker refused them', async () => {
    const cap = captureLogger('debug');
    const h = harness({ mqtt: { urls: [A, B] }, logger: cap.logger, random: 0.5 });
    const refuse = async (): Promise<void> => {
      const c = last(h);
      c.emit('packetreceive', { cmd: 'connack', reasonCode: 0x87, sessionPresent: false });
      c.fail(new ErrorWithReasonCode('Connection refused: Not authorized', 0x87));
      await settle();
    };
    h.start();
    await settle();
    await refuse();
    await waitExactly(h, 1_000);
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883']);
    await refuse();
    // Both refused: 8 s cap x (0.5 + 0.5 x 0.5), as with one broker.
    await waitExactly(h, 6_000);
    await refuse();
    await waitExactly(h, 6_000);
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883', 'a.test:1883', 'b.test:1883']);
    expect(h.failures.map((f) => f.kind)).toEqual(['auth', 'auth', 'auth']);
    // B accepts: the streak is over; a refusal by A alone is passed over at the backoff again.
    last(h).accept();
    last(h).drop();
    await settle();
    expect(retryWaits(cap.records).at(-1)).toBeLessThan(6_000);
  });
});

describe('ConnectionLife: back to the preferred broker', () => {
  /** Connected to B after A failed once. */
  async function onSecond(returnToPreferredSeconds = 300, protocol: ProtocolSetting = 5): Promise<Harness> {
    const h = harness({ mqtt: { urls: [A, B], returnToPreferredSeconds, keepAliveSeconds: 3600 }, protocol });
    h.start();
    await settle();
    last(h).fail(refused());
    await settle();
    await h.clock.advance(1_000);
    await settle();
    last(h).accept();
    expect(h.life.stats()).toMatchObject({ connected: true, brokerIndex: 1 });
    return h;
  }

  it('checks the preferred broker after returnToPreferredSeconds with a connection of its own, and moves back once it accepts', async () => {
    const h = await onSecond(300);
    const onB = last(h);
    await h.clock.advance(299_999);
    await settle();
    expect(probes(h)).toHaveLength(0);
    await h.clock.advance(1);
    await settle();
    const [check] = probes(h);
    expect(new URL(check!.url).host).toBe('a.test:1883');
    // Its own client id and a clean session without a will: it neither takes over the session nor receives what waits for it.
    expect(check!.options).toMatchObject({ clientId: 'device-1-probe', clean: true });
    expect(check!.options.will).toBeUndefined();
    expect(check!.options.outgoingStore).toBeUndefined();
    expect(onB.ends).toEqual([]);
    check!.accept();
    await settle();
    expect(check!.closed).toBe(true);
    // A graceful DISCONNECT (reason 0: no will, the device is not offline), after the in-flight PUBACKs.
    expect(onB.ends[0]).toEqual([false, { reasonCode: 0 }]);
    await settle();
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883', 'a.test:1883']);
    // At once: moving back is not a failure to back off from.
    expect(last(h).options).toMatchObject({ clean: false, clientId: 'device-1' });
    last(h).accept();
    expect(h.life.stats()).toMatchObject({ connected: true, broker: 'mqtt://a.test:1883', brokerIndex: 0, connectionFailures: 1 });
    expect(h.failures).toHaveLength(1);
    expect(h.events.disconnected.at(-1)!.error).toBe('moved back to the preferred broker mqtt://a.test:1883');
    expect(h.events.connected.map((e) => e.reconnect)).toEqual([false, true]);
    // Subscribed and attached again on the new connection.
    expect(last(h).subscriptions.length).toBeGreaterThan(0);
    expect(h.attached).toHaveLength(2);
    expect(h.attached[1]!.ready).toBe(true);
  });

  it('stays while the preferred broker refuses, and checks it again once per period, not more', async () => {
    const h = await onSecond(60);
    await h.clock.advance(60_000);
    await settle();
    expect(probes(h)).toHaveLength(1);
    for (let i = 1; i <= 3; i++) {
      probes(h).at(-1)!.fail(refused());
      await settle();
      await h.clock.advance(59_999);
      await settle();
      expect(probes(h)).toHaveLength(i);
      await h.clock.advance(1);
      await settle();
      expect(probes(h)).toHaveLength(i + 1);
    }
    expect(h.life.stats()).toMatchObject({ connected: true, brokerIndex: 1 });
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883']);
    expect(h.failures).toHaveLength(1);
  });

  it('a flapping preferred broker costs at most one move per period: after it drops, the session stays on the other a full period', async () => {
    const h = await onSecond(60);
    await h.clock.advance(60_000);
    await settle();
    for (let round = 0; round < 3; round++) {
      probes(h).at(-1)!.accept();
      await settle();
      await settle();
      last(h).accept();
      expect(h.life.stats().brokerIndex).toBe(0);
      // The preferred broker drops at once; the next attempt goes to B after the backoff.
      last(h).drop();
      await settle();
      await h.clock.advance(8_000);
      await settle();
      last(h).accept();
      expect(h.life.stats().brokerIndex).toBe(1);
      // No check before a full period on B.
      const checks = probes(h).length;
      await h.clock.advance(59_999);
      await settle();
      expect(probes(h)).toHaveLength(checks);
      await h.clock.advance(1);
      await settle();
      expect(probes(h)).toHaveLength(checks + 1);
    }
    expect(attempts(h)).toEqual(['a.test:1883', 'b.test:1883', 'a.test:1883', 'b.test:1883', 'a.test:1883', 'b.test:1883', 'a.test:1883', 'b.test:1883']);
  });

  it('gives up a check that gets no answer after connectTimeoutMs + 1 s, and checks again a period later', async () => {
    const h = await onSecond(60);
    await h.clock.advance(60_000);
    await settle();
    const check = probes(h)[0]!;
    await h.clock.advance(30_999);
    await settle();
    expect(check.closed).toBe(false);
    await h.clock.advance(1);
    await settle();
    expect(check.closed).toBe(true);
    await h.clock.advance(59_999);
    await settle();
    expect(probes(h)).toHaveLength(1);
    await h.clock.advance(1);
    await settle();
    expect(probes(h)).toHaveLength(2);
    expect(h.life.stats()).toMatchObject({ connected: true, brokerIndex: 1 });
  });

  it('uses MQTT 3.1.1 for the next check when the preferred broker refuses MQTT 5', async () => {
    const h = await onSecond(60, 'auto');
    await h.clock.advance(60_000);
    await settle();
    expect(probes(h)[0]!.options.protocolVersion).toBe(5);
    probes(h)[0]!.fail(new ErrorWithReasonCode('Connection refused: Unsupported Protocol Version', 0x84));
    await settle();
    await h.clock.advance(60_000);
    await settle();
    expect(probes(h)[1]!.options.protocolVersion).toBe(4);
  });

  it('stops checking when the connection ends or the session stops', async () => {
    const h = await onSecond(60);
    await h.stop();
    await h.clock.advance(600_000);
    await settle();
    expect(probes(h)).toHaveLength(0);
  });
});
