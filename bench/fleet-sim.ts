import { backoffFromSettings } from '../src/resilience/backoff.js';
import { offlineFloorApplies, wayClosedBy } from '../src/resilience/channel-probes.js';
import { ConnectionMonitor, type ChannelEvent } from '../src/resilience/connection-monitor.js';
import { CloudError } from '../src/resilience/cloud-error.js';
import { failureKind } from '../src/resilience/outcome.js';
import { RetryPolicy, type RetryBackoff } from '../src/resilience/retry-policy.js';
import { probeSchedule, wakeSinceClosedMs, wakeStaggerMs, type ProbeSchedule } from '../src/resilience/probe.js';
import type { Clock } from '../src/util/clock.js';
import { seededRandom, type Random } from '../src/util/random.js';
import { EventQueue } from './event-queue.js';
import { SEED_MAX_BACKOFF_MS, SeedBackoff } from './fleet-seed-backoff.js';
import {
  agentDefaults,
  mix,
  peakWindowSeconds,
  quantile,
  steadyStateRps,
  windowPeak,
  type Channel,
  type ChannelResult,
  type Quantiles,
  type FleetSettings,
  type RunResult,
  type Scenario,
  type SimOptions,
} from './fleet-model.js';
import { attempt, connectionLostAt, handshake, isDown, type Attempt, type EndpointOutage, type OutageKind } from './fleet-network.js';

export * from './fleet-model.js';

/**
 * A fleet of devices, each running the agent's target-state poll loop (src/cloud/target-state.ts)
 * and its MQTT session's connect loop (src/mqtt/connection-life.ts) with the REAL Backoff,
 * RetryPolicy, ConnectionMonitor and probe schedule, against one simulated cloud, as a discrete-event
 * simulation in simulated milliseconds. The handlers call the parts' synchronous APIs; nothing sleeps
 * on a clock, so 10k devices over hours of simulated time take seconds.
 *
 * Modelled as the agent does it (src/assembly/core.ts and mqtt.ts wire it so):
 * - poll: success → monitor.markSuccess('api'), retry.afterSuccess(), next poll after pollIntervalMs
 *   plus up to 10 % jitter; failure → monitor.markFailure with the failure's kind (refused or timed
 *   out: 'transport'; a 503: 'answer'), then RetryPolicy.afterFailure decides the wait: the backoff
 *   and, for the agent's default with the probe, the offline floor (offlineRetryIntervalSeconds while
 *   the channel is offline for want of a connection and its probe has not seen the way open); a
 *   poll at the loop's own moment (after a success) fails `phased`, as pollLoop tells it;
 * - MQTT: connected until the outage breaks the connection (see fleet-network.ts); then, as the
 *   session's run loop, retry.afterFailure (with the same offline floor) and a connect per wait; a
 *   connect a balancer accepted and closed (`503`) is an 'answer', any other failure 'transport';
 * - an attempt takes the time the network gives it (a black-holed one up to its timeout); the loop
 *   waits for it and is no sleeper meanwhile, so a probe's wake-up passes it by;
 * - the wait is a Wakeup sleep on the channel's Wakeup: a wake resolves it where the backoff alone
 *   would have (RetryPolicy.pacedUntilMs) if the floor stretched it and that is still ahead, else after
 *   a uniform stagger in [0, wakeStaggerMs(time since the probe last saw the way closed, at least the
 *   round's reach; from the round's start if it connected only after a resend)] (never later than its
 *   own deadline), and the loop then calls retry.afterWake();
 * - after a timeout the backoff counts from the attempt's start (RetryPolicy.attemptStarted at each start);
 * - each channel's probe (ChannelProbes / ConnectivityProbe.run): starts when that channel becomes
 *   offline, starts each probe probeSchedule(...).next() after the previous one started (at once
 *   when a black-holed one outlasted that), and wakes the channel's loop at
 *   the first handshake after going offline closed the way; offline because the endpoint answered
 *   (503s), it wakes only after a handshake has failed and then succeeded. It stops when the channel
 *   leaves offline.
 * Simplifications: an endpoint that is reached answers at once; the broker accepts every connect (no
 * capacity); the device runs only these two loops (the state and health reporters share the monitor
 * and would add their own requests); the network interfaces never change, so only the schedule
 * triggers probes.
 */

/** The simulation never sleeps: the loops' waits are events. */
const NO_SLEEPER = {
  sleep(): Promise<never> {
    throw new Error('the fleet simulation does not sleep');
  },
};

const START = 0;
const DONE = 1;
const PROBE = 2;
const PROBE_DONE = 3;
const LOST = 4;
const RETURN = 5;
const END = 6;

interface SimEvent {
  kind: number;
  loop: Loop | null;
  /** The loop's (or its probe's) generation when scheduled; a different one now means cancelled. */
  gen: number;
  result?: Attempt['result'];
}

/** One channel's loop of one device, with its probe. */
interface Loop {
  readonly channel: Channel;
  readonly device: SimDevice;
  readonly retry: RetryPolicy;
  due: number;
  gen: number;
  /** Sleeping on the Wakeup and not yet woken (Wakeup's current sleepers). */
  sleeping: boolean;
  woken: boolean;
  /** An attempt is under way. */
  busy: boolean;
  connected: boolean;
  /** Wakes of the channel's Wakeup so far, and how many of them the loop had seen when its latest wait ended. */
  wakes: number;
  seenWakes: number;
  probeGen: number;
  probeSchedule: ProbeSchedule | null;
  reachable: boolean;
  /** The probe's latest handshake of this offline stretch connected (ConnectivityProbe.wayOpen). */
  probeConnected: boolean;
  /** When the probe last saw the way closed: the start of its latest failed handshake, or the start of the offline stretch. */
  closedSeenAt: number;
  /** When the probe's current (or latest) handshake started: the next one is timed from it. */
  probeStartedAt: number;
  /** The reach of the wait before the probe's next handshake (ProbeSchedule.reachMs). */
  probeReachMs: number;
  /** The latest attempt succeeded: the next starts at the loop's own moment (pollLoop's `phased`). */
  lastOk: boolean;
  /** The stagger of the channel's latest wake (Wakeup's, for a loop that learns of it when its attempt ends). */
  staggerMaxMs: number;
  lastAttemptAt: number;
  affected: boolean;
  /** Affected, and the device's own view of the channel was not online at the return. */
  seenAffected: boolean;
  recovered: boolean;
  attemptsToOnline: number;
  onlineAfterMs: number;
}

interface SimDevice {
  readonly random: Random;
  readonly monitor: ConnectionMonitor;
  readonly loops: Loop[];
}

interface ChannelStats {
  readonly outage: EndpointOutage;
  readonly buckets: Int32Array;
  requests: number;
  requestsDuringOutage: number;
  rejected: number;
  probes: number;
  wakes: number;
  wakesWhileDown: number;
  minGapWhileDownMs: number;
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
  private readonly returnAt: number;
  private readonly tailMs: number;
  private readonly clock: Clock;
  private readonly stats: Record<Channel, ChannelStats | null>;
  private windowSecond = -1;
  private servedInWindow = 0;
  private remaining = 0;
  private events = 0;

  constructor(private readonly opts: SimOptions) {
    if (!Number.isInteger(opts.devices) || opts.devices < 1) throw new RangeError(`devices: expected an integer >= 1, got ${opts.devices}`);
    this.settings = opts.settings ?? agentDefaults();
    this.scenario = opts.scenario;
    this.probing = opts.strategy === 'default+probe';
    const s = this.scenario;
    this.returnAt = s.kind === 'outage' ? s.outageStartMs + s.outageMs : 0;
    // Long enough to see the echo of a wave of returning devices one poll interval later.
    this.tailMs = 2.2 * this.settings.pollIntervalMs;
    const capMs = opts.capMs ?? 6 * 60 * 60 * 1000;
    const seconds = Math.ceil((this.returnAt + capMs + this.tailMs) / 1000) + 2;
    const outage = (kind: OutageKind | null): EndpointOutage =>
      s.kind === 'outage' ? { kind, fromMs: s.outageStartMs, untilMs: this.returnAt } : { kind: null, fromMs: 0, untilMs: 0 };
    const channelStats = (o: EndpointOutage): ChannelStats => ({
      outage: o,
      buckets: new Int32Array(seconds),
      requests: 0,
      requestsDuringOutage: 0,
      rejected: 0,
      probes: 0,
      wakes: 0,
      wakesWhileDown: 0,
      minGapWhileDownMs: Infinity,
    });
    this.stats = {
      api: channelStats(outage(s.kind === 'outage' ? s.channels.api : null)),
      mqtt: s.kind === 'outage' && s.channels.mqtt !== null ? channelStats(outage(s.channels.mqtt)) : null,
    };
    this.clock = {
      monotonic: () => this.time,
      uptime: () => this.time,
      bootId: () => 'fleet-sim',
      now: () => WALL_ORIGIN + this.time,
      sleep: () => Promise.reject(new Error('the fleet simulation moves time itself: nothing may sleep on its clock')),
    };
    this.queue.push(this.returnAt, { kind: RETURN, loop: null, gen: 0 });
    this.queue.push(this.returnAt + capMs, { kind: END, loop: null, gen: 0 });
  }

  run(): RunResult {
    const started = performance.now();
    const phases = seededRandom(mix(this.opts.seed, 0x7fffffff));
    for (let i = 0; i < this.opts.devices; i++) {
      const device = this.createDevice(i);
      this.devices.push(device);
      for (const loop of device.loops) {
        if (loop.channel === 'api') {
          // Outage: each device's first poll at its own phase, the interval after its latest success. Reboot: at t=0, as the agent does at start.
          loop.lastOk = this.scenario.kind === 'outage';
          this.sleep(loop, loop.lastOk ? phases() * this.settings.pollIntervalMs : 0);
        } else {
          this.connectedAtStart(loop, phases());
        }
      }
    }

    for (;;) {
      const event = this.queue.pop();
      if (!event) break;
      this.time = event.time;
      this.events++;
      const { kind, loop, gen } = event.payload;
      if (kind === END) break;
      if (kind === RETURN) this.endpointsReturned();
      else if (loop === null) continue;
      else if (kind === START && gen === loop.gen) this.start(loop);
      else if (kind === DONE && gen === loop.gen) this.finish(loop, event.payload.result ?? 'reached');
      else if (kind === LOST) this.lost(loop);
      else if (kind === PROBE && gen === loop.probeGen) this.probe(loop);
      else if (kind === PROBE_DONE && gen === loop.probeGen) this.probeDone(loop, event.payload.result === 'reached');
    }
    return this.result(performance.now() - started);
  }

  private createDevice(index: number): SimDevice {
    const random = seededRandom(mix(this.opts.seed, index));
    const channels: Channel[] = this.stats.mqtt ? ['api', 'mqtt'] : ['api'];
    const monitor = new ConnectionMonitor({ clock: this.clock, offlineAfterFailures: this.settings.offline.offlineAfterFailures, channels });
    const device: SimDevice = { random, monitor, loops: [] };
    for (const channel of channels) device.loops.push(this.createLoop(device, channel));
    if (this.probing) monitor.on('channel', (e) => this.followChannel(device, e));
    return device;
  }

  private createLoop(device: SimDevice, channel: Channel): Loop {
    const { random, monitor } = device;
    const offline = this.settings.offline;
    const deps = { clock: this.clock, random };
    let backoff: RetryBackoff;
    switch (this.opts.strategy) {
      case 'seed':
        backoff = new SeedBackoff(this.settings.pollIntervalMs, SEED_MAX_BACKOFF_MS, random);
        break;
      case 'default+probe':
        backoff = backoffFromSettings(offline, deps);
        break;
      default:
        backoff = backoffFromSettings({ ...offline, enableJitter: true, jitter: this.opts.strategy }, deps);
    }
    // As src/assembly wires it: the API's loops and the broker's session have the offline floor; the
    // strategies without the probe have none (nothing would wake them).
    const floorMs = (): number =>
      this.probing &&
      offlineFloorApplies({ offline: monitor.channelStatus(channel) === 'offline', lastFailureKind: monitor.lastFailureKind(channel), wayOpen: loop.probeSchedule !== null && loop.probeConnected })
        ? offline.offlineRetryIntervalSeconds * 1000
        : 0;
    const loop: Loop = {
      channel,
      device,
      retry: new RetryPolicy({ backoff, sleeper: NO_SLEEPER, clock: { sleep: NO_SLEEPER.sleep, monotonic: () => this.time }, floorMs }),
      due: 0,
      gen: 0,
      sleeping: false,
      woken: false,
      busy: false,
      connected: false,
      wakes: 0,
      seenWakes: 0,
      probeGen: 0,
      probeSchedule: null,
      reachable: false,
      probeConnected: false,
      closedSeenAt: 0,
      probeStartedAt: 0,
      probeReachMs: 0,
      lastOk: false,
      staggerMaxMs: 0,
      lastAttemptAt: -Infinity,
      affected: this.scenario.kind === 'reboot',
      seenAffected: this.scenario.kind === 'reboot',
      recovered: false,
      attemptsToOnline: 0,
      onlineAfterMs: Infinity,
    };
    if (loop.affected) this.remaining++;
    return loop;
  }

  private channelStats(loop: Loop): ChannelStats {
    return this.stats[loop.channel] as ChannelStats;
  }

  /** The session connected before the outage; `phase` places its latest ping answer in the last keep-alive. */
  private connectedAtStart(loop: Loop, phase: number): void {
    loop.connected = true;
    loop.device.monitor.markSuccess('mqtt', 'connect');
    loop.retry.afterSuccess();
    const outage = this.channelStats(loop).outage;
    const lostAt = connectionLostAt(outage, outage.fromMs - phase * this.settings.keepAliveMs, this.settings.keepAliveMs);
    if (lostAt !== null) this.queue.push(lostAt, { kind: LOST, loop, gen: 0 });
  }

  private endpointsReturned(): void {
    if (this.scenario.kind === 'outage') {
      for (const d of this.devices) {
        for (const loop of d.loops) {
          if (!isDown(this.channelStats(loop).outage, this.returnAt - 1)) continue;
          const seen = d.monitor.channelStatus(loop.channel) !== 'online';
          if (loop.busy || seen) {
            loop.affected = true;
            loop.seenAffected = seen;
            this.remaining++;
          }
        }
      }
    }
    if (this.remaining === 0) this.queue.push(this.time + this.tailMs, { kind: END, loop: null, gen: 0 });
  }

  /** One turn of the channel's loop: the poll or connect, whose end the network decides. */
  private start(loop: Loop): void {
    const now = this.time;
    loop.sleeping = false;
    loop.seenWakes = loop.wakes;
    if (loop.woken) {
      loop.woken = false;
      const hold = loop.retry.afterWake();
      // A Retry-After still holds: the loop sleeps it out on the clock (no 503 here carries one).
      if (hold > 0) return this.hold(loop, now + hold);
    }
    const stats = this.channelStats(loop);
    stats.requests++;
    if (isDown(stats.outage, now)) {
      stats.requestsDuringOutage++;
      if (loop.lastAttemptAt >= stats.outage.fromMs) stats.minGapWhileDownMs = Math.min(stats.minGapWhileDownMs, now - loop.lastAttemptAt);
    }
    loop.lastAttemptAt = now;
    // As RetryPolicy.wait does when the loop's wait ends: the backoff spaces attempt starts.
    loop.retry.attemptStarted();
    if (loop.affected && !loop.recovered) loop.attemptsToOnline++;
    const a =
      loop.channel === 'api'
        ? attempt(stats.outage, now, this.settings.requestTimeoutMs, this.settings.connectTimeoutMs)
        : attempt(stats.outage, now, this.settings.mqttConnectTimeoutMs);
    // Only what reaches the endpoint (or its balancer) is load on it.
    if (a.result !== 'timeout' && a.result !== 'reset') this.count(stats, a.atMs);
    loop.busy = true;
    if (a.atMs === now) this.finish(loop, a.result);
    else this.queue.push(a.atMs, { kind: DONE, loop, gen: ++loop.gen, result: a.result });
  }

  private count(stats: ChannelStats, atMs: number): void {
    const second = Math.floor(atMs / 1000);
    if (second < stats.buckets.length) stats.buckets[second] = (stats.buckets[second] ?? 0) + 1;
  }

  /** The attempt's end: the outcome on the monitor, then the wait the retry policy asks for. */
  private finish(loop: Loop, result: Attempt['result']): void {
    loop.busy = false;
    // An attempt started before the return that reaches the endpoint after it (a SYN resend through a
    // black hole) is a request the returning cloud receives: it counts as one until online.
    if (result === 'reached' && loop.affected && !loop.recovered && loop.lastAttemptAt < this.returnAt && this.time >= this.returnAt) loop.attemptsToOnline++;
    const error = result === 'reached' ? this.admit(loop) : this.errorOf(loop.channel, result);
    const { monitor, random } = loop.device;
    if (error === null) {
      monitor.markSuccess(loop.channel, loop.channel === 'api' ? 'poll' : 'connect');
      loop.lastOk = true;
      loop.retry.afterSuccess();
      // As RetryPolicy.afterSuccess: the wakes of an attempt that got through count as seen.
      loop.seenWakes = loop.wakes;
      if (loop.affected && !loop.recovered) this.recovered(loop);
      if (loop.channel === 'mqtt') {
        loop.connected = true;
        return;
      }
      const base = this.settings.pollIntervalMs;
      return this.sleep(loop, this.time + base + random() * base * 0.1);
    }
    // The session's kind: a connection the balancer accepted and closed before any CONNACK is an answer (the way is open).
    monitor.markFailure(loop.channel, loop.channel === 'api' ? 'poll' : 'connect', error.message, loop.channel === 'api' ? failureKind(error) : result === 'unavailable' ? 'answer' : 'transport');
    // pollLoop: a poll at the loop's own moment (after a success) fails phased. The session passes no
    // error (a broker's refusal carries no Retry-After), only whether the attempt timed out.
    const phased = loop.lastOk;
    loop.lastOk = false;
    this.sleep(loop, this.time + (loop.channel === 'api' ? loop.retry.afterFailure(error, phased ? { phased } : {}) : loop.retry.afterFailure(undefined, { timedOut: result === 'timeout' })));
  }

  /** A request that reached the API is served while the cloud has capacity left this second. */
  private admit(loop: Loop): CloudError | null {
    if (loop.channel === 'mqtt') return null;
    const second = Math.floor(this.time / 1000);
    if (second !== this.windowSecond) {
      this.windowSecond = second;
      this.servedInWindow = 0;
    }
    if (this.servedInWindow < this.scenario.capacityRps) {
      this.servedInWindow++;
      return null;
    }
    if (this.time >= this.returnAt) this.channelStats(loop).rejected++;
    return new CloudError('http', 'GET /state answered 503 (over capacity)', 503);
  }

  /** The HTTP client's CloudError for a failed attempt (the session's are all transport failures). */
  private errorOf(channel: Channel, result: Exclude<Attempt['result'], 'reached'>): CloudError {
    const what = channel === 'api' ? 'GET /state' : 'mqtt connect';
    if (result === 'refused') return new CloudError('network', `${what} failed: connection refused (ECONNREFUSED)`);
    if (result === 'timeout') return new CloudError('timeout', `${what} timed out`);
    if (result === 'reset') return new CloudError('network', `${what} failed: connection reset (ECONNRESET)`);
    return new CloudError('http', `${what} answered 503 (no backend)`, 503);
  }

  /** The MQTT connection broke: the session's run loop marks it and waits as its policy says. */
  private lost(loop: Loop): void {
    if (!loop.connected) return;
    loop.connected = false;
    loop.device.monitor.markFailure('mqtt', 'ping', 'connection lost', 'transport');
    // Gone silent (black hole, or hung before the reset at the end): the keep-alive watchdog gave it up,
    // at a moment timed by the device's own last ping (ConnectionLife's `silent` end).
    const outage = this.channelStats(loop).outage;
    const silent = outage.kind === 'blackhole' || (outage.kind === 'hang' && this.time < outage.untilMs);
    this.sleep(loop, this.time + loop.retry.afterFailure(undefined, { phased: silent }));
  }

  private recovered(loop: Loop): void {
    loop.recovered = true;
    loop.onlineAfterMs = this.time - this.returnAt;
    this.remaining--;
    if (this.remaining === 0) this.queue.push(this.time + this.tailMs, { kind: END, loop: null, gen: 0 });
  }

  /**
   * Wakeup.sleep until `at` (a monotonic deadline), as RetryPolicy.wait asks for it: a wake that came
   * while the loop was busy with its attempt counts as a wake of this sleep (after its stagger).
   */
  private sleep(loop: Loop, at: number): void {
    loop.woken = false;
    if (loop.wakes > loop.seenWakes) {
      loop.sleeping = false;
      loop.woken = true;
      loop.due = Math.min(at, this.time + loop.device.random() * loop.staggerMaxMs);
    } else {
      loop.due = at;
      loop.sleeping = true;
    }
    this.queue.push(loop.due, { kind: START, loop, gen: ++loop.gen });
  }

  /** RetryPolicy.wait's clock sleep after a wake, for what is left of a Retry-After: no wake cuts it. */
  private hold(loop: Loop, at: number): void {
    loop.due = at;
    this.queue.push(at, { kind: START, loop, gen: ++loop.gen });
  }

  /** Wakeup.wake for the channel's only sleeper, its loop. */
  private wake(loop: Loop): void {
    const stats = this.channelStats(loop);
    stats.wakes++;
    loop.wakes++;
    // ConnectivityProbe.reached: the stagger is what is left of the spread since the way was last seen closed, at least the round's reach.
    const took = this.time - loop.probeStartedAt;
    const sinceClosed = wakeSinceClosedMs(took, this.time - loop.closedSeenAt, loop.probeReachMs);
    loop.staggerMaxMs = wakeStaggerMs(sinceClosed, this.settings.offline.wakeSpreadSeconds * 1000);
    if (isDown(stats.outage, this.time)) stats.wakesWhileDown++;
    if (!loop.sleeping) return;
    loop.sleeping = false;
    loop.woken = true;
    // Wakeup.sleep with RetryPolicy's pacedMs: where the backoff alone would have ended the wait, if that is still ahead.
    const paced = loop.retry.pacedUntilMs;
    const at = paced !== undefined && paced > this.time ? paced : this.time + loop.device.random() * loop.staggerMaxMs;
    if (at < loop.due) {
      loop.due = at;
      this.queue.push(at, { kind: START, loop, gen: ++loop.gen });
    }
  }

  /** ChannelProbes: each channel's ConnectivityProbe.follow, probing while that channel is offline. */
  private followChannel(d: SimDevice, e: ChannelEvent): void {
    const loop = d.loops.find((l) => l.channel === e.channel);
    if (!loop) return;
    if (e.to === 'offline' && loop.probeSchedule === null) {
      const s = this.settings;
      loop.probeSchedule = probeSchedule(s.probeInitialMs, s.offline.probeMaxIntervalSeconds * 1000, this.clock, d.random);
      // As the probe's wayClosed: offline because the endpoint answered, a handshake is not news.
      loop.reachable = !wayClosedBy(d.monitor.lastFailureKind(loop.channel));
      loop.probeConnected = false;
      loop.closedSeenAt = this.time;
      this.queue.push(this.time + loop.probeSchedule.next(), { kind: PROBE, loop, gen: ++loop.probeGen });
      loop.probeReachMs = loop.probeSchedule.reachMs;
    } else if (e.to !== 'offline' && loop.probeSchedule !== null) {
      loop.probeSchedule = null;
      loop.probeGen++;
    }
  }

  /** One scheduled probe of ConnectivityProbe.run: a TCP handshake with the channel's endpoint. */
  private probe(loop: Loop): void {
    const stats = this.channelStats(loop);
    stats.probes++;
    loop.probeStartedAt = this.time;
    const h = handshake(stats.outage, this.time, this.settings.probeConnectTimeoutMs);
    const result = h.connected ? 'reached' : 'refused';
    if (h.atMs === this.time) this.probeDone(loop, h.connected);
    else this.queue.push(h.atMs, { kind: PROBE_DONE, loop, gen: loop.probeGen, result });
  }

  /** The probe's round is over: wake the loop if the way opened, then wait for the next round. */
  private probeDone(loop: Loop, connected: boolean): void {
    const schedule = loop.probeSchedule;
    if (schedule === null) return;
    loop.probeConnected = connected;
    if (!connected) {
      loop.closedSeenAt = loop.probeStartedAt;
      loop.reachable = false;
    } else if (!loop.reachable) {
      loop.reachable = true;
      this.wake(loop);
    }
    this.queue.push(Math.max(this.time, loop.probeStartedAt + schedule.next()), { kind: PROBE, loop, gen: loop.probeGen });
    loop.probeReachMs = schedule.reachMs;
  }

  private result(wallMs: number): RunResult {
    const steadyRps = steadyStateRps(this.opts.devices, this.settings);
    const mqtt = this.stats.mqtt;
    return {
      strategy: this.opts.strategy,
      scenario: this.scenario,
      devices: this.opts.devices,
      steadyRps,
      returnAtMs: this.returnAt,
      api: this.channelResult('api', this.stats.api as ChannelStats, steadyRps),
      mqtt: mqtt ? this.channelResult('mqtt', mqtt, steadyRps) : null,
      requests: (this.stats.api?.requests ?? 0) + (mqtt?.requests ?? 0),
      simulatedMs: this.time,
      events: this.events,
      wallMs,
    };
  }

  private channelResult(channel: Channel, stats: ChannelStats, steadyRps: number): ChannelResult {
    const loops = this.devices.map((d) => d.loops.find((l) => l.channel === channel) as Loop);
    const affected = loops.filter((l) => l.affected);
    const recovered = affected.filter((l) => l.recovered);
    const quantiles = (of: Loop[]): Quantiles | null => {
      const back = of.filter((l) => l.recovered);
      const times = Float64Array.from(back, (l) => l.onlineAfterMs).sort();
      return back.length === of.length && times.length > 0 ? { p50: quantile(times, 0.5), p99: quantile(times, 0.99), max: times[times.length - 1] ?? 0 } : null;
    };
    const returnSecond = Math.floor(this.returnAt / 1000);
    const lastSecond = Math.min(stats.buckets.length - 1, Math.floor(this.time / 1000));
    const windowS = peakWindowSeconds(steadyRps);
    const peak = windowPeak(stats.buckets, returnSecond, lastSecond, windowS);
    const peakAfterFirst = windowPeak(stats.buckets, returnSecond + 1, lastSecond, windowS);
    const attempts = affected.reduce((sum, l) => sum + l.attemptsToOnline, 0);
    return {
      affected: affected.length,
      recovered: recovered.length,
      requestsDuringOutage: stats.requestsDuringOutage,
      requestsToOnlinePerDevice: affected.length > 0 ? attempts / affected.length : 0,
      peakRps: peak,
      peakVsSteady: peak / steadyRps,
      peakRpsAfterFirstSecond: peakAfterFirst,
      timeToOnlineMs: quantiles(affected),
      timeToOnlineSeenMs: quantiles(affected.filter((l) => l.seenAffected)),
      rejected: stats.rejected,
      probes: stats.probes,
      wakes: stats.wakes,
      wakesWhileDown: stats.wakesWhileDown,
      minGapWhileDownMs: stats.minGapWhileDownMs,
    };
  }
}
