import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { startDevCloud, type DevCloud } from '../devcloud/server.js';
import { deadline } from './drain.js';
import { startFlood, type Flood, type FloodPlan } from './fairness-flood.js';
import { startAgent, type BenchAgent } from './ingest-agent.js';
import { startBroker, type BenchBroker } from './mosquitto.js';
import { procCpuMs } from './proc.js';
import { benchArgs, cell, jsonLine, machine, median, ratio, table, target, type BenchReport } from './report.js';

/**
 * npm run bench:fairness [-- --backlog B --seconds S --rounds R --mqtt-clients M --http-in-flight H --no-share --quick --json]
 *
 * Issue 22's fairness target: ingest and drain share the event loop and the database; under a flood
 * of local producers, delivery keeps at least half its rate alone. For each uplink (HTTP to the
 * devcloud's device API, in this process; MQTT to a private Mosquitto with a counting subscriber on
 * `iot/{uuid}/telemetry/#`), each round, on a fresh data dir:
 *  1. fill: the built agent in local mode (no uplink: nothing drains) takes the flood until B
 *     messages are acknowledged: the flood's intake alone;
 *  2. the agent restarts on the same data dir with the uplink configured, and the backlog drains.
 *     Solo: the delivery rate over S seconds (after 2 s of warm-up from the first delivered message),
 *     cut short before the backlog could run out;
 *  3. flood: the same flood starts again while the drain goes on; once it is acknowledged, 2 s of
 *     warm-up, then the delivery rate and the flood's intake rate over S seconds.
 * The flood (bench/fairness-flood.ts, a child process): M mqtt.js clients on the local broker, QoS 1,
 * 100 unacknowledged each, and H `POST /v2/telemetry` of 100 items in flight; it counts only what was
 * acknowledged. Delivered: telemetry messages the devcloud stored (by its counters) or the subscriber
 * received. Fairness per round: flood rate / solo rate of the same round; the target's value is the
 * median of the rounds' ratios (>= 0.5 for each uplink). After each round: every message acknowledged
 * (fill + flood) is delivered or still queued (`lost` counts the shortfall). `--no-share` runs the
 * agent with settings.offline.shareLoopWithDrain false (the loop not shared: what it was before).
 */

const USAGE =
  'usage: node dist/bench/fairness.js [--backlog B] [--seconds S] [--rounds R] [--mqtt-clients M] [--http-in-flight H] [--no-share] [--quick] [--json]\n' +
  '  --backlog: messages queued before each drain; --seconds: length of each measured window\n' +
  '  --no-share: settings.offline.shareLoopWithDrain false (the baseline); --quick: 15,000 messages, 3 s windows';
const UUID = 'bench-fairness-0001';
const DEVICE_KEY = 'bench-fairness-device-key';
const WINDOW = 100;
const HTTP_BATCH = 100;
const WARM_MS = 2_000;
const POLL_MS = 50;
/** Longest wait for the first delivery after a start, or for a fill. */
const PHASE_DEADLINE_MS = 300_000;

type Uplink = 'http' | 'mqtt';
const UPLINKS: readonly Uplink[] = ['http', 'mqtt'];

interface Args {
  backlog: number;
  seconds: number;
  rounds: number;
  mqttClients: number;
  httpInFlight: number;
  share: boolean;
  quick: boolean;
  json: boolean;
}

/** One uplink's far end: what the agent is pointed at, and how many telemetry messages reached it. */
interface Far {
  config: Record<string, Record<string, unknown>>;
  delivered(): number;
}

interface Round {
  fillRate: number | null;
  solo: number | null;
  flood: number | null;
  floodIntake: number | null;
  /** Agent CPU (% of one core) in each window. */
  soloCpu: number | null;
  floodCpu: number | null;
  lost: number;
}

interface Window {
  rate: number;
  intake: number | null;
  cpu: number | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Delivered rate (and the flood's intake rate) over `seconds`, from 1 s after `delivered` first passes
 * `from`; ended early once `stopAt` messages are delivered (the backlog must not run dry inside it).
 */
async function measure(far: Far, agent: BenchAgent, o: { from: number; stopAt: number; seconds: number; flood?: Flood }): Promise<Window> {
  const end = performance.now() + PHASE_DEADLINE_MS;
  while (far.delivered() <= o.from) {
    if (performance.now() > end) throw new Error(`nothing delivered within ${PHASE_DEADLINE_MS} ms`);
    await sleep(POLL_MS);
  }
  await sleep(WARM_MS);
  const t0 = performance.now();
  const d0 = far.delivered();
  const i0 = o.flood?.acked() ?? 0;
  const c0 = procCpuMs(agent.pid);
  while (performance.now() - t0 < o.seconds * 1000 && far.delivered() < o.stopAt) await sleep(POLL_MS);
  const ms = performance.now() - t0;
  const c1 = procCpuMs(agent.pid);
  const rate = ((far.delivered() - d0) / ms) * 1000;
  return { rate, intake: o.flood ? ((o.flood.acked() - i0) / ms) * 1000 : null, cpu: c0 !== null && c1 !== null ? ((c1 - c0) / ms) * 100 : null };
}

function floodPlan(agent: BenchAgent, a: Args): FloodPlan {
  return { brokerPort: agent.brokerPort, apiUrl: agent.apiUrl, key: agent.key, mqttClients: a.mqttClients, window: WINDOW, httpInFlight: a.httpInFlight, httpBatch: HTTP_BATCH };
}

/** Fills a fresh data dir with at least `a.backlog` messages through the flood, in local mode; returns the intake rate. */
async function fill(root: string, dataDir: string, base: AgentConfig, a: Args): Promise<{ rate: number; acked: number }> {
  const agent = await startAgent(root, { dataDir, keep: true, config: base });
  try {
    const flood = startFlood(floodPlan(agent, a));
    await flood.started;
    const t0 = performance.now();
    const n0 = flood.acked();
    const end = t0 + PHASE_DEADLINE_MS;
    while (flood.acked() < a.backlog && performance.now() < end) await sleep(POLL_MS);
    const ms = performance.now() - t0;
    const n1 = flood.acked();
    const counts = await flood.stop();
    const acked = counts.mqtt + counts.http;
    const depth = (await agent.queue()).depth;
    if (depth !== acked) throw new Error(`${acked} acknowledged but the telemetry queue holds ${depth}`);
    return { rate: ((n1 - n0) / ms) * 1000, acked };
  } finally {
    await agent.stop();
  }
}

type AgentConfig = Record<string, Record<string, unknown>>;

async function round(root: string, far: Far, a: Args, log: (l: string) => void): Promise<Round> {
  const dataDir = mkdtempSync(join(root, 'agent-'));
  const base: AgentConfig = { device: { uuid: UUID, apiKey: DEVICE_KEY }, settings: { offline: { shareLoopWithDrain: a.share } } };
  try {
    const filled = await fill(root, dataDir, base, a);
    log(`  fill: ${cell(filled.acked)} messages at ${cell(filled.rate)} msg/s (flood alone, nothing draining)`);
    const d0 = far.delivered();
    const agent = await startAgent(root, { dataDir, keep: true, config: { ...base, ...far.config, features: { metrics: false, localBroker: true, jobs: false, shadow: false } } });
    try {
      const solo = await measure(far, agent, { from: d0, stopAt: d0 + Math.floor(filled.acked * 0.7), seconds: a.seconds });
      log(`  solo: ${cell(solo.rate)} msg/s delivered, agent CPU ${cell(solo.cpu)} %`);
      const flood = startFlood(floodPlan(agent, a));
      let floodCounts;
      let under: Window;
      try {
        await deadline(flood.started, PHASE_DEADLINE_MS, 'the flood start');
        under = await measure(far, agent, { from: far.delivered(), stopAt: Infinity, seconds: a.seconds, flood });
      } finally {
        floodCounts = await flood.stop();
      }
      log(`  flood: ${cell(under.rate)} msg/s delivered while ${cell(under.intake)} msg/s came in, agent CPU ${cell(under.cpu)} %`);
      const lost = await shortfall(far, agent, filled.acked + floodCounts.mqtt + floodCounts.http, d0);
      return { fillRate: filled.rate, solo: solo.rate, flood: under.rate, floodIntake: under.intake, soloCpu: solo.cpu, floodCpu: under.cpu, lost };
    } finally {
      await agent.stop();
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** Acknowledged messages neither delivered nor queued; the last deliveries are given 5 s to reach the counter. */
async function shortfall(far: Far, agent: BenchAgent, acked: number, d0: number): Promise<number> {
  const end = performance.now() + 5_000;
  for (;;) {
    const missing = acked - (far.delivered() - d0) - (await agent.queue()).depth;
    if (missing <= 0 || performance.now() > end) return Math.max(0, missing);
    await sleep(100);
  }
}

async function httpFar(): Promise<{ far: Far; cloud: DevCloud }> {
  const cloud = await startDevCloud();
  cloud.admin.createDevice({ uuid: UUID, apiKey: DEVICE_KEY });
  const far: Far = { config: { cloud: { apiUrl: cloud.url } }, delivered: () => cloud.admin.received(UUID).messages.byChannel.telemetry ?? 0 };
  return { far, cloud };
}

async function mqttFar(): Promise<{ far: Far; broker: BenchBroker; counter: MqttClient }> {
  const broker = await startBroker({ maxInflight: 100 });
  const counter = await connectAsync(broker.url, { protocolVersion: 5, clean: true, clientId: 'bench-fairness-counter', reconnectPeriod: 0 });
  let n = 0;
  counter.on('message', () => n++);
  await counter.subscribeAsync(`iot/${UUID}/telemetry/#`, { qos: 0 });
  return { far: { config: { mqtt: { url: broker.url } }, delivered: () => n }, broker, counter };
}

function parse(argv: string[]): Args {
  // Flags, not integer options: taken out before the shared parser sees the rest.
  const quick = argv.includes('--quick');
  const share = !argv.includes('--no-share');
  const a = benchArgs(
    argv.filter((x) => x !== '--quick' && x !== '--no-share'),
    USAGE,
    {
      backlog: { default: quick ? 15_000 : 40_000, min: 1_000, max: 90_000 },
      seconds: { default: quick ? 3 : 5, min: 1, max: 120 },
      rounds: { default: 3, min: 1, max: 50 },
      'mqtt-clients': { default: 2, min: 0, max: 30 },
      'http-in-flight': { default: 4, min: 0, max: 100 },
    },
  );
  return { backlog: a.backlog, seconds: a.seconds, rounds: a.rounds, mqttClients: a['mqtt-clients'], httpInFlight: a['http-in-flight'], share, quick, json: a.json };
}

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const log = (line: string): void => console.error(line);
  const root = mkdtempSync(join(tmpdir(), 'iotistic-bench-fairness-'));
  const http = await httpFar();
  const mqtt = await mqttFar();
  const fars: Record<Uplink, Far> = { http: http.far, mqtt: mqtt.far };
  const rounds: Record<Uplink, Round[]> = { http: [], mqtt: [] };
  const started = performance.now();
  try {
    log(`fairness benchmark in ${root}; loop share ${a.share ? 'on' : 'OFF (--no-share)'}; devcloud ${http.cloud.url}, Mosquitto ${mqtt.broker.url}`);
    for (let r = 0; r < a.rounds; r++) {
      for (const u of r % 2 === 0 ? UPLINKS : [...UPLINKS].reverse()) {
        log(`round ${r + 1}/${a.rounds}, uplink ${u}:`);
        try {
          rounds[u].push(await round(root, fars[u], a, log));
        } catch (err) {
          // A round that fails is reported as unmeasured (and so cannot meet a target), not retried.
          log(`  FAILED: ${err instanceof Error ? err.message : String(err)}`);
          rounds[u].push({ fillRate: null, solo: null, flood: null, floodIntake: null, soloCpu: null, floodCpu: null, lost: 0 });
        }
      }
    }
    report(a, rounds);
    log(`done in ${cell((performance.now() - started) / 1000, 1)} s`);
  } finally {
    await mqtt.counter.endAsync(true).catch(() => undefined);
    await mqtt.broker.dispose();
    await http.cloud.close();
    rmSync(root, { recursive: true, force: true });
  }
}

/** Median of a list with no unmeasured entry; null otherwise. */
const medianAll = (xs: (number | null)[]): number | null => (xs.length > 0 && xs.every((x) => x !== null) ? median(xs as number[]) : null);

function report(a: Args, rounds: Record<Uplink, Round[]>): void {
  const ratios = Object.fromEntries(UPLINKS.map((u) => [`fairness_${u}`, rounds[u].map((r) => ratio(r.flood, r.solo))])) as Record<string, (number | null)[]>;
  const ratioOf = (k: string) => medianAll(ratios[k] ?? []);
  const targets = Object.fromEntries(UPLINKS.map((u) => [`fairness_${u}`, target('>=', 0.5, ratioOf(`fairness_${u}`))]));
  const col = (u: Uplink, f: (r: Round) => number | null) => medianAll(rounds[u].map(f));
  const rows = UPLINKS.map((u) => [
    u,
    cell(col(u, (r) => r.solo)),
    cell(col(u, (r) => r.flood)),
    cell(ratioOf(`fairness_${u}`), 3),
    (ratios[`fairness_${u}`] ?? []).map((x) => cell(x, 3)).join(', '),
    cell(col(u, (r) => r.fillRate)),
    cell(col(u, (r) => r.floodIntake)),
    `${cell(col(u, (r) => r.soloCpu))} / ${cell(col(u, (r) => r.floodCpu))}`,
    cell(rounds[u].reduce((s, r) => s + r.lost, 0)),
  ]);
  console.log(
    [
      table(['uplink', 'drain alone msg/s', 'drain under flood msg/s', 'fairness (median)', 'per round', 'flood alone msg/s in', 'flood during drain msg/s in', 'agent CPU % alone / flood', 'lost'], rows),
      '',
      table(['target', 'want', 'value', 'met'], Object.entries(targets).map(([k, t]) => [k, t.want, cell(t.value, 3), t.met ? 'yes' : 'NO'])),
      '',
      `loop share (settings.offline.shareLoopWithDrain): ${a.share ? 'on' : 'off'}; medians of ${a.rounds} round(s)`,
    ].join('\n'),
  );
  if (!a.json) return;
  const results = UPLINKS.flatMap((u) => [
    { name: `drain_alone_${u}`, value: col(u, (r) => r.solo), unit: 'msg/s' },
    { name: `drain_under_flood_${u}`, value: col(u, (r) => r.flood), unit: 'msg/s' },
    { name: `flood_intake_alone_${u}`, value: col(u, (r) => r.fillRate), unit: 'msg/s' },
    { name: `flood_intake_during_drain_${u}`, value: col(u, (r) => r.floodIntake), unit: 'msg/s' },
    { name: `agent_cpu_alone_${u}`, value: col(u, (r) => r.soloCpu), unit: '%' },
    { name: `agent_cpu_under_flood_${u}`, value: col(u, (r) => r.floodCpu), unit: '%' },
    { name: `lost_${u}`, value: rounds[u].reduce((s, r) => s + r.lost, 0), unit: 'messages' },
  ]);
  const json: BenchReport = {
    benchmark: 'fairness',
    machine: machine(),
    config: {
      backlog: a.backlog,
      seconds: a.seconds,
      rounds: a.rounds,
      quick: a.quick,
      shareLoopWithDrain: a.share,
      flood: { mqttClients: a.mqttClients, window: WINDOW, httpInFlight: a.httpInFlight, httpBatch: HTTP_BATCH },
      perRound: rounds,
    },
    results: results.map((r) => ({ ...r, value: r.value === null ? null : Math.round(r.value) })),
    ratios: Object.fromEntries(Object.keys(ratios).map((k) => [k, ratioOf(k)])),
    targets,
  };
  console.log(jsonLine(json));
}

await main();
