import { describe, expect, it } from 'vitest';
import { classifyRefusal, PROTOCOL_KV_KEY, ProtocolNegotiator, RETRY_MQTT5_AFTER_CLOSES_MS, RETRY_MQTT5_AFTER_MS, type ProtocolSetting } from '../../src/mqtt/negotiation.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { createLogger } from '../../src/util/logger.js';
import { captureLogger } from '../helpers/logger.js';

const BROKER = 'mqtt://broker.example.test:1883';

function kvStore(): { data: Map<string, unknown>; getKv<T>(k: string): T | undefined; setKv(k: string, v: unknown): void } {
  const data = new Map<string, unknown>();
  return {
    data,
    getKv: <T>(k: string) => data.get(k) as T | undefined,
    setKv: (k, v) => void data.set(k, JSON.parse(JSON.stringify(v))),
  };
}

function negotiator(setting: ProtocolSetting, kv = kvStore(), clock = new FakeClock(), broker = BROKER): ProtocolNegotiator {
  return new ProtocolNegotiator({ setting, broker, kv, clock, logger: createLogger({ level: 'silent', destination: process.stderr }) });
}

describe('classifyRefusal', () => {
  it('tells a protocol refusal, a credentials refusal and anything else apart', () => {
    expect(classifyRefusal(0x84, false)).toBe('protocol');
    expect(classifyRefusal(1, false)).toBe('protocol');
    expect(classifyRefusal(undefined, true)).toBe('protocol');
    for (const code of [0x86, 0x87, 4, 5]) expect(classifyRefusal(code, false)).toBe('auth');
    expect(classifyRefusal(0x88, false)).toBe('other'); // server unavailable
    expect(classifyRefusal(3, false)).toBe('other');
    expect(classifyRefusal(undefined, false)).toBe('other'); // a network error or a timeout
  });
});

describe('ProtocolNegotiator', () => {
  it('auto: tries 5, falls back to 3.1.1 at once on an explicit refusal, and stores what was accepted', () => {
    const kv = kvStore();
    const n = negotiator('auto', kv);
    expect(n.version()).toBe(5);
    expect(n.refused(5, 'protocol', 0x84)).toBe(true);
    expect(n.version()).toBe(4);
    expect(n.info()).toEqual({ setting: 'auto', version: 4, negotiated: false });
    n.accepted(4);
    expect(n.info()).toEqual({ setting: 'auto', version: 4, negotiated: true });
    expect(kv.data.get(PROTOCOL_KV_KEY)).toMatchObject({ version: 4, broker: BROKER });
  });

  it('falls back on closes before CONNACK only after two in a row, and never for a broker that accepted MQTT 5', () => {
    const n = negotiator('auto');
    expect(n.refused(5, 'protocol', undefined)).toBe(false);
    expect(n.version()).toBe(5);
    expect(n.refused(5, 'protocol', undefined)).toBe(true);
    expect(n.version()).toBe(4);

    const kv = kvStore();
    const known = negotiator('auto', kv);
    known.accepted(5);
    for (let i = 0; i < 5; i++) expect(known.refused(5, 'protocol', undefined)).toBe(false);
    expect(known.version()).toBe(5);
    // Also after a restart: the store says this broker speaks MQTT 5.
    const restarted = negotiator('auto', kv);
    expect(restarted.version()).toBe(5);
    for (let i = 0; i < 5; i++) expect(restarted.refused(5, 'protocol', undefined)).toBe(false);
    // An explicit "unsupported" still counts (the broker was replaced by an older one).
    expect(restarted.refused(5, 'protocol', 0x84)).toBe(true);
  });

  it('a failure between two closes (a timeout, a refused TCP connect) restarts the count', () => {
    const n = negotiator('auto');
    expect(n.refused(5, 'protocol', undefined)).toBe(false);
    expect(n.refused(5, 'other', undefined)).toBe(false);
    expect(n.refused(5, 'protocol', undefined)).toBe(false);
    expect(n.version()).toBe(5);
  });

  it('3.1.1 refused too goes back to 5 (after the backoff, not at once)', () => {
    const n = negotiator('auto');
    n.refused(5, 'protocol', 1);
    expect(n.refused(4, 'protocol', undefined)).toBe(false);
    expect(n.version()).toBe(5);
  });

  it('remembers 3.1.1 across a restart, tries 5 again after a day, and forgets it for another broker', async () => {
    const kv = kvStore();
    const clock = new FakeClock();
    const first = negotiator('auto', kv, clock);
    first.refused(5, 'protocol', 1);
    first.accepted(4);
    await clock.advance(3600_000);
    const restarted = negotiator('auto', kv, clock);
    expect(restarted.version()).toBe(4);
    expect(restarted.info().negotiated).toBe(true);
    // Reconnections within the day stay on 3.1.1 and do not push the day further out.
    restarted.accepted(4);
    await clock.advance(RETRY_MQTT5_AFTER_MS - 3600_000);
    expect(restarted.version()).toBe(5);
    // Still refused: back to 3.1.1 at once, for another day.
    expect(restarted.refused(5, 'protocol', 1)).toBe(true);
    restarted.accepted(4);
    expect((kv.data.get(PROTOCOL_KV_KEY) as { at: number }).at).toBe(clock.now());

    expect(negotiator('auto', kv, clock, 'mqtt://other.example.test:1883').version()).toBe(5);
    // A stored result older than a day is not trusted at start either.
    await clock.advance(RETRY_MQTT5_AFTER_MS);
    expect(negotiator('auto', kv, clock).version()).toBe(5);
  });

  it('3.1.1 chosen from closes alone (no explicit answer) is believed for an hour, not a day', async () => {
    const kv = kvStore();
    const clock = new FakeClock();
    const n = negotiator('auto', kv, clock);
    n.refused(5, 'protocol', undefined);
    expect(n.refused(5, 'protocol', undefined)).toBe(true);
    n.accepted(4);
    expect(kv.data.get(PROTOCOL_KV_KEY)).toMatchObject({ version: 4, inferred: true });
    await clock.advance(RETRY_MQTT5_AFTER_CLOSES_MS - 1000);
    expect(negotiator('auto', kv, clock).version()).toBe(4);
    expect(n.version()).toBe(4);
    await clock.advance(1000);
    expect(negotiator('auto', kv, clock).version()).toBe(5);
    expect(n.version()).toBe(5);
  });

  it('a wall clock that stepped back makes the stored result stale', async () => {
    const kv = kvStore();
    const clock = new FakeClock();
    const n = negotiator('auto', kv, clock);
    n.refused(5, 'protocol', 1);
    n.accepted(4);
    clock.jumpWall(-3600_000);
    expect(negotiator('auto', kv, clock).version()).toBe(5);
  });

  it('keeps its result under the key "mqtt.protocol", which an upgraded agent reads back', () => {
    const kv = kvStore();
    negotiator('auto', kv).accepted(5);
    expect([...kv.data.keys()]).toEqual(['mqtt.protocol']);
  });

  it('a stored 3.1.1 result, once stale, is no sign that the broker speaks MQTT 5: two closes fall back again', async () => {
    const kv = kvStore();
    const clock = new FakeClock();
    const first = negotiator('auto', kv, clock);
    first.refused(5, 'protocol', 1);
    first.accepted(4);
    await clock.advance(RETRY_MQTT5_AFTER_MS);
    const restarted = negotiator('auto', kv, clock);
    expect(restarted.version()).toBe(5);
    expect(restarted.refused(5, 'protocol', undefined)).toBe(false);
    expect(restarted.refused(5, 'protocol', undefined)).toBe(true);
    expect(restarted.version()).toBe(4);
  });

  it('4 or 5 forced: a stored result of auto is not read', () => {
    const kv = kvStore();
    const auto = negotiator('auto', kv);
    auto.refused(5, 'protocol', 0x84);
    auto.accepted(4);
    expect(negotiator(5, kv).version()).toBe(5);
    expect(negotiator(5, kv).info()).toEqual({ setting: 5, version: 5, negotiated: false });
  });

  it('says what it decides: each fallback with the broker\'s answer, each version accepted, each new try of MQTT 5', async () => {
    const kv = kvStore();
    const clock = new FakeClock();
    const cap = captureLogger('info');
    const make = (): ProtocolNegotiator => new ProtocolNegotiator({ setting: 'auto', broker: BROKER, kv, clock, logger: cap.logger });
    const n = make();
    n.refused(5, 'protocol', 1);
    n.accepted(4);
    n.accepted(4); // a reconnection: nothing new to say
    await clock.advance(RETRY_MQTT5_AFTER_MS);
    expect(n.version()).toBe(5);
    n.refused(5, 'protocol', 0x84);
    n.accepted(4);
    await clock.advance(RETRY_MQTT5_AFTER_MS);
    n.version();
    n.accepted(5);
    const closes = new ProtocolNegotiator({ setting: 'auto', broker: 'mqtt://closer.test:1883', kv: kvStore(), clock, logger: cap.logger });
    closes.refused(5, 'protocol', undefined);
    closes.refused(5, 'protocol', undefined);
    closes.accepted(4);
    await clock.advance(RETRY_MQTT5_AFTER_CLOSES_MS);
    closes.version();
    await new Promise((r) => setImmediate(r));
    const accepted4 = (broker: string): string =>
      `mqtt: the broker ${broker} speaks MQTT 3.1.1, not 5: using 3.1.1 with it (no session expiry, reason codes or Receive Maximum); MQTT 5 is tried again later (a day, an hour when the broker only closed the connection)`;
    expect(cap.records().map((r) => [r.level, r.msg, r.code ?? r.protocolVersion])).toEqual([
      [30, 'mqtt: the broker answered unacceptable protocol version (0x01) to an MQTT 5 CONNECT; trying MQTT 3.1.1', 1],
      [40, accepted4(BROKER), 4],
      [30, 'mqtt: trying MQTT 5 again (3.1.1 was negotiated a day ago)', undefined],
      [30, 'mqtt: the broker answered Unsupported Protocol Version (0x84) to an MQTT 5 CONNECT; trying MQTT 3.1.1', 0x84],
      [40, accepted4(BROKER), 4],
      [30, 'mqtt: trying MQTT 5 again (3.1.1 was negotiated a day ago)', undefined],
      [30, `mqtt: negotiated MQTT 5 with ${BROKER}`, 5],
      [30, 'mqtt: the broker closed the connection before answering to an MQTT 5 CONNECT; trying MQTT 3.1.1', undefined],
      [40, accepted4('mqtt://closer.test:1883'), 4],
      [30, 'mqtt: trying MQTT 5 again (3.1.1 was negotiated an hour ago)', undefined],
    ]);
  });

  it('a broker that once spoke 3.1.1 may still fall back after closes when MQTT 5 is tried again', async () => {
    const clock = new FakeClock();
    const n = negotiator('auto', kvStore(), clock);
    n.refused(5, 'protocol', 1);
    n.accepted(4);
    await clock.advance(RETRY_MQTT5_AFTER_MS);
    expect(n.version()).toBe(5);
    expect(n.refused(5, 'protocol', undefined)).toBe(false);
    expect(n.refused(5, 'protocol', undefined)).toBe(true);
  });

  it('trusts a stored 3.1.1 result from this very instant', () => {
    const kv = kvStore();
    const clock = new FakeClock();
    const first = negotiator('auto', kv, clock);
    first.refused(5, 'protocol', 1);
    first.accepted(4);
    expect(negotiator('auto', kv, clock).version()).toBe(4);
  });

  it('4 or 5 forced: never falls back and stores nothing', () => {
    for (const v of [4, 5] as const) {
      const kv = kvStore();
      const n = negotiator(v, kv);
      expect(n.version()).toBe(v);
      expect(n.refused(v, 'protocol', v === 5 ? 0x84 : 1)).toBe(false);
      expect(n.refused(v, 'protocol', undefined)).toBe(false);
      expect(n.refused(v, 'protocol', undefined)).toBe(false);
      expect(n.version()).toBe(v);
      n.accepted(v);
      expect(kv.data.size).toBe(0);
    }
  });

  it('4 forced: stays on 3.1.1 however long it runs', async () => {
    const clock = new FakeClock();
    const n = negotiator(4, kvStore(), clock);
    n.accepted(4);
    await clock.advance(RETRY_MQTT5_AFTER_MS * 2);
    expect(n.version()).toBe(4);
  });

  it('credentials refusals do not touch the version', () => {
    const n = negotiator('auto');
    expect(n.refused(5, 'auth', 0x86)).toBe(false);
    expect(n.version()).toBe(5);
  });

  it('a store that cannot be read or written does not stop negotiation, and says so', async () => {
    const broken = {
      getKv: () => {
        throw new Error('SQLITE_CORRUPT');
      },
      setKv: () => {
        throw new Error('SQLITE_FULL');
      },
    };
    const cap = captureLogger('warn');
    const n = new ProtocolNegotiator({ setting: 'auto', broker: BROKER, kv: broken, clock: new FakeClock(), logger: cap.logger });
    expect(n.version()).toBe(5);
    expect(n.refused(5, 'protocol', 0x84)).toBe(true);
    expect(() => n.accepted(4)).not.toThrow();
    expect(n.info().negotiated).toBe(true);
    await new Promise((r) => setImmediate(r));
    const warnings = cap.records().map((r) => [r.msg, r.err]);
    expect(warnings).toContainEqual(['mqtt: could not read the negotiated protocol version; trying MQTT 5', 'Error: SQLITE_CORRUPT']);
    expect(warnings).toContainEqual(['mqtt: could not store the negotiated protocol version', 'Error: SQLITE_FULL']);
  });
});
