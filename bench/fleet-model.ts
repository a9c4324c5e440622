import { defaultConfig, type AgentConfig } from '../src/config/schema.js';
import { PROBE_CONNECT_TIMEOUT_MS, PROBE_INITIAL_INTERVAL_MS } from '../src/resilience/probe.js';
import type { OutageKind } from './fleet-network.js';

/**
 * The fleet model's vocabulary: the agent's settings as the model reads them, the strategies, the
 * scenarios and what a run measures. The simulation itself is bench/fleet-sim.ts.
 */

export const STRATEGIES = ['none', 'seed', 'equal', 'full', 'decorrelated', 'spread', 'default+probe'] as const;
export type StrategyName = (typeof STRATEGIES)[number];
/** The agent as it runs with an empty config file. */
export const DEFAULT_STRATEGY: StrategyName = 'default+probe';

export type Channel = 'api' | 'mqtt';

export interface FleetSettings {
  pollIntervalMs: number;
  offline: AgentConfig['settings']['offline'];
  /** cloud.requestTimeoutMs: a request not answered by then fails (the HTTP client's AbortSignal). */
  requestTimeoutMs: number;
  /** cloud.connectTimeoutMs: a request whose connection is not made by then fails (undici's connect timeout). */
  connectTimeoutMs: number;
  /** mqtt.connectTimeoutMs: a CONNACK not received by then fails the attempt. */
  mqttConnectTimeoutMs: number;
  /** mqtt.keepAliveSeconds in ms: the session's watchdog gives up 1.5 x this after the last packet. */
  keepAliveMs: number;
  /** ConnectivityProbe's first wait before jitter (its constructor default; the agent does not set it). */
  probeInitialMs: number;
  /** ConnectivityProbe's connect timeout (its constructor default; the agent does not set it). */
  probeConnectTimeoutMs: number;
}

/** The agent as it runs with an empty config file. */
export function agentDefaults(): FleetSettings {
  const config = defaultConfig();
  return {
    pollIntervalMs: config.settings.pollIntervalMs,
    offline: config.settings.offline,
    requestTimeoutMs: config.cloud.requestTimeoutMs,
    connectTimeoutMs: config.cloud.connectTimeoutMs,
    mqttConnectTimeoutMs: config.mqtt.connectTimeoutMs,
    keepAliveMs: config.mqtt.keepAliveSeconds * 1000,
    probeInitialMs: PROBE_INITIAL_INTERVAL_MS,
    probeConnectTimeoutMs: PROBE_CONNECT_TIMEOUT_MS,
  };
}

/** How each endpoint fails during an outage; null: that endpoint stays up. */
export interface OutageChannels {
  api: OutageKind | null;
  mqtt: OutageKind | null;
}

export type Scenario =
  /**
   * Devices poll with random phases and hold an MQTT connection; in [outageStartMs, outageStartMs +
   * outageMs) the endpoints named in `channels` fail as their kind says.
   */
  | { kind: 'outage'; outageStartMs: number; outageMs: number; capacityRps: number; channels: OutageChannels }
  /** Every device starts at t=0 (first poll at once) against a cloud that is up. */
  | { kind: 'reboot'; capacityRps: number };

/** The fleet's request rate while every device is online: one poll per pollInterval each. */
export function steadyStateRps(devices: number, settings: FleetSettings): number {
  return devices / (settings.pollIntervalMs / 1000);
}

/**
 * The outage scenarios' cloud serves this many times the steady-state rate: enough headroom for normal
 * peaks (a backend sized at its mean load falls over on the first spike) without being so large that a
 * fleet returning in step is absorbed for free.
 */
export const OUTAGE_CAPACITY_HEADROOM = 4;

/** The reboot's cloud serves this fraction of the fleet per second. */
export const REBOOT_CAPACITY_FRACTION = 1 / 20;

/** The whole cloud refused, as the first model had it. */
export const REFUSED_BOTH: OutageChannels = { api: 'refused', mqtt: 'refused' };

export function outageScenario(outageMs: number, devices: number, settings: FleetSettings, channels: OutageChannels = REFUSED_BOTH): Scenario {
  return {
    kind: 'outage',
    // Five poll intervals: every device has polled several times with its own phase.
    outageStartMs: 5 * settings.pollIntervalMs,
    outageMs,
    capacityRps: Math.ceil(OUTAGE_CAPACITY_HEADROOM * steadyStateRps(devices, settings)),
    channels,
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

/** What one channel of the fleet did from the endpoint's return on (API: polls; MQTT: connect attempts). */
export interface ChannelResult {
  /** Devices measured: those whose channel was not online, or had an attempt under way, at the return (outage); every device (reboot). */
  affected: number;
  /** Of those, how many were online again when the run ended. */
  recovered: number;
  /** Attempts sent while the endpoint was down. */
  requestsDuringOutage: number;
  /**
   * Mean over the affected devices of the attempts that reach the endpoint from the return up to their
   * first success, that one included (an attempt sent before the return and carried through after it
   * by a SYN resend counts: the returning cloud receives it).
   */
  requestsToOnlinePerDevice: number;
  /**
   * The highest rate of attempts arriving at the endpoint from the return on (503s included), over a
   * sliding window of peakWindowSeconds(steady rate): 1 s for a large fleet.
   */
  peakRps: number;
  /** peakRps over the fleet's steady poll rate (for MQTT too: the same yardstick of load). */
  peakVsSteady: number;
  /** The same, leaving out the first second after the return (for the reboot: the instant every device starts). */
  peakRpsAfterFirstSecond: number;
  /** Time from the return until each affected device's channel is online again; null when not all recovered. */
  timeToOnlineMs: Quantiles | null;
  /**
   * The same for the affected devices whose own view of the channel was not `online` at the return (a
   * device whose request was still under way, black-holed or hung, may still count itself online):
   * what bench:fleet-real can count of real agents, which it asks for their view.
   */
  timeToOnlineSeenMs: Quantiles | null;
  /** Requests answered 503 for want of capacity from the return on (API only). */
  rejected: number;
  probes: number;
  /** Wake-ups of the channel's loop by its probe, and how many of them happened while the endpoint was down. */
  wakes: number;
  wakesWhileDown: number;
  /** Shortest time between two consecutive attempts of one device, both started while the endpoint was down. */
  minGapWhileDownMs: number;
}

export interface RunResult {
  strategy: StrategyName;
  scenario: Scenario;
  devices: number;
  steadyRps: number;
  /** When the measured recovery starts: the endpoints' return (outage), t=0 (reboot). */
  returnAtMs: number;
  api: ChannelResult;
  /** Null when the scenario leaves the broker alone (the reboot; an API-only outage). */
  mqtt: ChannelResult | null;
  requests: number;
  simulatedMs: number;
  events: number;
  wallMs: number;
}

/** At the steady rate, a peak's window holds at least this many requests. */
export const PEAK_WINDOW_REQUESTS = 10;

/**
 * The window a peak rate is measured over: 1 s, or longer when the steady rate is low (bench:fleet-real's
 * 50 agents poll 0.8 times a second, where the busiest single second holds 3 to 7 polls and its ratio to
 * the steady rate is mostly chance): long enough to hold PEAK_WINDOW_REQUESTS at the steady rate.
 */
export function peakWindowSeconds(steadyRps: number): number {
  // (less a hair, so that 10 / (50 / 60) is 12, not 13)
  return steadyRps > 0 ? Math.max(1, Math.ceil(PEAK_WINDOW_REQUESTS / steadyRps - 1e-9)) : 1;
}

/** The highest mean rate over `windowS` consecutive 1-s buckets within [from, to] (a shorter span: its mean). */
export function windowPeak(buckets: ArrayLike<number>, from: number, to: number, windowS: number): number {
  const last = Math.min(to, buckets.length - 1);
  if (last < from) return 0;
  const w = Math.min(windowS, last - from + 1);
  let sum = 0;
  let best = 0;
  for (let s = from; s <= last; s++) {
    sum += buckets[s] ?? 0;
    if (s - w >= from) sum -= buckets[s - w] ?? 0;
    if (s - from + 1 >= w) best = Math.max(best, sum);
  }
  return best / w;
}

/** Nearest-rank quantile of sorted values. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1] as number;
}

/** A 32-bit seed for stream `b` of run seed `a` (murmur3's finaliser over both). */
export function mix(a: number, b: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((b + 0x7f4a7c15) | 0, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
