import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startMosquitto, type Mosquitto } from '../devcloud/mosquitto.js';
import { startAgent, type BenchAgent } from './ingest-agent.js';
import { procCpuMs } from './proc.js';
import { httpIngest, mosquittoPub, mqttWindow, parkSubscriber, PAYLOAD_BYTES, STREAMS, type ProducerRun } from './ingest-clients.js';
import { benchArgs, cell, jsonLine, machine, median, ratio, round, table, target, type BenchReport } from './report.js';

/**
 * npm run bench:ingest [-- --messages N --single S --rounds R --quick --json]
 *
 * What it costs a local producer to hand telemetry to the agent durably (issue 22), against Mosquitto
 * in the same run. Ours: the built agent (`run`, local broker on, no cloud: everything stays queued),
 * started on a fresh data dir for every measurement and stopped after it. Baselines: two private
 * Mosquittos (devcloud/mosquitto.ts), one "durable" (persistence on, autosave_on_changes true,
 * autosave_interval 1: its most durable setting) and one with its defaults (persistence off). Topics
 * `local/telemetry/{stream}` (4 streams), payloads JSON objects of 100 bytes; Mosquitto has no
 * subscriber on them, so it PUBACKs once it has the message.
 *
 *  - window: mqtt.js, MQTT 3.1.1, QoS 1, 100 publishes unacknowledged; ours vs the Mosquittos.
 *    Target (issue 22): ours >= 10x durable Mosquitto.
 *  - one in flight: the same, publish, await the PUBACK, next (`--single` messages); target >= 1x durable.
 *  - "Durable" in the targets is "durable, stored": a fresh durable Mosquitto per run with one parked
 *    persistent QoS 1 subscriber on `local/telemetry/#`, so that it queues every message and its
 *    persistence has something to save. With no subscriber it drops the message after the PUBACK and
 *    writes nothing: that one ("durable" below, `_unstored` in the ratios) is as volatile as the
 *    default one, and shown for information. The stored one saves its whole database after every
 *    change, so a run costs O(n^2): at most `--single` messages a run.
 *  - mosquitto_pub: `mosquitto_pub -l -q 1` fed N lines on stdin, timed from its spawn to its exit
 *    (it exits once stdin ended and its last message is acknowledged); ours vs default Mosquitto,
 *    target >= 0.5x.
 *  - HTTP: `POST /v2/telemetry`, one item per POST with 100 requests in flight (keep-alive), and
 *    batches of 100 items with 10 in flight. Issue 22 wants one-per-POST >= 10x "a Mosquitto bridge with
 *    its most durable persistence": the baseline used is the durable, stored Mosquitto's window rate
 *    (the first case) of the same round.
 * After each of our runs the telemetry channel's depth (`GET /v2/queue`) must have grown by exactly
 * the acknowledged count (nothing acknowledged lost), or the run counts as unmeasured. Each round
 * runs every case, ours first in even rounds and the baselines first in odd ones; a ratio's value is
 * the median of its per-round ratios. CPU per message of the receiving process (agent or broker,
 * from /proc) is shown beside each rate: on a loaded machine it moves less than the rate does.
 */

const USAGE =
  'usage: node dist/bench/ingest.js [--messages N] [--single S] [--rounds R] [--quick] [--json]\n' +
  '  --messages: per run of the window, mosquitto_pub and HTTP cases; --single: per run of the one-in-flight case\n' +
  '  --quick: smaller defaults (2,000 and 300 messages) to check that it works';
const WINDOW = 100;
const HTTP_IN_FLIGHT = 100;
const BATCH = 100;
const BATCH_IN_FLIGHT = 10;

type Side = 'ours' | 'durable' | 'plain' | 'stored';
type CaseKey = 'window' | 'one' | 'pub' | 'http1' | 'http100';

interface Case {
  key: CaseKey;
  label: string;
  messages: number;
  sides: readonly Side[];
  /** The producer against a broker port, or (HTTP) against the agent. */
  run(to: { port: number; agent?: BenchAgent }, n: number, tag: string): Promise<ProducerRun>;
}

interface Measured {
  rate: number | null;
  /** CPU of the receiving process (agent or Mosquitto) per message, µs. */
  cpuUsPerMsg: number | null;
}

const UNMEASURED: Measured = { rate: null, cpuUsPerMsg: null };

function cases(messages: number, single: number): Case[] {
  const mqtt = (window: number) => (t: { port: number }, n: number, tag: string) => mqttWindow(t.port, n, window, `bench-ingest-${tag}`);
  const http = (batch: number, inFlight: number) => (t: { agent?: BenchAgent }, n: number) => httpIngest(t.agent!.apiUrl, t.agent!.key, n, batch, inFlight);
  return [
    { key: 'window', label: `MQTT QoS 1, window ${WINDOW}`, messages, sides: ['ours', 'durable', 'plain', 'stored'], run: mqtt(WINDOW) },
    { key: 'one', label: 'MQTT QoS 1, one in flight', messages: single, sides: ['ours', 'durable', 'stored'], run: mqtt(1) },
    { key: 'pub', label: 'mosquitto_pub -l -q 1', messages, sides: ['ours', 'plain'], run: (t, n) => mosquittoPub(t.port, n) },
    { key: 'http1', label: `HTTP, 1 per POST, ${HTTP_IN_FLIGHT} in flight`, messages, sides: ['ours'], run: http(1, HTTP_IN_FLIGHT) },
    { key: 'http100', label: `HTTP, ${BATCH} per POST, ${BATCH_IN_FLIGHT} in flight`, messages, sides: ['ours'], run: http(BATCH, BATCH_IN_FLIGHT) },
  ];
}

interface World {
  root: string;
  durable: Mosquitto;
  plain: Mosquitto;
  /** Our runs whose queue did not grow by the acknowledged count. */
  mismatches: number;
  durability: string | undefined;
  /** Most messages of a run against the "durable, stored" Mosquitto. */
  storedCap: number;
  log(line: string): void;
}

/** One run of `c` against `side`: a fresh agent for ours (its queue checked after), else the Mosquitto. */
async function runSide(w: World, c: Case, side: Side, tag: string): Promise<Measured> {
  if (side === 'stored') return runStored(w, c, tag);
  if (side !== 'ours') {
    const broker = side === 'durable' ? w.durable : w.plain;
    const cpu0 = procCpuMs(broker.pid());
    const r = await c.run({ port: broker.port }, c.messages, `${side}-${tag}`);
    return measured(r, cpu0, procCpuMs(broker.pid()));
  }
  const agent = await startAgent(w.root);
  try {
    const before = await agent.queue();
    w.durability = before.durability;
    const cpu0 = procCpuMs(agent.pid);
    const r = await c.run({ port: agent.brokerPort, agent }, c.messages, `ours-${tag}`);
    const cpu1 = procCpuMs(agent.pid);
    const after = await agent.queue();
    if (after.depth - before.depth !== r.acked) {
      w.mismatches++;
      throw new Error(`${r.acked} acknowledged but the telemetry queue grew by ${after.depth - before.depth}`);
    }
    return measured(r, cpu0, cpu1);
  } finally {
    await agent.stop();
  }
}

/** Against a fresh durable Mosquitto whose parked subscriber makes it queue (and save) every message. */
async function runStored(w: World, c: Case, tag: string): Promise<Measured> {
  const broker = await startMosquitto({ persistence: true, verbose: false, maxQueued: 1_000_000 });
  try {
    await parkSubscriber(broker.port);
    const cpu0 = procCpuMs(broker.pid());
    const r = await c.run({ port: broker.port }, Math.min(c.messages, w.storedCap), `stored-${tag}`);
    return measured(r, cpu0, procCpuMs(broker.pid()));
  } finally {
    await broker.dispose();
  }
}

function measured(r: ProducerRun, cpu0: number | null, cpu1: number | null): Measured {
  return { rate: (r.acked / r.ms) * 1000, cpuUsPerMsg: cpu0 !== null && cpu1 !== null ? ((cpu1 - cpu0) * 1000) / r.acked : null };
}

type Runs = Record<CaseKey, Partial<Record<Side, Measured[]>>>;

/** Every case, `rounds` times, the sides' order alternating round by round. */
async function measureAll(w: World, all: Case[], rounds: number): Promise<Runs> {
  const runs = Object.fromEntries(all.map((c) => [c.key, {}])) as Runs;
  for (let r = 0; r < rounds; r++) {
    for (const c of all) {
      const order = r % 2 === 0 ? c.sides : [...c.sides].reverse();
      for (const side of order) {
        w.log(`round ${r + 1}/${rounds}: ${c.label}, ${side}, ${cell(sizeOf(w, c, side))} messages ...`);
        let m = UNMEASURED;
        try {
          m = await runSide(w, c, side, `${c.key}-${r}`);
        } catch (err) {
          // A run that fails is reported as unmeasured (and so cannot meet a target), not retried.
          w.log(`  FAILED: ${err instanceof Error ? err.message : String(err)}`);
        }
        (runs[c.key][side] ??= []).push(m);
        w.log(`  ${cell(m.rate)} msg/s, ${cell(m.cpuUsPerMsg, 1)} µs CPU/msg`);
      }
    }
  }
  return runs;
}

const sizeOf = (w: Pick<World, 'storedCap'>, c: Case, side: Side): number => (side === 'stored' ? Math.min(c.messages, w.storedCap) : c.messages);

/** Untimed: the agent's code and Mosquitto's pages warm before the first measured run (the first case, each side). */
async function warmUp(w: World, first: Case): Promise<void> {
  w.log(`warm-up: 1,000 messages of "${first.label}" on each side ...`);
  for (const side of first.sides.filter((x) => x !== 'stored')) await runSide(w, { ...first, messages: Math.min(first.messages, 1000) }, side, `${first.key}-warm`);
}

const rates = (xs: Measured[] | undefined): (number | null)[] => (xs ?? []).map((x) => x.rate);
/** Median of a list with no unmeasured entry; null otherwise. */
const medianAll = (xs: (number | null)[]): number | null => (xs.length > 0 && xs.every((x) => x !== null) ? median(xs as number[]) : null);
/** Per-round quotients of two lists of rates. */
const pairs = (a: (number | null)[], b: (number | null)[]): (number | null)[] => a.map((x, i) => ratio(x, b[i] ?? null));

const SIDE_LABEL: Record<Side, string> = {
  ours: 'ours (agent)',
  durable: 'Mosquitto, durable (autosave_on_changes, interval 1), no subscriber: stores nothing',
  plain: 'Mosquitto, defaults (persistence off)',
  stored: 'Mosquitto, durable, stored (a parked subscriber: the targets\' baseline)',
};

interface Summary {
  rows: string[][];
  ratios: Record<string, (number | null)[]>;
}

function summarize(all: Case[], runs: Runs, storedCap: number): Summary {
  const rows: string[][] = [];
  for (const c of all) {
    for (const side of c.sides) {
      const xs = runs[c.key][side] ?? [];
      const measuredRates = rates(xs).filter((x): x is number => x !== null);
      const range = measuredRates.length ? `${cell(Math.min(...measuredRates))}-${cell(Math.max(...measuredRates))}` : '-';
      const cpu = medianAll(xs.map((x) => x.cpuUsPerMsg));
      rows.push([`${c.label}: ${SIDE_LABEL[side]}`, cell(sizeOf({ storedCap }, c, side)), cell(medianAll(rates(xs))), range, cell(cpu, 1)]);
    }
  }
  const r = (k: CaseKey, s: Side): (number | null)[] => rates(runs[k][s]);
  // The durable baseline is the Mosquitto that stores what it acknowledges (a persistent subscriber
  // is waiting): with nobody subscribed it drops a message after the PUBACK and its persistence
  // saves nothing, which makes it the default Mosquitto under another name ("_unstored", informational).
  const storedWindow = r('window', 'stored');
  return {
    rows,
    ratios: {
      window_vs_durable_mosquitto: pairs(r('window', 'ours'), storedWindow),
      window_vs_durable_mosquitto_unstored: pairs(r('window', 'ours'), r('window', 'durable')),
      window_vs_default_mosquitto: pairs(r('window', 'ours'), r('window', 'plain')),
      one_in_flight_vs_durable_mosquitto: pairs(r('one', 'ours'), r('one', 'stored')),
      one_in_flight_vs_durable_mosquitto_unstored: pairs(r('one', 'ours'), r('one', 'durable')),
      mosquitto_pub_vs_default_mosquitto: pairs(r('pub', 'ours'), r('pub', 'plain')),
      http_single_vs_durable_mosquitto_window: pairs(r('http1', 'ours'), storedWindow),
      http_batch_vs_durable_mosquitto_window: pairs(r('http100', 'ours'), storedWindow),
    },
  };
}

function parse(argv: string[]): { messages: number; single: number; rounds: number; json: boolean; quick: boolean } {
  // --quick is a flag, not an integer option: taken out before the shared parser sees the rest.
  const quick = argv.includes('--quick');
  const a = benchArgs(
    argv.filter((x) => x !== '--quick'),
    USAGE,
    {
      messages: { default: quick ? 2_000 : 20_000, min: 100, max: 90_000 },
      single: { default: quick ? 300 : 2_000, min: 10, max: 90_000 },
      rounds: { default: 3, min: 1, max: 50 },
    },
  );
  return { ...a, quick };
}

async function main(): Promise<void> {
  const a = parse(process.argv.slice(2));
  const log = (line: string): void => console.error(line);
  const started = performance.now();
  const root = mkdtempSync(join(tmpdir(), 'iotistic-bench-ingest-'));
  const durable = await startMosquitto({ persistence: true, verbose: false });
  const plain = await startMosquitto({ verbose: false });
  const w: World = { root, durable, plain, mismatches: 0, durability: undefined, storedCap: a.single, log };
  try {
    log(`ingest benchmark in ${root}; durable Mosquitto on ${durable.url}, default Mosquitto on ${plain.url}`);
    const all = cases(a.messages, a.single);
    await warmUp(w, all[0]!);
    const runs = await measureAll(w, all, a.rounds);
    const dbFile = join(durable.dir, 'data', 'mosquitto.db');
    // Written only when Mosquitto saves: with no subscriber nothing is queued, so maybe never.
    const durableDbBytes = existsSync(dbFile) ? statSync(dbFile).size : 0;
    const s = summarize(all, runs, a.single);
    report(a, all, runs, s, { mismatches: w.mismatches, durability: w.durability ?? null, durableDbBytes });
    log(`done in ${cell((performance.now() - started) / 1000, 1)} s`);
  } finally {
    await durable.stop();
    await durable.dispose();
    await plain.stop();
    await plain.dispose();
    rmSync(root, { recursive: true, force: true });
  }
}

interface Extra {
  mismatches: number;
  durability: string | null;
  durableDbBytes: number;
}

function report(a: ReturnType<typeof parse>, all: Case[], runs: Runs, s: Summary, extra: Extra): void {
  const ratioOf = (k: string): number | null => medianAll(s.ratios[k] ?? []);
  const wants: Record<string, number> = {
    window_vs_durable_mosquitto: 10,
    one_in_flight_vs_durable_mosquitto: 1,
    mosquitto_pub_vs_default_mosquitto: 0.5,
    http_single_vs_durable_mosquitto_window: 10,
  };
  const targets = Object.fromEntries(Object.entries(wants).map(([k, want]) => [k, target('>=', want, ratioOf(k))]));
  const ratioRows = Object.entries(s.ratios).map(([k, xs]) => [k, cell(ratioOf(k), 3), xs.map((x) => cell(x, 3)).join(', '), k in wants ? `>= ${wants[k]}` : 'informational']);
  const rateOf = (k: CaseKey, side: Side): number | null => {
    const m = medianAll(rates(runs[k][side]));
    return m === null ? null : Math.round(m);
  };
  const results = all.flatMap((c) => c.sides.map((side) => ({ name: `${c.key}_${side}`, value: rateOf(c.key, side), unit: 'msg/s' })));
  const cpuResults = all.flatMap((c) =>
    c.sides.map((side) => {
      const v = medianAll((runs[c.key][side] ?? []).map((x) => x.cpuUsPerMsg));
      return { name: `${c.key}_${side}_cpu_per_msg`, value: v === null ? null : round(v), unit: 'us' };
    }),
  );
  console.log(
    [
      table(['case: side', 'messages', 'msg/s (median)', 'range', 'receiver CPU µs/msg'], s.rows),
      '',
      table(['ratio (ours / baseline)', 'median', 'per round', 'want'], ratioRows),
      '',
      table(['target', 'want', 'value', 'met'], Object.entries(targets).map(([k, t]) => [k, t.want, cell(t.value, 3), t.met ? 'yes' : 'NO'])),
      '',
      `outbox durability: ${extra.durability ?? '-'}; runs whose queue did not grow by the acknowledged count: ${extra.mismatches}; durable Mosquitto's database file: ${cell(extra.durableDbBytes)} bytes`,
    ].join('\n'),
  );
  if (!a.json) return;
  const json: BenchReport = {
    benchmark: 'ingest',
    machine: machine(),
    config: {
      messages: a.messages,
      single: a.single,
      rounds: a.rounds,
      quick: a.quick,
      payloadBytes: PAYLOAD_BYTES,
      topics: `local/telemetry/{${STREAMS.join(',')}}; mosquitto_pub: local/telemetry/x`,
      qos: 1,
      protocolVersion: 4,
      window: WINDOW,
      http: { inFlight: HTTP_IN_FLIGHT, batch: BATCH, batchInFlight: BATCH_IN_FLIGHT },
      httpBaseline: 'the durable, stored Mosquitto QoS 1 window rate of the same round',
      durableBaseline: 'a fresh durable Mosquitto per run with a parked persistent QoS 1 subscriber (it stores what it acknowledges), at most `single` messages a run; without a subscriber (`_unstored`, informational) it stores nothing',
      outboxDurability: extra.durability,
      queueMismatches: extra.mismatches,
      durableMosquittoDbBytes: extra.durableDbBytes,
    },
    results: [...results, ...cpuResults],
    ratios: Object.fromEntries(Object.keys(s.ratios).map((k) => [k, ratioOf(k)])),
    targets,
  };
  console.log(jsonLine(json));
}

await main();
