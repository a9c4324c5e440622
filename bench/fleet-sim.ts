import { defaultConfig, type AgentConfig } from '../src/config/schema.js';
import { backoffFromSettings, seedBackoffDelay } from '../src/resilience/backoff.js';
import type { Backoff } from '../src/resilience/backoff.js';
import { ConnectionMonitor, type StatusEvent } from '../src/resilience/connection-monitor.js';
import { CloudError } from '../src/resilience/cloud-error.js';
import { failureKind } from '../src/resilience/outcome.js';
import { RetryPolicy, type RetryBackoff } from '../src/resilience/retry-policy.js';
import { PROBE_INITIAL_INTERVAL_MS, probeSchedule } from '../src/resilience/probe.js';
import { WAKE_STAGGER_MAX_MS } from '../src/resilience/wakeup.js';
import type { Clock } from '../src/util/clock.js';
import { seededRandom, type Random } from '../src/util/random.js';
import { EventQueue } from './event-queue.js';

/**
 * A fleet of devices, each running the agent's target-state poll loop (src/cloud/target-state.ts)
 * with the REAL Backoff, ConnectionMonitor and probe schedule, against one simulated cloud, as a
 * discrete-event simulation in simulated milliseconds. The handlers call the parts' synchronous
 * APIs; nothing sleeps on a clock, so 10k devices over hours of simulated time take seconds.
 *
 * Modelled exactly as the agent does it:
 * - poll: success → monitor.markSuccess, retry.afterSuccess(), next poll after pollIntervalMs plus
 *   up to 10 % jitter; failure → monitor.markFailure with the failure's kind (a refused connection
 *   is 'transport', a 503 an 'answer'), then the REAL RetryPolicy.afterFailure decides the wait:
 *   the backoff and, for the agent's default with the probe, the offline floor
 *   (offlineRetryIntervalSeconds while offline for want of a connection), exactly as agent.ts wires it;
 * - the wait is a Wakeup sleep: a wake resolves it after a uniform stagger in [0, staggerMaxMs]
 *   (never later than its own deadline) with 'woken', and the loop then calls retry.afterWake();
 * - the probe (ConnectivityProbe.run): starts when the monitor's status becomes offline, waits
 *   probeSchedule(...).failure() before each probe, and wakes the loop at the first successful
 *   probe when going offline closed the way (transport failures); offline because the cloud kept
 *   answering 503s, it wakes only after a probe has failed and then succeeded. It stops when the
 *   status leaves offline.
 * Simplifications: requests and probes take no time (a refused connection fails at once); the
 * device runs only the poll loop (the agent's state and health reporters share the monitor and
 * would add their own requests); the network interfaces never change, so only the probe's
 * schedule triggers probes.
 */

export const STRATEGIES = ['none', 'seed', 'equal', 'full', 'decorrelated', 'default+probe'] as const;
export type StrategyName = (typeof STRATEGIES)[number];

export interface FleetSettings {
  pollIntervalMs: number;
  offline: AgentConfig['settings']['offline'];
  /** ConnectivityProbe's first wait before jitter (its constructor default; the agent does not set it). */
  probeInitialMs: number;
  /** Wakeup's stagger of woken sleepers (its constructor default; the agent does not set it). */
  staggerMaxMs: number;
}

/** The agent as it runs with an empty config file. */
export function agentDefaults(): FleetSettings {
  const settings = defaultConfig().settings;
  return { pollIntervalMs: settings.pollIntervalMs, offline: settings.offline, probeInitialMs: PROBE_INITIAL_INTERVAL_MS, staggerMaxMs: WAKE_STAGGER_MAX_MS };
}

export type Scenario =
  /** Devices poll with random phases; the cloud is down in [outageStartMs, outageStartMs + outageMs). */
  | { kind: 'outage'; outageStartMs: number; outageMs: number; capacityRps: number }
  /** Every device starts at t=0 (first poll at once) against a cloud that is up. */
  | { kind: 'reboot'; capacityRps: number };

/** The fleet's request rate while every device is online: one poll per pollInterval each. */
export function steadyStateRps(devices: number, settings: FleetSettings): number {
  return devices / (settings.pollIntervalMs / 1000);
}

/**
 * Scenario 1's cloud serves this many times the steady-state rate: enough headroom for normal
 * peaks (a backend sized at its mean load falls over on the first spike) without being so large
 * that a fleet returning in step is absorbed for free.
 */
export const OUTAGE_CAPACITY_HEADROOM = 4;

/** Scenario 2's cloud serves this fraction of the fleet per second. */
export const REBOOT_CAPACITY_FRACTION = 1 / 20;

export function outageScenario(outageMs: number, devices: number, settings: FleetSettings): Scenario {
  return {
    kind: 'outage',
    // Five poll intervals: every device has polled several times with its own phase.
    outageStartMs: 5 * settings.pollIntervalMs,
    outageMs,
    capacityRps: Math.ceil(OUTAGE_CAPACITY_HEADROOM * steadyStateRps(devices, settings)),
  };
}

export function rebootScenario(devices: number): Scenario {
  return { kind: 'reboot', capacityRps: Math.max(1, Math.ceil(devices * REBOOT_CAPACITY_FRACTION)) };
}

export interface SimOptions {
  devices: number;
  seed: number;
  strategy: StrategyName;
  scenario: Scenario;
  settings?: FleetSettings;
  /** The run stops this long after the cloud's return even if some devices are not online. */
  capMs?: number;
}

export interface Quantiles {
  p50: number;
  p99: number;
  max: number;
}

export interface RunResult {
  strategy: StrategyName;
  scenario: Scenario;
  devices: number;
  steadyRps: number;
  /** When the measured recovery starts: the cloud's return (outage), t=0 (reboot). */
  returnAtMs: number;
  /** Devices measured: those not online at the return (outage); every device (reboot). */
  affected: number;
  /** Of those, how many were online again when the run ended. */
  recovered: number;
  requests: number;
  /** Requests sent while the cloud was down. */
  requestsDuringOutage: number;
  /** Mean over the affected devices of the requests from the return up to their first success, that one included. */
  requestsToOnlinePerDevice: number;
  /** Most requests arriving at the cloud in one 1-s bucket from the return on (503s included). */
  peakRps: number;
  peakVsSteady: number;
  /** The same, leaving out the first second after the return (for the reboot: the instant every device starts). */
  peakRpsAfterFirstSecond: number;
  /** Time from the return until each affected device's monitor is online again; null when not all recovered. */
  timeToOnlineMs: Quantiles | null;
  /** Requests answered 503 (over capacity) from the return on. */
  rejected: number;
  probes: number;
  /** Wake-ups of a device's poll loop by its probe, and how many of them happened while the cloud was down. */
  wakes: number;
  wakesWhileDown: number;
  /** Shortest time between two consecutive requests of one device, both sent while the cloud was down. */
  minGapWhileDownMs: number;
  simulatedMs: number;
  events: number;
  wallMs: number;
}


/**
 * The seed's calculateBackoff as its poll loop used it: the error count grows on each failure,
 * is cleared by a success at once, and the delay is `seedBackoffDelay` from the poll interval.
 */
class SeedBackoff implements RetryBackoff {
  private failures = 0;

  constructor(
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly random: Random,
  ) {}

  failure(): number {
    this.failures++;
    return seedBackoffDelay(this.baseMs, this.failures, this.maxMs, this.random);
  }

  success(): void {
    this.failures = 0;
  }

  reset(): void {
    this.failures = 0;
  }

  holdRemainingMs(): number {
    return 0;
  }
}

/** The simulation never sleeps: the loops' waits are events. */
const NO_SLEEPER = {
  sleep(): Promise<never> {
    throw new Error('the fleet simulation does not sleep');
  },
};

const POLL = 0;
const PROBE = 1;
const RETURN = 2;
const END = 3;

interface SimEvent {
  kind: typeof POLL | typeof PROBE | typeof RETURN | typeof END;
  device: SimDevice | null;
  /** The device's poll or probe generation when scheduled; a different one now means cancelled. */
  gen: number;
}

interface SimDevice {
  readonly index: number;
  readonly random: Random;
  readonly retry: RetryPolicy;
  readonly monitor: ConnectionMonitor;
  pollDue: number;
  pollGen: number;
  /** Sleeping on the Wakeup and not yet woken (Wakeup's current sleepers). */
  sleeping: boolean;
  woken: boolean;
  probeGen: number;
  probeSchedule: Backoff | null;
  reachable: boolean;
  lastRequestAt: number;
  affected: boolean;
  recovered: boolean;
  requestsToOnline: number;
  onlineAfterMs: number;
}

const WALL_ORIGIN = Date.UTC(2026, 0, 1);

export function simulate(opts: SimOptions): RunResult {
  return new FleetSimulation(opts).run();
}

class FleetSimulation {
  private time = 0;
  private readonly queue = new EventQueue<SimEvent>();
  private readonly settings: FleetSettings;
  private readonly scenario: Scenario;
  private readonly devices: SimDevice[] = [];
  private readonly probing: boolean;
  private readonly downFrom: number;
  private readonly downUntil: number;
  private readonly returnAt: number;
  private readonly tailMs: number;
  private readonly buckets: Int32Array;
  private readonly clock: Clock;
  private windowSecond = -1;
  private servedInWindow = 0;
  private remaining = 0;
  private readonly stats = {
    requests: 0,
    requestsDuringOutage: 0,
    rejected: 0,
    probes: 0,
    wakes: 0,
    wakesWhileDown: 0,
    minGapWhileDownMs: Infinity,
    events: 0,
  };

  constructor(private readonly opts: SimOptions) {
    if (!Number.isInteger(opts.devices) || opts.devices < 1) throw new RangeError(`devices: expected an integer >= 1, got ${opts.devices}`);
    this.settings = opts.settings ?? agentDefaults();
    this.scenario = opts.scenario;
    this.probing = opts.strategy === 'default+probe';
    if (this.scenario.kind === 'outage') {
      this.downFrom = this.scenario.outageStartMs;
      this.downUntil = this.scenario.outageStartMs + this.scenario.outageMs;
    } else {
      this.downFrom = Infinity;
      this.downUntil = -Infinity;
    }
    this.returnAt = this.scenario.kind === 'outage' ? this.downUntil : 0;
    // Long enough to see the echo of a wave of returning devices one poll interval later.
    this.tailMs = 2.2 * this.settings.pollIntervalMs;
    const capMs = opts.capMs ?? 6 * 60 * 60 * 1000;
    this.buckets = new Int32Array(Math.ceil((this.returnAt + capMs + this.tailMs) / 1000) + 2);
    this.clock = {
      monotonic: () => this.time,
      uptime: () => this.time,
      bootId: () => 'fleet-sim',
      now: () => WALL_ORIGIN + this.time,
      sleep: () => Promise.reject(new Error('the fleet simulation moves time itself: nothing may sleep on its clock')),
    };
    this.queue.push(this.returnAt, { kind: RETURN, device: null, gen: 0 });
    this.queue.push(this.returnAt + capMs, { kind: END, device: null, gen: 0 });
  }

  run(): RunResult {
    const started = performance.now();
    const phases = seededRandom(mix(this.opts.seed, 0x7fffffff));
    for (let i = 0; i < this.opts.devices; i++) {
      const device = this.createDevice(i);
      this.devices.push(device);
      // Outage: each device's first poll at its own phase. Reboot: at t=0, as the agent does at start.
      const first = this.scenario.kind === 'outage' ? phases() * this.settings.pollIntervalMs : 0;
      this.sleep(device, first);
    }

    for (;;) {
      const event = this.queue.pop();
      if (!event) break;
      this.time = event.time;
      this.stats.events++;
      const { kind, device, gen } = event.payload;
      if (kind === END) break;
      if (kind === RETURN) this.cloudReturned();
      else if (kind === POLL && device && gen === device.pollGen) this.poll(device);
      else if (kind === PROBE && device && gen === device.probeGen) this.probe(device);
    }
    return this.result(performance.now() - started);
  }

  private createDevice(index: number): SimDevice {
    const random = seededRandom(mix(this.opts.seed, index));
    const deps = { clock: this.clock, random };
    const offline = this.settings.offline;
    let backoff: RetryBackoff;
    switch (this.opts.strategy) {
      case 'seed':
        backoff = new SeedBackoff(this.settings.pollIntervalMs, offline.maxBackoffSeconds * 1000, random);
        break;
      case 'default+probe':
        backoff = backoffFromSettings(offline, deps);
        break;
      default:
        backoff = backoffFromSettings({ ...offline, enableJitter: true, jitter: this.opts.strategy }, deps);
    }
    const monitor = new ConnectionMonitor({ clock: this.clock, offlineAfterFailures: offline.offlineAfterFailures, channels: ['api'] });
    const withProbe = this.opts.strategy === 'default+probe';
    // As agent.ts wires it; the strategies without the probe have no floor (nothing would wake them).
    const floorMs = (): number =>
      withProbe && monitor.channelStatus('api') === 'offline' && monitor.lastFailureKind('api') === 'transport' ? offline.offlineRetryIntervalSeconds * 1000 : 0;
    const retry = new RetryPolicy({ backoff, sleeper: NO_SLEEPER, clock: NO_SLEEPER, floorMs });
    const device: SimDevice = {
      index,
      random,
      retry,
      monitor,
      pollDue: 0,
      pollGen: 0,
      sleeping: false,
      woken: false,
      probeGen: 0,
      probeSchedule: null,
      reachable: false,
      lastRequestAt: -Infinity,
      affected: this.scenario.kind === 'reboot',
      recovered: false,
      requestsToOnline: 0,
      onlineAfterMs: Infinity,
    };
    if (device.affected) this.remaining++;
    if (this.probing) monitor.on('status', (e) => this.followStatus(device, e));
    return device;
  }

  private cloudUp(at: number): boolean {
    return at < this.downFrom || at >= this.downUntil;
  }

  private cloudReturned(): void {
    if (this.scenario.kind === 'outage') {
      for (const d of this.devices) {
        if (d.monitor.status() !== 'online') {
          d.affected = true;
          this.remaining++;
        }
      }
    }
    if (this.remaining === 0) this.queue.push(this.time + this.tailMs, { kind: END, device: null, gen: 0 });
  }

  /** One turn of TargetStatePoller.run: the poll, then the wait its outcome asks for. */
  private poll(d: SimDevice): void {
    const now = this.time;
    d.sleeping = false;
    if (d.woken) {
      d.woken = false;
      // No Retry-After in this model, so nothing is left to hold after a wake.
      d.retry.afterWake();
    }
    const up = this.cloudUp(now);
    this.stats.requests++;
    const second = Math.floor(now / 1000);
    if (second < this.buckets.length) this.buckets[second] = (this.buckets[second] ?? 0) + 1;
    if (!up) {
      this.stats.requestsDuringOutage++;
      if (d.lastRequestAt >= this.downFrom) this.stats.minGapWhileDownMs = Math.min(this.stats.minGapWhileDownMs, now - d.lastRequestAt);
    }
    d.lastRequestAt = now;
    if (d.affected && !d.recovered) d.requestsToOnline++;

    let ok = false;
    let error = new CloudError('network', 'GET /state failed: connection refused (ECONNREFUSED)');
    if (up) {
      if (second !== this.windowSecond) {
        this.windowSecond = second;
        this.servedInWindow = 0;
      }
      if (this.servedInWindow < this.scenario.capacityRps) {
        this.servedInWindow++;
        ok = true;
      } else {
        error = new CloudError('http', 'GET /state answered 503 (over capacity)', 503);
        if (now >= this.returnAt) this.stats.rejected++;
      }
    }

    let delay: number;
    if (ok) {
      d.monitor.markSuccess('api', 'poll');
      d.retry.afterSuccess();
      const base = this.settings.pollIntervalMs;
      delay = base + d.random() * base * 0.1;
      if (d.affected && !d.recovered && d.monitor.status() === 'online') this.recovered(d);
    } else {
      d.monitor.markFailure('api', 'poll', error.message, failureKind(error));
      // A 503 or a refused connection is retryable (no Retry-After in this model).
      delay = d.retry.afterFailure(error);
    }
    this.sleep(d, now + delay);
  }

  private recovered(d: SimDevice): void {
    d.recovered = true;
    d.onlineAfterMs = this.time - this.returnAt;
    this.remaining--;
    if (this.remaining === 0) this.queue.push(this.time + this.tailMs, { kind: END, device: null, gen: 0 });
  }

  /** Wakeup.sleep until `at` (a monotonic deadline). */
  private sleep(d: SimDevice, at: number): void {
    d.pollDue = at;
    d.sleeping = true;
    d.woken = false;
    this.queue.push(at, { kind: POLL, device: d, gen: ++d.pollGen });
  }

  /** Wakeup.wake for a device's only sleeper, the poll loop. */
  private wake(d: SimDevice): void {
    this.stats.wakes++;
    if (!this.cloudUp(this.time)) this.stats.wakesWhileDown++;
    if (!d.sleeping) return;
    d.sleeping = false;
    d.woken = true;
    const at = this.time + d.random() * this.settings.staggerMaxMs;
    if (at < d.pollDue) {
      d.pollDue = at;
      this.queue.push(at, { kind: POLL, device: d, gen: ++d.pollGen });
    }
  }

  /** ConnectivityProbe.follow: probe while the status is offline. */
  private followStatus(d: SimDevice, e: StatusEvent): void {
    if (e.to === 'offline' && d.probeSchedule === null) {
      const offline = this.settings.offline;
      d.probeSchedule = probeSchedule(this.settings.probeInitialMs, offline.probeMaxIntervalSeconds * 1000, this.clock, d.random);
      // As the probe's wayClosed: offline because the cloud answered 503s, a handshake is not news.
      d.reachable = d.monitor.lastFailureKind('api') === 'answer';
      this.queue.push(this.time + d.probeSchedule.failure(), { kind: PROBE, device: d, gen: ++d.probeGen });
    } else if (e.to !== 'offline' && d.probeSchedule !== null) {
      d.probeSchedule = null;
      d.probeGen++;
    }
  }

  /** One scheduled probe of ConnectivityProbe.run: a TCP connect succeeds only while the cloud is up. */
  private probe(d: SimDevice): void {
    const schedule = d.probeSchedule;
    if (schedule === null) return;
    this.stats.probes++;
    if (!this.cloudUp(this.time)) {
      d.reachable = false;
    } else if (!d.reachable) {
      d.reachable = true;
      this.wake(d);
    }
    this.queue.push(this.time + schedule.failure(), { kind: PROBE, device: d, gen: d.probeGen });
  }

  private result(wallMs: number): RunResult {
    const affected = this.devices.filter((d) => d.affected);
    const recovered = affected.filter((d) => d.recovered);
    const times = Float64Array.from(recovered, (d) => d.onlineAfterMs).sort();
    const returnSecond = Math.floor(this.returnAt / 1000);
    const lastSecond = Math.min(this.buckets.length - 1, Math.floor(this.time / 1000));
    let peak = 0;
    let peakAfterFirst = 0;
    for (let s = returnSecond; s <= lastSecond; s++) {
      const n = this.buckets[s] ?? 0;
      peak = Math.max(peak, n);
      if (s > returnSecond) peakAfterFirst = Math.max(peakAfterFirst, n);
    }
    const steadyRps = steadyStateRps(this.opts.devices, this.settings);
    const requestsToOnline = affected.reduce((sum, d) => sum + d.requestsToOnline, 0);
    return {
      strategy: this.opts.strategy,
      scenario: this.scenario,
      devices: this.opts.devices,
      steadyRps,
      returnAtMs: this.returnAt,
      affected: affected.length,
      recovered: recovered.length,
      requests: this.stats.requests,
      requestsDuringOutage: this.stats.requestsDuringOutage,
      requestsToOnlinePerDevice: affected.length > 0 ? requestsToOnline / affected.length : 0,
      peakRps: peak,
      peakVsSteady: peak / steadyRps,
      peakRpsAfterFirstSecond: peakAfterFirst,
      timeToOnlineMs:
        recovered.length === affected.length && times.length > 0
          ? { p50: quantile(times, 0.5), p99: quantile(times, 0.99), max: times[times.length - 1] ?? 0 }
          : null,
      rejected: this.stats.rejected,
      probes: this.stats.probes,
      wakes: this.stats.wakes,
      wakesWhileDown: this.stats.wakesWhileDown,
      minGapWhileDownMs: this.stats.minGapWhileDownMs,
      simulatedMs: this.time,
      events: this.stats.events,
      wallMs,
    };
  }
}

/** Nearest-rank quantile of sorted values. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1] as number;
}

/** A 32-bit seed for stream `b` of run seed `a` (murmur3's finaliser over both). */
function mix(a: number, b: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((b + 0x7f4a7c15) | 0, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
