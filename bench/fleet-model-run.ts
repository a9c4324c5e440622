import { agentDefaults, DEFAULT_STRATEGY, outageScenario, quantile, type ChannelResult, type FleetSettings, type OutageChannels, type RunResult, type StrategyName } from './fleet-model.js';
import { simulate } from './fleet-sim.js';

/** What a run of real agents (bench:fleet-real) asks of the model: the same fleet and outage. */
export interface ModelRequest {
  devices: number;
  channels: OutageChannels;
  outageS: number;
  seed?: number;
  strategy?: StrategyName;
  settings?: FleetSettings;
  /** What the cloud serves per second (default: the outage scenarios' headroom over the steady rate). */
  capacityRps?: number;
}

export interface ModelChannelAnswer {
  /** p99 time back online after the endpoint's return of the devices that did not see themselves online then, in s; null when some device never came back (or none was such). */
  p99S: number | null;
  /** Peak attempts per second at the endpoint after the return over the fleet's steady poll rate. */
  peakVsSteady: number;
}

/** The model's prediction for one outage of one fleet, per channel (mqtt null when the broker stays up). */
export function modelRun(r: ModelRequest): { api: ModelChannelAnswer; mqtt: ModelChannelAnswer | null; run: RunResult } {
  const settings = r.settings ?? agentDefaults();
  const run = simulate({
    devices: r.devices,
    seed: r.seed ?? 1,
    strategy: r.strategy ?? DEFAULT_STRATEGY,
    scenario: { ...outageScenario(r.outageS * 1000, r.devices, settings, r.channels), ...(r.capacityRps !== undefined ? { capacityRps: r.capacityRps } : {}) },
    settings,
  });
  // Over the devices whose own view was not online at the return: those are the real fleet's affected agents.
  const answer = (c: ChannelResult): ModelChannelAnswer => ({ p99S: c.timeToOnlineSeenMs ? c.timeToOnlineSeenMs.p99 / 1000 : null, peakVsSteady: c.peakVsSteady });
  return { api: answer(run.api), mqtt: run.mqtt ? answer(run.mqtt) : null, run };
}

/** The model over many seeds: the median of each measure, with its 5th-95th percentile range. */
export interface ModelSpread {
  p99S: number | null;
  p99RangeS: [number, number] | null;
  peakVsSteady: number;
  peakRange: [number, number];
}

/**
 * `modelRun` for `seeds` seeds from `r.seed` on, per channel. One run of a small fleet is one draw of
 * chance (50 devices: its p99 is its slowest device or so), so a real run is set against the model's
 * median, and the range says how far one run of the model itself strays.
 */
export function modelSpread(r: ModelRequest, seeds: number): { api: ModelSpread; mqtt: ModelSpread | null } {
  const first = r.seed ?? 1;
  const runs = Array.from({ length: Math.max(1, seeds) }, (_, i) => modelRun({ ...r, seed: first + i }));
  const spread = (answers: ModelChannelAnswer[]): ModelSpread => {
    const sorted = (xs: number[]): Float64Array => Float64Array.from(xs).sort();
    const peaks = sorted(answers.map((a) => a.peakVsSteady));
    const p99s = answers.every((a) => a.p99S !== null) ? sorted(answers.map((a) => a.p99S as number)) : null;
    const mid = (xs: Float64Array): number => quantile(xs, 0.5);
    const range = (xs: Float64Array): [number, number] => [quantile(xs, 0.05), quantile(xs, 0.95)];
    return { p99S: p99s ? mid(p99s) : null, p99RangeS: p99s ? range(p99s) : null, peakVsSteady: mid(peaks), peakRange: range(peaks) };
  };
  const mqtt = runs.flatMap((x) => (x.mqtt ? [x.mqtt] : []));
  return { api: spread(runs.map((x) => x.api)), mqtt: mqtt.length === runs.length ? spread(mqtt) : null };
}
