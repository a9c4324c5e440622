import { readdirSync, readFileSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { defaultConfig } from '../src/config/schema.js';
import { MIGRATIONS } from '../src/database-schema.js';
import { LogCollector } from '../src/logs/collector.js';
import { LogStore } from '../src/logs/log-store.js';
import { chunkOf, LOGS_CHANNEL } from '../src/logs/types.js';
import { Outbox } from '../src/outbox/outbox.js';
import { outboxSettings } from '../src/outbox/policy.js';
import { Store } from '../src/store/store.js';
import { systemClock } from '../src/util/clock.js';
import { IdGenerator } from '../src/util/ids.js';
import { createLogger } from '../src/util/logger.js';
import { systemRandom } from '../src/util/random.js';
import { DockerRuntime } from '../src/workloads/runtimes/docker.js';
import { expectedLine } from './logs-lines.js';

/**
 * The agent's side of `bench:logs` (bench/logs.ts), in a child process so that its CPU is its own:
 * a fresh agent database, the outbox with the agent's default settings, the DockerRuntime pointed
 * at the private engine and the LogCollector with the agent's log defaults but no rate limits.
 * Timed from the collector's start until the last of the container's N lines is committed to the
 * outbox (the collector's `lines` event fires after each chunk's commit); CPU is process.cpuUsage
 * over the same span (every thread: SQLite's checkpointer too). Afterwards, untimed, the `logs`
 * channel is read back and every line 1..N must be there, in order, once.
 */

export interface AgentPlan {
  /** Diagnostics only (BENCH_LOGS_OVERRIDES): settings changed from the agent's defaults, to see what a part costs. */
  overrides?: { logs?: Record<string, unknown>; offline?: Record<string, unknown> };
  host: string;
  agentId: string;
  dbPath: string;
  lines: number;
}

export interface AgentResult {
  ms: number;
  cpuMs: number;
  committed: number;
  chunks: number;
  /** Most lines in one chunk (more than chunkLines when lines came in while a commit was in flight). */
  maxChunkLines: number;
  storedBytes: number;
  /** CPU ms over the timed span main thread and other threads (SQLite's checkpointer, libuv's pool, V8's GC helpers). */
  threads: Record<string, number>;
  /** Empty when every line arrived in order, once; else what was wrong. */
  errors: string[];
}

export type FromAgent = { kind: 'started' } | { kind: 'committed' } | { kind: 'done'; result: AgentResult };

const silent = createLogger({ level: 'silent', format: 'json', destination: new PassThrough() });

/** CPU ms so far of each thread of this process, by thread id, from /proc (empty where there is none). */
function threadCpu(): Map<string, { name: string; ms: number }> {
  const out = new Map<string, { name: string; ms: number }>();
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      // Node 20 names every thread "node": the main thread is told by its id (the pid).
      const name = Number(tid) === process.pid ? 'main thread' : 'other threads';
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, { name, ms: ((Number(f[11]) + Number(f[12])) * 1000) / 100 });
    }
  } catch {
    // not Linux
  }
  return out;
}

/** Per thread name, the CPU ms between two readings. */
function threadDelta(a: Map<string, { name: string; ms: number }>, b: Map<string, { name: string; ms: number }>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [tid, t] of b) out[t.name] = (out[t.name] ?? 0) + t.ms - (a.get(tid)?.ms ?? 0);
  return out;
}

function send(m: FromAgent): void {
  process.send?.(m);
}

async function run(plan: AgentPlan): Promise<void> {
  const base = defaultConfig();
  const defaults = { ...base, logs: { ...base.logs, ...plan.overrides?.logs }, settings: { ...base.settings, offline: { ...base.settings.offline, ...plan.overrides?.offline } } };
  const store = Store.open({ path: plan.dbPath, logger: silent, clock: systemClock, migrations: MIGRATIONS, synchronous: defaults.store.synchronous, checkpoint: defaults.store.checkpoint });
  const outbox = new Outbox({ store, clock: systemClock, ids: new IdGenerator(), logger: silent, ...outboxSettings(defaults.settings.offline) });
  const docker = new DockerRuntime({ host: plan.host, agentId: plan.agentId, clock: systemClock, random: systemRandom, logger: silent });
  const config = { ...defaults.logs, linesPerSecond: 0, bytesPerSecond: 0 };
  const collector = new LogCollector({ config, outbox, store: new LogStore(store.db, config.tailLines), clock: systemClock, logger: silent, docker });
  let committed = 0;
  let doneAt = 0;
  let cpuEnd: NodeJS.CpuUsage | undefined;
  let threadsEnd = new Map<string, { name: string; ms: number }>();
  const all = new Promise<void>((resolve) => {
    collector.events.on('lines', (lines) => {
      committed += lines.length;
      if (committed >= plan.lines && !cpuEnd) {
        cpuEnd = process.cpuUsage();
        threadsEnd = threadCpu();
        doneAt = performance.now();
        resolve();
      }
    });
  });
  const stop = new AbortController();
  send({ kind: 'started' });
  const threads0 = threadCpu();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const running = collector.run(stop.signal);
  await all;
  send({ kind: 'committed' });
  // A little longer: a line past N (a duplicate) would show in the check.
  await new Promise((r) => setTimeout(r, 300));
  stop.abort();
  await running;
  await collector.close();
  const end = cpuEnd as NodeJS.CpuUsage;
  const cpuMs = (end.user + end.system - cpu0.user - cpu0.system) / 1000;
  const check = verify(outbox, plan.lines);
  await outbox.close();
  store.close();
  send({ kind: 'done', result: { ms: doneAt - t0, cpuMs, committed, threads: threadDelta(threads0, threadsEnd), ...check } });
}

/** Reads the `logs` channel back: sequence numbers 0..N-1 and line texts 1..N, in order, once. */
function verify(outbox: Outbox, n: number): Pick<AgentResult, 'chunks' | 'maxChunkLines' | 'storedBytes' | 'errors'> {
  const errors: string[] = [];
  const messages = outbox.readChannel(LOGS_CHANNEL, Number.MAX_SAFE_INTEGER);
  let next = 0;
  let storedBytes = 0;
  let maxChunkLines = 0;
  for (const m of messages) {
    storedBytes += m.storedBytes;
    const chunk = chunkOf(m.payload);
    if (!chunk) {
      errors.push(`message ${m.id} is not a log chunk`);
      continue;
    }
    maxChunkLines = Math.max(maxChunkLines, chunk.lines.length);
    for (const l of chunk.lines) {
      if (errors.length >= 10) break;
      if (l[0] !== next) errors.push(`line ${next + 1}: sequence number ${l[0]}, expected ${next}`);
      else if (l[2] !== 'stdout' || l[3] !== expectedLine(next + 1)) errors.push(`line ${next + 1}: ${l[2]} ${JSON.stringify(l[3]).slice(0, 100)}`);
      next = l[0] + 1;
    }
  }
  if (next !== n && errors.length < 10) errors.push(`the outbox holds lines up to ${next}, expected ${n}`);
  return { chunks: messages.length, maxChunkLines, storedBytes, errors };
}

const plan = JSON.parse(process.argv[2] ?? '{}') as AgentPlan;
run(plan).then(
  () => process.disconnect?.(),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
