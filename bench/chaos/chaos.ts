import { checkAgentLedgers } from './agent-ledgers.js';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { seededRandom, type Random } from '../../src/util/random.js';
import type { Uplink } from './agent.js';
import { devcloudStored } from './cloud-store.js';
import { FAULT_KINDS, Faults, type FaultKind, type FaultRecord } from './faults.js';
import { computeLedger } from './ledger.js';
import { ApiProducer, LocalBrokerProducer, type Producer } from './producers.js';
import { printSummary, summarize, type ChaosSummary } from './report.js';
import { World } from './world.js';

/**
 * `npm run chaos`: the fault campaign (issue 21, docs/RELIABILITY.md). Real processes (the built
 * agent twice, the devcloud, Mosquitto) behind fault proxies, producers at a steady rate on each
 * agent's local API and local broker, a seeded schedule of faults in which every kind runs at least
 * once, then a drain with every fault lifted and the ledger. Exits 1 when anything acknowledged was
 * lost, a message was stored twice past the cloud's dedup, or a start did not reach /v1/healthy.
 */

const USAGE = `usage: npm run chaos -- [--seed N] [--duration 4m|1h|300s] [--rate N] [--drain-timeout 90s] [--keep] [--json]
  --seed           the schedule's seed (default 1): the same seed gives the same faults in the same order
  --duration       how long to keep injecting faults (default 90s; every kind runs at least once even if it takes longer)
  --rate           messages a second of each producer (4 producers; default 20)
  --drain-timeout  after the faults, how long the agents get to empty their queues (default 60s)
  --keep           keep the run dir (logs, ledgers, data dirs' contents) even when the run passes
  --json           print the summary as one JSON line, last`;

function duration(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) {
    console.error(`${flag}: expected a duration like 90s, 4m or 1h, got "${text}"\n${USAGE}`);
    process.exit(2);
  }
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

function positiveInt(flag: string, text: string, max: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    console.error(`${flag}: expected an integer from 1 to ${max}, got "${text}"\n${USAGE}`);
    process.exit(2);
  }
  return n;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const log = (msg: string): void => void process.stderr.write(`chaos: ${msg}\n`);

/** The next fault: a shuffled bag of every kind, refilled when empty, with extra agent kills in between. */
function schedule(random: Random): () => FaultKind {
  let bag: FaultKind[] = [];
  return () => {
    if (random() < 0.25) return 'agent-sigkill';
    if (bag.length === 0) {
      bag = [...FAULT_KINDS];
      for (let i = bag.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [bag[i], bag[j]] = [bag[j] as FaultKind, bag[i] as FaultKind];
      }
    }
    return bag.pop() as FaultKind;
  };
}

interface Options {
  seed: number;
  durationMs: number;
  rate: number;
  drainMs: number;
  keep: boolean;
  json: boolean;
}

function options(): Options | undefined {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string', default: '1' },
      duration: { type: 'string', default: '90s' },
      rate: { type: 'string', default: '20' },
      'drain-timeout': { type: 'string', default: '60s' },
      keep: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    return undefined;
  }
  return {
    seed: positiveInt('--seed', String(values.seed), 2 ** 31),
    durationMs: duration('--duration', String(values.duration)),
    rate: positiveInt('--rate', String(values.rate), 1_000),
    drainMs: duration('--drain-timeout', String(values['drain-timeout'])),
    keep: values.keep === true,
    json: values.json === true,
  };
}

async function main(): Promise<number> {
  const opts = options();
  if (!opts) return 0;
  const world = await World.start({ startDeadlineMs: 30_000 });
  const onSignal = (): void => {
    void world.close().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  log(`run dir ${world.runDir}`);
  let passed = false;
  try {
    const summary = await campaign(world, opts);
    printSummary(summary);
    if (opts.json) console.log(JSON.stringify(summary));
    passed = summary.pass;
    return passed ? 0 : 1;
  } finally {
    await world.close();
    if (passed && !opts.keep) world.removeRunDir();
    else log(`logs and ledgers kept in ${world.runDir}`);
  }
}

/** Starts the agents and producers, runs the schedule, lifts every fault, drains, and accounts. */
async function campaign(world: World, opts: Options): Promise<ChaosSummary> {
  const random = seededRandom(opts.seed);
  for (const a of world.agents) {
    const s = await a.start();
    if (!s.ok) log(`agent ${a.name} did not start: ${s.why}`);
  }
  const producers = new Map<Uplink, Producer[]>();
  for (const a of world.agents) {
    producers.set(a.name as Uplink, [
      new ApiProducer(a, join(world.runDir, `ledger-${a.name}-api.log`), opts.rate),
      new LocalBrokerProducer(a, join(world.runDir, `ledger-${a.name}-local-mqtt.log`), opts.rate),
    ]);
  }
  const all = [...producers.values()].flat();
  for (const p of all) p.start();
  const acceptedBy = (agent: Uplink): number => (producers.get(agent) ?? []).reduce((n, p) => n + p.stats.accepted, 0);
  const poller = setInterval(() => void Promise.all(world.agents.map((a) => a.pollQueue())), 2_000);

  const faults = new Faults(world, random, acceptedBy);
  const next = schedule(random);
  const done: FaultRecord[] = [];
  const startedAt = Date.now();
  const missing = (): FaultKind[] => FAULT_KINDS.filter((k) => !done.some((f) => f.kind === k));
  await sleep(3_000);
  while (Date.now() - startedAt < opts.durationMs || missing().length > 0) {
    const kind = next();
    const rec = await faults.inject(kind);
    done.push(rec);
    log(`${((rec.at - startedAt) / 1000).toFixed(1)} s ${kind} on ${rec.target} (${rec.endAt - rec.at} ms)${rec.findings.length ? `: ${rec.findings.join('; ')}` : ''}`);
    await sleep(1_000 + random() * 1_000);
  }
  const faultsMs = Date.now() - startedAt;

  log('faults over: stopping producers, lifting every fault, draining');
  await Promise.all(all.map((p) => p.stop()));
  world.httpProxy.pass();
  world.mqttProxy.pass();
  for (const a of world.agents) if (!a.running()) await a.start();
  const finals = await drain(world, opts.drainMs);
  clearInterval(poller);
  const drainedAt = Date.now();
  await sleep(2_000);
  // The agents' own ledgers, and the devcloud's check of a health report made after the drain (one every 10 s).
  const ledgers = await checkAgentLedgers(world.agents, world.admin, drainedAt, 30_000);

  const http = await devcloudStored(world.admin, world.agents.flatMap((a) => a.uuids));
  const mqtt = world.cloudMqtt.stored();
  const ledger = computeLedger(
    all.map((p) => ({ agent: p.stats.agent, ingress: p.stats.ingress, ledgerPath: p.ledgerPath, refused: p.stats.refused })),
    world.agents.map((a, i) => ({
      agent: a.name, drops: a.drops(), queued: finals[i]?.depth ?? 0, parked: finals[i]?.parked ?? 0,
      queueUnknown: finals[i] === undefined, uuids: a.uuids, starts: a.starts,
    })),
    [...http.deliveries, ...mqtt.deliveries],
    http.suppressed + mqtt.suppressed,
    done,
  );
  return summarize(ledger, { seed: opts.seed, durationMs: faultsMs, rate: opts.rate, startedAt, runDir: world.runDir, missingKinds: missing(), agentLedgers: ledgers });
}

/** Waits until every agent's telemetry queue is empty (or the timeout); returns the last depths. */
async function drain(world: World, timeoutMs: number): Promise<Array<{ depth: number; parked: number } | undefined>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await Promise.all(world.agents.map((a) => a.pollQueue()));
    const empty = now.every((q) => q !== undefined && q.depth === 0);
    if (empty || Date.now() > deadline) {
      if (!empty) log(`queues not empty after ${timeoutMs} ms: ${now.map((q, i) => `${world.agents[i]?.name} ${q?.depth ?? '?'}`).join(', ')}`);
      return now;
    }
    await sleep(500);
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`chaos: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
