import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { startCloudStub, type CloudStub } from './cloud-stub.js';
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
 * of local producers, delivery keeps at least half its rate alone. For each uplink (HTTP to a stub
 * of the device API's messages route in this process, bench/cloud-stub.ts; MQTT to a private
 * Mosquitto with a counting subscriber on
 * `iot/{uuid}/telemetry/#`), each round, on a fresh data dir:
 *  1. fill: the built agent in local mode (no uplink: nothing drains) takes the flood until B
 *     messages are acknowledged: the flood's intake alone;
 *  2. the agent restarts on the same data dir with the uplink configured, and the backlog drains;
 *     from the first delivered message, twice in turn:
 *     solo: the delivery rate over S seconds (after 0.3 s), cut short once 30 % of the queue is gone;
 *     flood: the same flood starts while the drain goes on; from 1 s after its first acknowledgement,
 *     the delivery rate and the flood's intake rate over S seconds (cut short when the queue falls
 *     under B / 5: a drain with no backlog left only follows the intake); the flood stops.
 *     Alternating the windows makes a change of load on the machine weigh on both sides.
 * The flood (bench/fairness-flood.ts, a child process): M mqtt.js clients on the local broker, QoS 1,
 * 100 unacknowledged each, and H `POST /v2/telemetry` of 100 items in flight; it counts only what was
 * acknowledged. Delivered: distinct telemetry ids the stub was sent, or messages the subscriber
 * received. Fairness per round: mean flood rate / mean solo rate of the same round; the target's value is the
 * median of the rounds' ratios (>= 0.5 for each uplink). After each round: every message acknowledged
 * (fill + flood) is delivered or still queued (`lost` counts the shortfall). `--no-share` runs the
 * agent with settings.offline.shareLoopWithDrain false (the loop not shared: what it was before).
 */

const USAGE =
  'usage: node dist/bench/fairness.js [--backlog B] [--seconds S] [--rounds R] [--mqtt-clients M] [--http-in-flight H] [--no-share] [--quick] [--json]\n' +
  '  --backlog: messages queued before each drain; --seconds: length of each measured window\n' +
  '  --no-share: settings.offline.shareLoopWithDrain false (the baseline); --quick: 60,000 messages, 2 s windows';
const UUID = 'bench-fairness-0001';
const DEVICE_KEY = 'bench-fairness-device-key';
const WINDOW = 100;
const HTTP_BATCH = 100;
/** Solo and flood windows per round, alternating. */
const PAIRS = 2;
const SOLO_WARM_MS = 300;
/** From the flood's first acknowledgement to the start of its window. */
const FLOOD_WARM_MS = 1_000;
const MIN_WINDOW_MS = 300;
/** The agent's settings.offline.maxQueueSize here: room for a backlog that lasts through the windows at tens of thousands a second. */
const MAX_QUEUE = 2_000_000;
/** How often a window looks at the queue's depth. */
const DEPTH_POLL_MS = 200;
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
  /** Each window's delivered rate, in order. */
  windows?: { solo: number[]; flood: number[] };
}

interface Window {
  rate: number;
  intake: number | null;
  cpu: number | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `delivered` passes `from` (the drain has begun). */
async function firstDelivery(far: Far, from: number): Promise<void> {
  const end = performance.now() + PHASE_DEADLINE_MS;
  while (far.delivered() <= from) {
    if (performance.now() > end) throw new Error(`nothing delivered within ${PHASE_DEADLINE_MS} ms`);
    await sleep(POLL_MS);
  }
}

/**
 * Delivered rate (and the flood's intake rate) over `seconds` after `warmMs`; ended early once the
 * telemetry queue is below `minDepth` (a drain that ran out of backlog would only follow the intake).
 * A window cut shorter than MIN_WINDOW_MS is unmeasured: the backlog was too small for the rate.
 */
async function measure(far: Far, agent: BenchAgent, o: { warmMs: number; minDepth: number; seconds: number; flood?: Flood }): Promise<Window> {
  await sleep(o.warmMs);
  const t0 = performance.now();
  const d0 = far.delivered();
  const i0 = o.flood?.acked() ?? 0;
  const c0 = procCpuMs(agent.pid);
  let depthAt = t0;
  while (performance.now() - t0 < o.seconds * 1000) {
    await sleep(POLL_MS);
    if (performance.now() - depthAt < DEPTH_POLL_MS) continue;
    depthAt = performance.now();
    if ((await agent.queue()).depth < o.minDepth) break;
  }
  const ms = performance.now() - t0;
  const c1 = procCpuMs(agent.pid);
  if (ms < MIN_WINDOW_MS) throw new Error(`the backlog ran low after ${Math.round(ms)} ms of a window: raise --backlog`);
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

/** One solo window, then one flood window; `into.acked` counts what the flood had acknowledged (also when the window failed). */
async function pair(far: Far, agent: BenchAgent, a: Args, into: { solos: Window[]; floods: Window[]; acked: number }, log: (l: string) => void): Promise<void> {
  // A solo window takes at most 30 % of what is queued; a flood window stops at a fifth of the backlog.
  const depth = (await agent.queue()).depth;
  const solo = await measure(far, agent, { warmMs: SOLO_WARM_MS, minDepth: depth * 0.7, seconds: a.seconds });
  log(`  solo: ${cell(solo.rate)} msg/s delivered, agent CPU ${cell(solo.cpu)} %`);
  const flood = startFlood(floodPlan(agent, a));
  let under: Window;
  try {
    await deadline(flood.started, PHASE_DEADLINE_MS, 'the flood start');
    under = await measure(far, agent, { warmMs: FLOOD_WARM_MS, minDepth: a.backlog / 5, seconds: a.seconds, flood });
  } finally {
    const counts = await flood.stop();
    into.acked += counts.mqtt + counts.http;
  }
  log(`  flood: ${cell(under.rate)} msg/s delivered while ${cell(under.intake)} msg/s came in, agent CPU ${cell(under.cpu)} %`);
  into.solos.push(solo);
  into.floods.push(under);
}

async function round(root: string, far: Far, a: Args, log: (l: string) => void): Promise<Round> {
  const dataDir = mkdtempSync(join(root, 'agent-'));
  const base: AgentConfig = { device: { uuid: UUID, apiKey: DEVICE_KEY }, settings: { offline: { shareLoopWithDrain: a.share, maxQueueSize: MAX_QUEUE, maxQueueBytes: 1024 * 1_048_576 } } };
  try {
    const filled = await fill(root, dataDir, base, a);
    log(`  fill: ${cell(filled.acked)} messages at ${cell(filled.rate)} msg/s (flood alone, nothing draining)`);
    const d0 = far.delivered();
    const agent = await startAgent(root, { dataDir, keep: true, config: { ...base, ...far.config, features: { metrics: false, localBroker: true, jobs: false, shadow: false } } });
    try {
      await firstDelivery(far, d0);
      // Solo and flood windows alternate (PAIRS of each), so that a change of load on the machine
      // during the round weighs on both sides; each flood refills what the solo window before drained.
      const w = { solos: [] as Window[], floods: [] as Window[], acked: 0 };
      for (let k = 0; k < PAIRS; k++) {
        try {
          await pair(far, agent, a, w, log);
        } catch (err) {
          // The first pair is the round; a later one that ran out of backlog is left out, not the round.
          if (k === 0) throw err;
          log(`  pair ${k + 1} left out: ${err instanceof Error ? err.message : String(err)}`);
          break;
        }
      }
      const lost = await shortfall(far, agent, filled.acked + w.acked, d0);
      const { solos, floods } = w;
      const mean = (ws: Window[], f: (w: Window) => number | null): number | null => (ws.every((w) => f(w) !== null) ? ws.reduce((sum, w) => sum + f(w)!, 0) / ws.length : null);
      return {
        fillRate: filled.rate,
        solo: mean(solos, (w) => w.rate),
        flood: mean(floods, (w) => w.rate),
        floodIntake: mean(floods, (w) => w.intake),
        soloCpu: mean(solos, (w) => w.cpu),
        floodCpu: mean(floods, (w) => w.cpu),
        lost,
        windows: { solo: solos.map((w) => Math.round(w.rate)), flood: floods.map((w) => Math.round(w.rate)) },
      };
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

async function httpFar(): Promise<{ far: Far; cloud: CloudStub }> {
  const cloud = await startCloudStub();
  return { far: { config: { cloud: { apiUrl: cloud.url } }, delivered: () => cloud.delivered() }, cloud };
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
      backlog: { default: quick ? 60_000 : 300_000, min: 1_000, max: MAX_QUEUE / 2 },
      seconds: { default: quick ? 2 : 3, min: 1, max: 120 },
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
    log(`fairness benchmark in ${root}; loop share ${a.share ? 'on' : 'OFF (--no-share)'}; cloud stub ${http.cloud.url}, Mosquitto ${mqtt.broker.url}`);
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
