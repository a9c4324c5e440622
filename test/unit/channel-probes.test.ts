import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { ChannelProbes, offlineFloorApplies } from '../../src/resilience/channel-probes.js';
import { ConnectionMonitor } from '../../src/resilience/connection-monitor.js';
import type { ConnectFn, ProbeTarget } from '../../src/resilience/probe.js';
import type { SleepOutcome } from '../../src/resilience/wakeup.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { createLogger } from '../../src/util/logger.js';
import { seededRandom } from '../../src/util/random.js';

const API = 'https://api.example.test:8443';
const BROKER = 'mqtts://broker.example.test:8883';

interface Harness {
  clock: FakeClock;
  monitor: ConnectionMonitor;
  probes: ChannelProbes;
  calls: Array<{ at: number; target: ProbeTarget }>;
  /** Ports that accept a handshake now. */
  open: Set<number>;
  ac: AbortController;
  done: Promise<void>;
}

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) {
    h.ac.abort();
    await h.done;
  }
});

/** Log lines written at info and above, parsed. */
function logLines(): { lines: Array<Record<string, unknown>>; destination: Writable } {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, destination };
}

function setup(
  endpoints: Record<string, string | readonly string[]> = { api: API, mqtt: BROKER },
  extra: { initialIntervalMs?: number; destination?: Writable; staggerMaxMs?: number; wakeSpreadMs?: number } = {},
): Harness {
  const clock = new FakeClock();
  const monitor = new ConnectionMonitor({ clock, offlineAfterFailures: 3, channels: Object.keys(endpoints) });
  const calls: Harness['calls'] = [];
  const open = new Set<number>();
  const connect: ConnectFn = (target) => {
    calls.push({ at: clock.monotonic(), target });
    return open.has(target.port) ? Promise.resolve() : Promise.reject(new Error('ECONNREFUSED'));
  };
  const probes = new ChannelProbes({
    monitor,
    endpoints,
    clock,
    random: seededRandom(3),
    logger: extra.destination ? createLogger({ level: 'info', destination: extra.destination }) : createLogger({ level: 'silent', destination: process.stderr }),
    maxIntervalMs: 30_000,
    staggerMaxMs: extra.staggerMaxMs ?? 10_000,
    connect,
    ...(extra.initialIntervalMs !== undefined ? { initialIntervalMs: extra.initialIntervalMs } : {}),
    ...(extra.wakeSpreadMs !== undefined ? { wakeSpreadMs: extra.wakeSpreadMs } : {}),
  });
  const ac = new AbortController();
  const h: Harness = { clock, monitor, probes, calls, open, ac, done: probes.start(ac.signal) };
  harnesses.push(h);
  return h;
}

function goOffline(monitor: ConnectionMonitor, channel: string): void {
  for (let i = 0; i < 3; i++) monitor.markFailure(channel, 'connect', 'ECONNREFUSED');
}

/** A long backoff sleep on the channel's Wakeup; records how and when it ended. */
function sleeper(h: Harness, channel: string): { outcome?: SleepOutcome; at?: number } {
  const s: { outcome?: SleepOutcome; at?: number } = {};
  void h.probes.wakeup(channel).sleep(900_000).then((o) => Object.assign(s, { outcome: o, at: h.clock.monotonic() }));
  return s;
}

describe('ChannelProbes', () => {
  it('probes the API alone while MQTT works (overall degraded) and wakes the API loops only', async () => {
    const h = setup();
    const api = sleeper(h, 'api');
    const mqtt = sleeper(h, 'mqtt');
    goOffline(h.monitor, 'api');
    expect(h.monitor.status()).toBe('degraded');
    await h.clock.advance(120_000);
    expect(h.calls.length).toBeGreaterThan(3);
    expect(h.calls.every((c) => c.target.port === 8443)).toBe(true);
    // The schedule grows to the cap, never past it.
    const gaps = h.calls.slice(1).map((c, i) => c.at - (h.calls[i]?.at ?? 0));
    expect(Math.max(...gaps)).toBeLessThanOrEqual(30_000);

    h.open.add(8443);
    const back = h.clock.monotonic();
    await h.clock.advance(45_000);
    expect(api.outcome).toBe('woken');
    // Within the longest probe wait plus the stagger.
    expect((api.at ?? Infinity) - back).toBeLessThanOrEqual(40_000);
    expect(mqtt.outcome).toBeUndefined();
  });

  it('probes the broker alone while the API works and wakes the MQTT session only', async () => {
    const h = setup();
    const api = sleeper(h, 'api');
    const mqtt = sleeper(h, 'mqtt');
    goOffline(h.monitor, 'mqtt');
    await h.clock.advance(60_000);
    expect(h.calls.length).toBeGreaterThan(0);
    expect(h.calls.every((c) => c.target.port === 8883)).toBe(true);
    h.open.add(8883);
    await h.clock.advance(45_000);
    expect(mqtt.outcome).toBe('woken');
    expect(api.outcome).toBeUndefined();
  });

  it('with several brokers (mqtt.urls) handshakes with each, and wakes the session when any of them opens', async () => {
    const h = setup({ api: API, mqtt: [BROKER, 'mqtt://second.example.test:1884'] });
    const mqtt = sleeper(h, 'mqtt');
    goOffline(h.monitor, 'mqtt');
    await h.clock.advance(60_000);
    const ports = h.calls.map((c) => c.target.port);
    expect(ports.filter((p) => p === 8883).length).toBeGreaterThan(1);
    expect(ports.filter((p) => p === 1884).length).toBe(ports.filter((p) => p === 8883).length);
    expect(h.probes.wayOpen('mqtt')).toBe(false);
    // The preferred broker stays down; the second one returns.
    h.open.add(1884);
    await h.clock.advance(45_000);
    expect(mqtt.outcome).toBe('woken');
    expect(h.probes.wayOpen('mqtt')).toBe(true);
  });

  it('both down: each channel follows its own endpoint and schedule', async () => {
    const h = setup();
    const api = sleeper(h, 'api');
    const mqtt = sleeper(h, 'mqtt');
    goOffline(h.monitor, 'api');
    await h.clock.advance(7_000);
    goOffline(h.monitor, 'mqtt');
    expect(h.monitor.status()).toBe('offline');
    await h.clock.advance(60_000);
    const apiCalls = h.calls.filter((c) => c.target.port === 8443).length;
    const mqttCalls = h.calls.filter((c) => c.target.port === 8883).length;
    expect(apiCalls).toBeGreaterThan(0);
    expect(mqttCalls).toBeGreaterThan(0);
    // Two schedules, neither faster than one probe would be: about 60 s / (1..30 s) each.
    expect(apiCalls + mqttCalls).toBeLessThan(30);

    h.open.add(8883); // the broker returns first
    await h.clock.advance(45_000);
    expect(mqtt.outcome).toBe('woken');
    expect(api.outcome).toBeUndefined();
    h.open.add(8443);
    await h.clock.advance(45_000);
    expect(api.outcome).toBe('woken');
  });

  it('stops probing a channel once it is online again, and never probes a working one', async () => {
    const h = setup();
    goOffline(h.monitor, 'mqtt');
    await h.clock.advance(20_000);
    const before = h.calls.length;
    expect(before).toBeGreaterThan(0);
    h.monitor.markSuccess('mqtt', 'connect');
    await h.clock.advance(300_000);
    expect(h.calls.length).toBe(before);
    expect(h.probes.probes.every((p) => !p.probing())).toBe(true);
  });

  it('a request through before any probe saw the way open wakes the loops still asleep, spread as a probe wake is', async () => {
    const log = logLines();
    const h = setup({ api: API }, { destination: log.destination });
    goOffline(h.monitor, 'api');
    // The way stays closed for a while: the probes fail, the loops sleep out their floor.
    await h.clock.advance(600_000);
    const poll = sleeper(h, 'api');
    const reports = sleeper(h, 'api');
    h.open.add(8443);
    // One loop's floor ran out first and its request got through: no probe has seen the way open yet.
    const back = h.clock.monotonic();
    h.monitor.markSuccess('api', 'publish');
    await h.clock.advance(40_000);
    expect([poll.outcome, reports.outcome]).toEqual(['woken', 'woken']);
    // Spread over what is left of 38 s since the latest failed probe (at most 38 s ago).
    expect(Math.max(poll.at ?? Infinity, reports.at ?? Infinity) - back).toBeLessThanOrEqual(38_000);
    expect(log.lines.filter((l) => l.msg === 'cloud reachable again: waking waiting loops')).toEqual([
      expect.objectContaining({ channel: 'api', woken: 2, reason: 'the channel is back: a request got through' }),
    ]);
  });

  it('does not wake again when the channel comes back after a probe woke it, nor when a connected handshake had lifted the floor', async () => {
    const h = setup();
    // The probe woke the loops; then the channel comes back: no second wake.
    goOffline(h.monitor, 'api');
    await h.clock.advance(5_000);
    h.open.add(8443);
    await h.clock.advance(40_000);
    const after = sleeper(h, 'api');
    h.monitor.markSuccess('api', 'poll');
    await h.clock.advance(60_000);
    expect(after.outcome).toBeUndefined();
    // Offline on answers behind an accepting balancer: the handshakes connect, the loops' backoff paces them.
    h.open.add(8883);
    for (let i = 0; i < 3; i++) h.monitor.markFailure('mqtt', 'connect', 'closed before CONNACK', 'answer');
    await h.clock.advance(60_000);
    const session = sleeper(h, 'mqtt');
    h.monitor.markSuccess('mqtt', 'connect');
    await h.clock.advance(60_000);
    expect(session.outcome).toBeUndefined();
  });

  it('does not wake for a channel offline on answers (503s) until a probe has failed first', async () => {
    const h = setup();
    const api = sleeper(h, 'api');
    h.open.add(8443);
    for (let i = 0; i < 3; i++) h.monitor.markFailure('api', 'poll', 'HTTP 503', 'answer');
    await h.clock.advance(60_000);
    expect(api.outcome).toBeUndefined();
  });

  it('does not wake the MQTT session offline on refused credentials: its long backoff stands while the broker is reachable', async () => {
    const h = setup();
    const mqtt = sleeper(h, 'mqtt');
    h.open.add(8883);
    for (let i = 0; i < 3; i++) h.monitor.markFailure('mqtt', 'connect', 'the broker refused the connection: Not authorized (0x87)', 'auth');
    await h.clock.advance(60_000);
    expect(mqtt.outcome).toBeUndefined();
  });

  it('an HTTP-only agent has one probe and it works as before', async () => {
    const h = setup({ api: API });
    const api = sleeper(h, 'api');
    goOffline(h.monitor, 'api');
    expect(h.probes.probes).toHaveLength(1);
    await h.clock.advance(10_000);
    h.open.add(8443);
    await h.clock.advance(45_000);
    expect(api.outcome).toBe('woken');
  });

  it('wakes on the first probe when the channel went offline for want of a connection', async () => {
    const log = logLines();
    const h = setup({ api: API }, { destination: log.destination });
    const api = sleeper(h, 'api');
    h.open.add(8443);
    goOffline(h.monitor, 'api');
    await h.clock.advance(1_000);
    expect(h.calls).toHaveLength(1);
    await h.clock.advance(10_000);
    expect(api.outcome).toBe('woken');
    // The line says which channel's probe found the way open.
    expect(log.lines.filter((l) => l.msg === 'cloud reachable again: waking waiting loops')).toEqual([
      expect.objectContaining({ part: 'probe-api', channel: 'api', woken: 1, trigger: 'schedule' }),
    ]);
  });

  it('says the way is open only while probing and only after its latest handshake connected', async () => {
    const h = setup({ api: API });
    expect(h.probes.wayOpen('api')).toBe(false);
    goOffline(h.monitor, 'api');
    // Offline, before the first probe: nothing known yet.
    expect(h.probes.wayOpen('api')).toBe(false);
    await h.clock.advance(1_000);
    expect(h.calls).toHaveLength(1);
    expect(h.probes.wayOpen('api')).toBe(false);
    // A balancer that accepts every handshake while requests still fail behind it.
    h.open.add(8443);
    await h.clock.advance(5_000);
    expect(h.probes.wayOpen('api')).toBe(true);
    expect(h.probes.wayOpen('mqtt')).toBe(false);
    h.open.delete(8443);
    await h.clock.advance(10_000);
    expect(h.probes.wayOpen('api')).toBe(false);
    h.open.add(8443);
    await h.clock.advance(35_000);
    expect(h.probes.wayOpen('api')).toBe(true);
    // Online again: the probe stops, and the next offline stretch starts knowing nothing.
    h.monitor.markSuccess('api', 'poll');
    expect(h.probes.wayOpen('api')).toBe(false);
    goOffline(h.monitor, 'api');
    expect(h.probes.wayOpen('api')).toBe(false);
  });

  it('wakes with the spread it is given: none at all', async () => {
    const h = setup({ api: API }, { wakeSpreadMs: 0 });
    const api = sleeper(h, 'api');
    goOffline(h.monitor, 'api');
    await h.clock.advance(5_000);
    h.open.add(8443);
    const opened = h.clock.monotonic();
    await h.clock.advance(30_000);
    const success = h.calls.find((c) => c.at >= opened)?.at;
    expect(api.outcome).toBe('woken');
    expect(api.at).toBe(success);
  });

  it('starts each offline stretch at the initial interval it is given', async () => {
    const h = setup({ api: API }, { initialIntervalMs: 10_000 });
    goOffline(h.monitor, 'api');
    // Equal jitter: the first probe comes between half the interval and the interval.
    await h.clock.advance(4_999);
    expect(h.calls).toEqual([]);
    await h.clock.advance(5_001);
    expect(h.calls).toHaveLength(1);
  });

  it('once stopped, a channel going offline starts no probe', async () => {
    const h = setup();
    h.ac.abort();
    await h.done;
    goOffline(h.monitor, 'api');
    await h.clock.advance(120_000);
    expect(h.calls).toEqual([]);
    expect(h.probes.probes.every((p) => !p.probing())).toBe(true);
  });
});

describe('offlineFloorApplies', () => {
  const base = { offline: true, lastFailureKind: 'transport' as const, wayOpen: false };
  it('holds the floor while offline for want of a connection and the probe has not seen the way open', () => {
    expect(offlineFloorApplies(base)).toBe(true);
  });
  it('drops it once a handshake connected while requests still fail (a balancer that accepts and closes)', () => {
    expect(offlineFloorApplies({ ...base, wayOpen: true })).toBe(false);
  });
  it('never holds it when the channel is not offline, or offline on answers or refused credentials', () => {
    expect(offlineFloorApplies({ ...base, offline: false })).toBe(false);
    expect(offlineFloorApplies({ ...base, lastFailureKind: 'answer' })).toBe(false);
    expect(offlineFloorApplies({ ...base, lastFailureKind: 'auth' })).toBe(false);
    expect(offlineFloorApplies({ ...base, lastFailureKind: null })).toBe(false);
  });
});
