import { describe, expect, it } from 'vitest';
import { EventQueue } from '../../bench/event-queue.js';
import { agentDefaults, outageScenario, rebootScenario, simulate, type RunResult, type StrategyName } from '../../bench/fleet-sim.js';
import { FULL_JITTER_FLOOR_MS } from '../../src/resilience/backoff.js';
import { attempt, connectionLostAt, handshake, type EndpointOutage } from '../../bench/fleet-network.js';

const DEVICES = 300;
const SEED = 7;
// A long backoff (2 s doubling to 15 min), whatever the defaults: these tests are about the model's mechanisms.
const defaults = agentDefaults();
const settings = { ...defaults, offline: { ...defaults.offline, minBackoffSeconds: 2, maxBackoffSeconds: 900 } };

const outage = (strategy: StrategyName, outageS = 600): RunResult =>
  simulate({ devices: DEVICES, seed: SEED, strategy, scenario: outageScenario(outageS * 1000, DEVICES, settings), settings });
const reboot = (strategy: StrategyName): RunResult => simulate({ devices: DEVICES, seed: SEED, strategy, scenario: rebootScenario(DEVICES), settings });

function p99(r: RunResult): number {
  expect(r.api.timeToOnlineMs).not.toBeNull();
  return r.api.timeToOnlineMs?.p99 ?? Infinity;
}

describe('event queue', () => {
  it('pops in time order, and events due at the same time in the order they were scheduled', () => {
    const q = new EventQueue<string>();
    const times = [5, 1, 3, 1, 9, 0, 3, 7, 1];
    times.forEach((t, i) => q.push(t, `${t}:${i}`));
    const popped: string[] = [];
    for (let e = q.pop(); e; e = q.pop()) popped.push(e.payload);
    expect(popped).toEqual(['0:5', '1:1', '1:3', '1:8', '3:2', '3:6', '5:0', '7:7', '9:4']);
    expect(q.size).toBe(0);
  });
});

describe('fleet simulation (small fleet)', () => {
  it('after a fleet reboot into an overloaded cloud, full jitter needs fewer requests per device than no jitter, and comes online sooner', () => {
    const none = reboot('none');
    const full = reboot('full');
    expect(none.api.recovered).toBe(DEVICES);
    expect(full.api.recovered).toBe(DEVICES);
    expect(full.api.requestsToOnlinePerDevice).toBeLessThan(none.api.requestsToOnlinePerDevice);
    expect(p99(full)).toBeLessThan(p99(none));
  });

  it('after a 10-minute outage, devices with the probe are online far sooner than with the same backoff and no probe', () => {
    const full = outage('full');
    const probed = outage('default+probe');
    expect(probed.api.affected).toBe(DEVICES);
    expect(probed.api.recovered).toBe(DEVICES);
    expect(p99(probed)).toBeLessThan(p99(full));
    expect(probed.api.timeToOnlineMs?.p50 ?? Infinity).toBeLessThan(full.api.timeToOnlineMs?.p50 ?? 0);
  });

  it('while the cloud is down nobody is woken and nobody retries in a tight loop', () => {
    const floors: [StrategyName, number][] = [
      ['none', settings.offline.minBackoffSeconds * 1000],
      ['seed', settings.pollIntervalMs],
      ['full', FULL_JITTER_FLOOR_MS],
      ['default+probe', FULL_JITTER_FLOOR_MS],
    ];
    for (const [strategy, floor] of floors) {
      const r = outage(strategy, 600);
      expect(r.api.wakesWhileDown, strategy).toBe(0);
      expect(r.api.minGapWhileDownMs, strategy).toBeGreaterThanOrEqual(floor);
      // Nobody gives up either: every device notices the outage and keeps trying.
      expect(r.api.requestsDuringOutage, strategy).toBeGreaterThanOrEqual(DEVICES);
    }
  });

  it('only the strategy with the probe wakes its poll loop, and only once the cloud is back', () => {
    const probed = outage('default+probe', 3600);
    expect(probed.api.wakes).toBeGreaterThan(0);
    expect(probed.api.wakesWhileDown).toBe(0);
    expect(outage('full', 3600).api.wakes).toBe(0);
  });

  it('is deterministic for a seed', () => {
    const a = outage('decorrelated', 60);
    const b = outage('decorrelated', 60);
    expect({ ...a, wallMs: 0 }).toEqual({ ...b, wallMs: 0 });
  });
});

describe('fleet network model', () => {
  const down = (kind: 'refused' | 'blackhole' | '503'): EndpointOutage => ({ kind, fromMs: 10_000, untilMs: 70_000 });

  it('a black-holed connect gets through at the first SYN resend after the return, or fails at the timeout', () => {
    expect(attempt(down('blackhole'), 60_000, 30_000)).toEqual({ atMs: 75_000, result: 'reached' });
    expect(attempt(down('blackhole'), 69_500, 30_000)).toEqual({ atMs: 70_500, result: 'reached' });
    // Started 20 s before the return: the resends at 15 s and 31 s miss it, the timeout comes first.
    expect(attempt(down('blackhole'), 50_000, 30_000)).toEqual({ atMs: 80_000, result: 'timeout' });
    expect(attempt(down('blackhole'), 5_000, 30_000)).toEqual({ atMs: 5_000, result: 'reached' });
    // With a 10 s connect timeout only the resends at 1, 3 and 7 s are the connect's: started 12 s
    // before the return, it fails 2 s before it; started 6 s before, its 7 s resend gets through.
    expect(attempt(down('blackhole'), 58_000, 30_000, 10_000)).toEqual({ atMs: 68_000, result: 'timeout' });
    expect(attempt(down('blackhole'), 64_000, 30_000, 10_000)).toEqual({ atMs: 71_000, result: 'reached' });
  });

  it('refused and 503 fail at once; a probe handshakes with a balancer but not with a refused port', () => {
    expect(attempt(down('refused'), 20_000, 30_000)).toEqual({ atMs: 20_000, result: 'refused' });
    expect(attempt(down('503'), 20_000, 30_000)).toEqual({ atMs: 20_000, result: 'unavailable' });
    expect(handshake(down('503'), 20_000, 3_000).connected).toBe(true);
    expect(handshake(down('refused'), 20_000, 3_000).connected).toBe(false);
    expect(handshake(down('blackhole'), 20_000, 3_000)).toMatchObject({ atMs: 23_000, connected: false });
  });

  it('a black-holed MQTT connection is given up 1.5 x keep-alive after the last ping answer, unless the path returns first', () => {
    expect(connectionLostAt(down('refused'), 0, 60_000)).toBe(10_000);
    expect(connectionLostAt(down('blackhole'), -85_000, 60_000)).toBe(10_000);
    expect(connectionLostAt(down('blackhole'), 5_000, 60_000)).toBeNull();
    expect(connectionLostAt(down('blackhole'), -30_000, 60_000)).toBe(60_000);
  });

  it('a black-holed cloud holds the loops for their timeouts, and the probe still brings the fleet back', () => {
    const scenario = outageScenario(600_000, DEVICES, settings, { api: 'blackhole', mqtt: 'blackhole' });
    const r = simulate({ devices: DEVICES, seed: SEED, strategy: 'default+probe', scenario, settings });
    const full = simulate({ devices: DEVICES, seed: SEED, strategy: 'full', scenario, settings });
    expect(r.api.recovered).toBe(r.api.affected);
    expect(r.mqtt?.recovered).toBe(r.mqtt?.affected);
    // A black-holed connect waits out cloud.connectTimeoutMs: far fewer attempts than a refused cloud gets.
    expect(r.api.minGapWhileDownMs).toBeGreaterThanOrEqual(settings.connectTimeoutMs);
    expect(p99(r)).toBeLessThan(p99(full));
  });

  it('a broker behind a balancer that accepts and closes is an answer: its probe wakes no session, and none waits out the floor', () => {
    const r = simulate({ devices: DEVICES, seed: SEED, strategy: 'default+probe', scenario: outageScenario(600_000, DEVICES, defaults, { api: null, mqtt: '503' }), settings: defaults });
    expect(r.mqtt?.affected).toBeGreaterThan(DEVICES / 2);
    expect(r.mqtt?.wakes).toBe(0);
    expect(r.mqtt?.recovered).toBe(r.mqtt?.affected);
    // Back on the backoff's 36-40 s, not the 300 s floor.
    expect(r.mqtt?.timeToOnlineMs?.max).toBeLessThanOrEqual(defaults.offline.maxBackoffSeconds * 1000);
  });

  it('times apart the devices that saw the channel not online at the return (what a real fleet can count)', () => {
    const run = (kind: 'refused' | 'hang', outageS: number): RunResult =>
      simulate({ devices: DEVICES, seed: SEED, strategy: 'default+probe', scenario: outageScenario(outageS * 1000, DEVICES, defaults, { api: kind, mqtt: null }), settings: defaults });
    // After 600 s refused every affected device knew it was offline.
    const refused = run('refused', 600);
    expect(refused.api.timeToOnlineSeenMs).toEqual(refused.api.timeToOnlineMs);
    // After 60 s hung, most had a poll still under way that had not failed yet: affected, but online in their own view.
    const hang = run('hang', 60);
    expect(hang.api.timeToOnlineMs).not.toBeNull();
    expect(hang.api.timeToOnlineSeenMs).not.toEqual(hang.api.timeToOnlineMs);
  });
});
