import { describe, expect, it } from 'vitest';
import { EventQueue } from '../../bench/event-queue.js';
import { agentDefaults, outageScenario, rebootScenario, simulate, type RunResult, type StrategyName } from '../../bench/fleet-sim.js';
import { FULL_JITTER_FLOOR_MS } from '../../src/resilience/backoff.js';

const DEVICES = 300;
const SEED = 7;
const settings = agentDefaults();

const outage = (strategy: StrategyName, outageS = 600): RunResult =>
  simulate({ devices: DEVICES, seed: SEED, strategy, scenario: outageScenario(outageS * 1000, DEVICES, settings), settings });
const reboot = (strategy: StrategyName): RunResult => simulate({ devices: DEVICES, seed: SEED, strategy, scenario: rebootScenario(DEVICES), settings });

function p99(r: RunResult): number {
  expect(r.timeToOnlineMs).not.toBeNull();
  return r.timeToOnlineMs?.p99 ?? Infinity;
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
    expect(none.recovered).toBe(DEVICES);
    expect(full.recovered).toBe(DEVICES);
    expect(full.requestsToOnlinePerDevice).toBeLessThan(none.requestsToOnlinePerDevice);
    expect(p99(full)).toBeLessThan(p99(none));
  });

  it('after a 10-minute outage, devices with the probe are online far sooner than with the same backoff and no probe', () => {
    const full = outage('full');
    const probed = outage('default+probe');
    expect(probed.affected).toBe(DEVICES);
    expect(probed.recovered).toBe(DEVICES);
    expect(p99(probed)).toBeLessThan(p99(full));
    expect(probed.timeToOnlineMs?.p50 ?? Infinity).toBeLessThan(full.timeToOnlineMs?.p50 ?? 0);
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
      expect(r.wakesWhileDown, strategy).toBe(0);
      expect(r.minGapWhileDownMs, strategy).toBeGreaterThanOrEqual(floor);
      // Nobody gives up either: every device notices the outage and keeps trying.
      expect(r.requestsDuringOutage, strategy).toBeGreaterThanOrEqual(DEVICES);
    }
  });

  it('only the strategy with the probe wakes its poll loop, and only once the cloud is back', () => {
    const probed = outage('default+probe', 3600);
    expect(probed.wakes).toBeGreaterThan(0);
    expect(probed.wakesWhileDown).toBe(0);
    expect(outage('full', 3600).wakes).toBe(0);
  });

  it('is deterministic for a seed', () => {
    const a = outage('decorrelated', 60);
    const b = outage('decorrelated', 60);
    expect({ ...a, wallMs: 0 }).toEqual({ ...b, wallMs: 0 });
  });
});
