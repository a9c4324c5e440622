import { agentDefaults, DEFAULT_STRATEGY, outageScenario, type ChannelResult, type FleetSettings, type OutageChannels, type RunResult, type StrategyName } from './fleet-model.js';
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
  /** p99 time back online after the endpoint's return, in s; null when some device never came back. */
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
  const answer = (c: ChannelResult): ModelChannelAnswer => ({ p99S: c.timeToOnlineMs ? c.timeToOnlineMs.p99 / 1000 : null, peakVsSteady: c.peakVsSteady });
  return { api: answer(run.api), mqtt: run.mqtt ? answer(run.mqtt) : null, run };
}
