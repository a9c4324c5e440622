import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startFleetAgent, type FleetAgent } from './fleet-real-agents.js';
import { OUTAGE_KINDS, startFleetWorld, type Channel, type FleetWorld, type OutageKind } from './fleet-real-world.js';
import { modelSpread, type ModelSpread } from './fleet-model-run.js';
import { agentDefaults, peakWindowSeconds, quantile, steadyStateRps, windowPeak } from './fleet-sim.js';
import { seededRandom } from '../src/util/random.js';
import { benchArgs, cell, jsonLine, machine, ratio, round, table, target, type BenchResult, type BenchTarget } from './report.js';

/**
 * npm run bench:fleet-real [-- --agents N --short S --long S --settle S --cap S --kinds K,K --json]
 *
 * A real fleet: N agent processes (the built CLI, each with its own data dir) against the devcloud
 * and a private Mosquitto through fault proxies (bench/fleet-real-world.ts). For each outage kind
 * (refused, hang, 503 behind an accepting proxy) and length (short, long), both channels go down
 * together; when they return, it measures per agent the time until each channel is back (the first
 * answer below 500 from the cloud, and the first to a target-state poll; the first CONNACK from the
 * broker; counted for the agents whose own view of that channel was not online at the return) and the
 * request rate at the cloud (all requests, and the target-state polls alone), and compares the polls
 * and the connects with bench:fleet's model (bench/fleet-sim.ts), whose loops they are, run for the
 * same N and schedule.
 */

const USAGE =
  'usage: node dist/bench/fleet-real.js [--agents N (default 50)] [--short S (default 60; 0: none)] [--long S (default 600; 0: none)] ' +
  '[--settle S (default 90: steady time before each outage)] [--cap S (default 180: longest wait for the return)] ' +
  `[--kinds K,K (default ${OUTAGE_KINDS.join(',')})] [--json]`;

const CHANNELS: readonly Channel[] = ['http', 'mqtt'];
/** The agent's name of each channel in `/v2/connection`. */
const AGENT_CHANNEL: Record<Channel, string> = { http: 'api', mqtt: 'mqtt' };

interface Measure {
  kind: OutageKind;
  outageS: number;
  channel: Channel;
  affected: number;
  back: number;
  p50S: number | null;
  p99S: number | null;
  maxS: number | null;
  /** HTTP: the p99 of the first target-state poll answered (the model's poll loop; p99S counts any request). */
  pollP99S: number | null;
  steadyRps: number;
  peakRps: number;
  /** The same for the GETs alone (the polls), which the model's poll loop stands for. */
  pollSteadyRps: number;
  pollPeakRps: number;
  /** The model's median over MODEL_SEEDS seeds, with its 5th-95th percentile range. */
  model: ModelSpread | null;
}

/** Seeds of the model per outage: at 50 devices a run takes milliseconds, and one run is one draw of chance. */
const MODEL_SEEDS = 51;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s`);
    await sleep(250);
  }
}

/**
 * Starts the fleet with each agent at its own moment, uniform over one poll interval (a draw of
 * `seed`): an agent polls at its start and then every interval, so this gives the polls the phases
 * of a fleet whose devices came up at different times, which is what the model draws. A fleet
 * started within seconds polls in a crowd ever after, and an outage of about one interval ends in
 * that crowd's next poll on schedule: a peak of the start, not of the return. Started again, as new,
 * before each outage after the first: a return leaves the fleet's polls within its wake's
 * spread (about 38 s of the 60 s interval), where they stay, and an outage that met such a fleet (a
 * `hang` after a `refused`) found 9 agents with a poll due in its first 30 s where a spread fleet has
 * about 25, which the model, drawing spread phases, does not describe.
 */
async function startFleet(world: FleetWorld, n: number, root: string, uuidOf: (i: number) => string, seed: number): Promise<FleetAgent[]> {
  const random = seededRandom(seed);
  const offsets = Array.from({ length: n }, () => random() * agentDefaults().pollIntervalMs).sort((x, y) => x - y);
  const from = performance.now();
  const agents: FleetAgent[] = [];
  for (let i = 0; i < n; i++) {
    const apiKey = `fleet-device-key-${i}-0123456789abcdef`;
    world.devcloud.admin.createDevice({ uuid: uuidOf(i), apiKey });
    await sleep(Math.max(0, from + (offsets[i] as number) - performance.now()));
    agents.push(await startFleetAgent({ index: i, uuid: uuidOf(i), apiKey, apiUrl: world.apiUrl, mqttUrl: world.mqttUrl(i), root }));
  }
  await waitUntil('every agent online on both channels', () => CHANNELS.every((c) => world.backOnline(c, from).size === n), 300_000);
  return agents;
}

/** The agents whose own view of `channel` is not online, asked all at once. */
async function notOnline(agents: FleetAgent[], channel: Channel): Promise<Set<number>> {
  const views = await Promise.all(agents.map((a) => a.channels().catch(() => ({}) as Record<string, string>)));
  return new Set(agents.filter((_, i) => views[i]?.[AGENT_CHANNEL[channel]] !== 'online').map((a) => a.index));
}

async function runOutage(world: FleetWorld, agents: FleetAgent[], kind: OutageKind, outageS: number, o: { settleS: number; capS: number; seed: number }): Promise<Measure[]> {
  const settleFrom = performance.now();
  await sleep(o.settleS * 1000);
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const settled = performance.now();
  const steadyRps = mean(world.requestsPerSecond(settleFrom, settled));
  const pollSteadyRps = mean(world.requestsPerSecond(settleFrom, settled, 'polls'));
  process.stderr.write(`${kind} ${outageS} s: down\n`);
  await world.start(kind, CHANNELS);
  await sleep(outageS * 1000);
  const affected = new Map<Channel, Set<number>>();
  for (const c of CHANNELS) affected.set(c, await notOnline(agents, c));
  // Each channel's own return: the 503's throttle is lifted before the broker has restarted, and a poll
  // answered meanwhile is the agent back (measured from after both, it was missed, and the next poll a
  // whole interval later counted: a polls p99 of 61-64 s in two runs).
  const returnedAt = await world.end();
  const returned = returnedAt.http;
  process.stderr.write(`${kind} ${outageS} s: back; waiting for ${CHANNELS.map((c) => `${affected.get(c)?.size} ${c}`).join(', ')}\n`);
  // Back on HTTP counts its first answered poll too (what the model is compared on), which may come later.
  const allBack = (): boolean =>
    CHANNELS.every((c) => [...(affected.get(c) ?? [])].every((i) => world.backOnline(c, returnedAt[c]).has(i) && world.backOnline(c, returnedAt[c], 'polls').has(i)));
  await waitUntil('every affected agent back', allBack, o.capS * 1000).catch((err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    for (const c of CHANNELS) {
      for (const i of affected.get(c) ?? []) {
        if (!world.backOnline(c, returnedAt[c], 'polls').has(i)) process.stderr.write(`agent ${i} not back on ${c}; its log's tail:\n${agents[i]?.stderr().slice(-3000)}\n`);
      }
    }
  });
  // Peaks over the window the model uses for this fleet (peakWindowSeconds: 12 s for 50 agents).
  const windowS = peakWindowSeconds(steadyStateRps(agents.length, agentDefaults()));
  const peakOf = (rates: number[]): number => windowPeak(rates, 0, rates.length - 1, windowS);
  const peakRps = peakOf(world.requestsPerSecond(returned, performance.now()));
  const pollPeakRps = peakOf(world.requestsPerSecond(returned, performance.now(), 'polls'));
  // The model's run for the same fleet and outage (both channels down, the same kind), with a cloud that
  // serves all it gets, as the devcloud does (the model's own scenarios give the cloud 4x the steady
  // rate, which for 50 devices is 4 requests a second: a few polls in one second would meet 503s the
  // devcloud never sends).
  const model = modelSpread({ devices: agents.length, seed: o.seed, outageS, channels: { api: kind, mqtt: kind }, capacityRps: Number.POSITIVE_INFINITY }, MODEL_SEEDS);
  return CHANNELS.map((channel) => {
    const predicted = channel === 'http' ? model.api : model.mqtt;
    const set = affected.get(channel) ?? new Set<number>();
    const secondsBack = (back: Map<number, number>): Float64Array =>
      Float64Array.from([...set].flatMap((i) => (back.has(i) ? [((back.get(i) as number) - returnedAt[channel]) / 1000] : []))).sort();
    const times = secondsBack(world.backOnline(channel, returnedAt[channel]));
    const q = (p: number): number | null => (times.length > 0 ? quantile(times, p) : null);
    const polls = channel === 'http' ? secondsBack(world.backOnline(channel, returnedAt[channel], 'polls')) : times;
    return {
      kind,
      outageS,
      channel,
      affected: set.size,
      back: times.length,
      p50S: q(0.5),
      p99S: times.length === set.size ? q(0.99) : null,
      maxS: times.length === set.size ? q(1) : null,
      pollP99S: polls.length === set.size && polls.length > 0 ? quantile(polls, 0.99) : null,
      steadyRps,
      peakRps,
      pollSteadyRps,
      pollPeakRps,
      model: predicted,
    };
  });
}

/** "median (5th-95th)" of the model's runs. */
function spreadCell(mid: number | null | undefined, range: [number, number] | null | undefined, digits: number): string {
  if (mid === null || mid === undefined) return cell(null);
  return range ? `${cell(mid, digits)} (${cell(range[0], digits)}-${cell(range[1], digits)})` : cell(mid, digits);
}

function report(measures: Measure[], n: number, wallS: number, json: boolean, config: Record<string, unknown>): void {
  const rows = measures.map((m) => [
    `${m.kind} ${m.outageS} s ${m.channel}`,
    `${m.back}/${m.affected}`,
    cell(m.p50S, 1),
    cell(m.p99S, 1),
    cell(m.maxS, 1),
    m.channel === 'http' ? cell(m.pollP99S, 1) : '',
    spreadCell(m.model?.p99S, m.model?.p99RangeS, 1),
    cell(m.steadyRps, 2),
    cell(m.peakRps, 2),
    cell(ratio(m.pollPeakRps, m.pollSteadyRps), 2),
    spreadCell(m.model?.peakVsSteady, m.model?.peakRange, 2),
  ]);
  const windowS = peakWindowSeconds(steadyStateRps(n, agentDefaults()));
  console.log(`real fleet: ${n} agents, ${machine().cpus} cpus, node ${process.version}, ${cell(wallS / 60, 1)} min; peaks over ${windowS} s windows; model: median (5th-95th percentile) of ${MODEL_SEEDS} seeds`);
  console.log(table(['outage, channel', 'back', 'p50 s', 'p99 s', 'max s', 'polls p99 s', 'model p99 s', 'steady req/s', 'peak req/s', 'polls peak/steady', 'model peak/steady'], rows));
  const results: BenchResult[] = [];
  const ratios: Record<string, number | null> = {};
  const targets: Record<string, BenchTarget> = {};
  for (const m of measures) {
    const k = `${m.kind}_${m.outageS}s.${m.channel}`;
    results.push({ name: `${k}.p99_back_online`, value: m.p99S === null ? null : round(m.p99S), unit: 's' });
    results.push({ name: `${k}.affected`, value: m.affected, unit: 'agents' });
    if (m.channel === 'http') results.push({ name: `${k}.polls_p99_back_online`, value: m.pollP99S === null ? null : round(m.pollP99S), unit: 's' });
    // The polls' peak over their steady rate: the model's poll loop makes no reports, the real agents do.
    const peakVsSteady = ratio(m.pollPeakRps, m.pollSteadyRps);
    results.push({ name: `${k}.peak_vs_steady_all_requests`, value: ratio(m.peakRps, m.steadyRps), unit: 'x' });
    if (m.channel === 'http') results.push({ name: `${k}.polls_peak_vs_steady`, value: peakVsSteady, unit: 'x' });
    const modelP99 = m.model?.p99S ?? null;
    results.push({ name: `${k}.model_p99_back_online`, value: modelP99 === null ? null : round(modelP99), unit: 's' });
    if (m.model?.p99RangeS) {
      results.push({ name: `${k}.model_p99_back_online_p05`, value: round(m.model.p99RangeS[0]), unit: 's' });
      results.push({ name: `${k}.model_p99_back_online_p95`, value: round(m.model.p99RangeS[1]), unit: 's' });
    }
    if (m.channel === 'http' && m.model) {
      results.push({ name: `${k}.model_peak_vs_steady`, value: round(m.model.peakVsSteady), unit: 'x' });
      results.push({ name: `${k}.model_peak_vs_steady_p05`, value: round(m.model.peakRange[0]), unit: 'x' });
      results.push({ name: `${k}.model_peak_vs_steady_p95`, value: round(m.model.peakRange[1]), unit: 'x' });
    }
    // Like for like: the model's HTTP loop is the poll loop; a real agent's other loops on the API (its
    // reports, the outbox's flusher) can bring the channel back before its poll does.
    ratios[`${k}.p99_vs_model`] = ratio(m.channel === 'http' ? m.pollP99S : m.p99S, modelP99);
    targets[`${k}.p99_back_online_s`] = target('<=', 40, m.p99S);
    const off = (r: number | null): number | null => (r === null ? null : Math.abs(r - 1));
    targets[`${k}.p99_within_25pct_of_model`] = target('<=', 0.25, off(ratios[`${k}.p99_vs_model`] ?? null));
    if (m.channel === 'http') {
      ratios[`${k}.peak_vs_steady_vs_model`] = ratio(peakVsSteady, m.model?.peakVsSteady ?? null);
      targets[`${k}.peak_vs_steady_within_25pct_of_model`] = target('<=', 0.25, off(ratios[`${k}.peak_vs_steady_vs_model`] ?? null));
    }
  }
  if (json) console.log(jsonLine({ benchmark: 'fleet-real', machine: machine(), config: { ...config, peakWindowS: windowS, modelSeeds: MODEL_SEEDS }, results, ratios, targets }));
}

async function main(): Promise<void> {
  const a = benchArgs(
    process.argv.slice(2),
    USAGE,
    {
      agents: { default: 50, min: 2, max: 500 },
      short: { default: 60, min: 0 },
      long: { default: 600, min: 0 },
      settle: { default: 90, min: 1 },
      cap: { default: 180, min: 10 },
      seed: { default: 1, min: 0 },
    },
    { lists: { kinds: { choices: OUTAGE_KINDS } } },
  );
  const kinds = OUTAGE_KINDS.filter((k) => a.kinds.includes(k));
  const started = performance.now();
  const root = mkdtempSync(join(tmpdir(), 'fleet-real-'));
  const uuidOf = (i: number): string => `fleet-real-${String(i).padStart(4, '0')}`;
  const world = await startFleetWorld(a.agents, uuidOf);
  let agents: FleetAgent[] = [];
  const measures: Measure[] = [];
  try {
    let round = 0;
    for (const kind of kinds) {
      for (const outageS of [a.short, a.long].filter((s) => s > 0)) {
        if (round > 0) await Promise.all(agents.map((x) => x.stop()));
        agents = await startFleet(world, a.agents, root, uuidOf, a.seed + round++);
        measures.push(...(await runOutage(world, agents, kind, outageS, { settleS: a.settle, capS: a.cap, seed: a.seed })));
      }
    }
    const dead = agents.filter((x) => !x.alive());
    if (dead.length > 0) throw new Error(`${dead.length} agents exited during the run; the first one's stderr:\n${dead[0]?.stderr()}`);
  } finally {
    await Promise.all(agents.map((x) => x.stop()));
    await world.close();
    rmSync(root, { recursive: true, force: true });
  }
  report(measures, a.agents, (performance.now() - started) / 1000, a.json, { agents: a.agents, short: a.short, long: a.long, settle: a.settle, cap: a.cap, seed: a.seed, kinds });
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exit(1);
});
