import { fork, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LABELS } from '../src/workloads/types.js';
import { startPrivateEngine, type BenchEngine } from './docker-engine.js';
import type { AgentPlan, AgentResult, FromAgent } from './logs-agent.js';
import { expectedLine, printerCommand } from './logs-lines.js';
import { procCpuMs } from './proc.js';
import { benchArgs, cell, jsonLine, machine, median, round, table, target, type BenchReport } from './report.js';

/**
 * npm run bench:logs [-- --lines N --rounds R --json]
 *
 * Issue "[step 12] Logs": lines a second from one container into the outbox, and CPU per line,
 * against `docker logs -f <id> > file` in the same run. Target: at least 0.5x the baseline's rate at
 * at most 2x its CPU per line.
 *
 * A private dockerd (bench/docker-engine.ts: no system engine, nothing fetched) runs one container
 * labelled as the agent's DockerRuntime labels its own, with the json-file log driver the agent
 * configures (its size cap raised so the whole log fits one file), printing N numbered lines of
 * about 85 bytes as fast as busybox awk can, and exiting. The log is pre-generated: the container
 * has exited before either side reads, so both read the same stored log to its end.
 *   baseline  `docker logs -f <id>` (the docker CLI, DOCKER_HOST = the private engine) with stdout
 *             to a file, until it exits after the last line; its CPU is the CLI's rusage from
 *             GNU time (/usr/bin/time -f '%U %S', i.e. wait4), start-up included.
 *   ours      bench/logs-agent.ts in a child node process: fresh agent database, the outbox with the
 *             agent's defaults, DockerRuntime + LogCollector with the agent's log defaults (chunks of
 *             500 lines, 250 ms window, tail of 1000) but linesPerSecond = bytesPerSecond = 0 (no
 *             limit), timed from the collector's start until the N-th line is committed; its CPU is
 *             process.cpuUsage over that span (module loading and the database's opening excluded).
 * Both sides' output is checked afterwards: every line 1..N, in order, once, or the bench fails.
 * The engine's (dockerd's) CPU during each side is shown too, from /proc deltas: both make it read
 * and frame the same log (ours asks for timestamps, as the agent does).
 * Rounds run both sides back to back, alternating which goes first; the ratios are paired per round.
 * BENCH_LOGS_CPU_PROF=DIR writes a CPU profile of each round's agent child to DIR (node --cpu-prof).
 */

const USAGE = 'usage: node dist/bench/logs.js [--lines N] [--rounds R] [--json]';
const AGENT_ID = 'bench-logs';
const IMAGE = 'local/bench-logs:1';
const HERE = fileURLToPath(new URL('.', import.meta.url));

interface Side {
  ms: number;
  cpuMs: number;
  engineCpuMs: number;
}

type SideName = 'docker logs -f' | 'ours';

let engine: BenchEngine | undefined;
let current: ChildProcess | undefined;

/** The printer container, run to completion; returns its id. */
async function printLog(e: BenchEngine, lines: number): Promise<string> {
  await e.buildImage(IMAGE, ['sh', 'awk']);
  const maxSize = `${Math.ceil((lines * 300) / 2 ** 20) + 16}m`;
  const c = await e.docker.createContainer({
    Image: IMAGE,
    Cmd: printerCommand(lines),
    Labels: { [LABELS.managed]: 'true', [LABELS.agent]: AGENT_ID, [LABELS.app]: 'bench', [LABELS.service]: 'printer', [LABELS.configHash]: 'bench' },
    HostConfig: { NetworkMode: 'none', LogConfig: { Type: 'json-file', Config: { 'max-size': maxSize, 'max-file': '3' } } },
  });
  await c.start();
  const { StatusCode } = (await c.wait()) as { StatusCode: number };
  if (StatusCode !== 0) throw new Error(`the printer container exited with ${StatusCode}`);
  return c.id;
}

async function baseline(e: BenchEngine, id: string, dir: string, lines: number): Promise<Side> {
  const out = join(dir, 'docker-logs.out');
  const timeFile = join(dir, 'docker-logs.time');
  const fd = openSync(out, 'w');
  const e0 = procCpuMs(e.pid);
  const t0 = performance.now();
  const child = spawn('/usr/bin/time', ['-f', '%U %S', '-o', timeFile, 'docker', 'logs', '-f', id], { stdio: ['ignore', fd, 'inherit'], env: { ...process.env, DOCKER_HOST: e.host } });
  closeSync(fd);
  current = child;
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (c) => resolve(c));
  });
  const ms = performance.now() - t0;
  const e1 = procCpuMs(e.pid);
  current = undefined;
  if (code !== 0) throw new Error(`docker logs -f exited with ${code}`);
  const [user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()?.split(' ').map(Number) ?? [];
  if (user === undefined || sys === undefined || !Number.isFinite(user + sys)) throw new Error(`cannot read GNU time's output: ${readFileSync(timeFile, 'utf8')}`);
  checkFile(out, lines);
  rmSync(out, { force: true });
  return { ms, cpuMs: (user + sys) * 1000, engineCpuMs: (e1 ?? NaN) - (e0 ?? NaN) };
}

/** The baseline's file: exactly lines 1..N, in order. */
function checkFile(path: string, lines: number): void {
  const text = readFileSync(path, 'utf8');
  const got = text.split('\n');
  if (got.pop() !== '') throw new Error('docker logs: the file does not end with a newline');
  if (got.length !== lines) throw new Error(`docker logs: ${got.length} lines in the file, expected ${lines}`);
  got.forEach((l, i) => {
    if (l !== expectedLine(i + 1)) throw new Error(`docker logs: line ${i + 1} is ${JSON.stringify(l.slice(0, 100))}`);
  });
}

async function ours(e: BenchEngine, dir: string, lines: number, r: number): Promise<Side & { result: AgentResult }> {
  const plan: AgentPlan = { ...overrides(), host: e.host, agentId: AGENT_ID, dbPath: join(dir, `agent-${r}.db`), lines };
  // BENCH_LOGS_CPU_PROF=DIR: the child writes a V8 CPU profile there (node --cpu-prof), to see where its time goes.
  const prof = process.env.BENCH_LOGS_CPU_PROF;
  const execArgv = prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [];
  const child = fork(join(HERE, 'logs-agent.js'), [JSON.stringify(plan)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
  current = child;
  let e0: number | null = null;
  let e1: number | null = null;
  try {
    const result = await new Promise<AgentResult>((resolve, reject) => {
      child.on('message', (m: FromAgent) => {
        if (m.kind === 'started') e0 = procCpuMs(e.pid);
        else if (m.kind === 'committed') e1 = procCpuMs(e.pid);
        else resolve(m.result);
      });
      child.once('exit', (code) => reject(new Error(`the agent's child exited (${code}) before it reported`)));
    });
    if (result.errors.length > 0) throw new Error(`ours lost or disordered lines:\n  ${result.errors.join('\n  ')}`);
    return { ms: result.ms, cpuMs: result.cpuMs, engineCpuMs: (e1 ?? NaN) - (e0 ?? NaN), result };
  } finally {
    if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
    current = undefined;
    for (const suffix of ['', '-wal', '-shm']) rmSync(`${plan.dbPath}${suffix}`, { force: true });
  }
}

/**
 * BENCH_LOGS_OVERRIDES='{"logs": {"tailLines": 0}, "offline": {"compressAboveBytes": 1e9}}': the
 * agent's side with settings other than its defaults, to see what a part costs. Diagnostics only:
 * such a run is not the benchmark (the JSON line's config says so).
 */
function overrides(): Pick<AgentPlan, 'overrides'> {
  const raw = process.env.BENCH_LOGS_OVERRIDES;
  return raw ? { overrides: JSON.parse(raw) as AgentPlan['overrides'] } : {};
}

interface Round {
  first: SideName;
  base: Side;
  ours: Side & { result: AgentResult };
}

async function main(): Promise<void> {
  const a = benchArgs(process.argv.slice(2), USAGE, { lines: { default: 400_000, min: 1_000 }, rounds: { default: 3, min: 1 } });
  const log = (line: string): void => void (a.json ? process.stderr : process.stdout).write(`${line}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'iotistic-bench-logs-'));
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping the private engine ...`);
    if (current?.pid && current.exitCode === null) current.kill('SIGKILL');
    void cleanup(dir).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (process.env.BENCH_LOGS_OVERRIDES) log(`NOT the agent's defaults (diagnostics): ${process.env.BENCH_LOGS_OVERRIDES}`);
    log('starting a private dockerd ...');
    const e = (engine = await startPrivateEngine());
    const t0 = performance.now();
    const id = await printLog(e, a.lines);
    const info = await e.docker.getContainer(id).inspect();
    const logBytes = statSync(info.LogPath).size;
    log(`pre-generated: ${cell(a.lines)} lines printed by the container in ${((performance.now() - t0) / 1000).toFixed(1)} s; json-file log ${(logBytes / 2 ** 20).toFixed(0)} MiB (both sides read this stored log; the container has exited)`);
    const rounds: Round[] = [];
    for (let r = 0; r < a.rounds; r++) {
      const first: SideName = r % 2 === 0 ? 'docker logs -f' : 'ours';
      let base: Side | undefined;
      let mine: Round['ours'] | undefined;
      for (const side of first === 'ours' ? ['ours', 'base'] : ['base', 'ours']) {
        if (side === 'base') base = await baseline(e, id, dir, a.lines);
        else mine = await ours(e, dir, a.lines, r);
      }
      const round = { first, base: base as Side, ours: mine as Round['ours'] };
      rounds.push(round);
      log(`round ${r + 1} (${first} first): docker logs -f ${cell(rate(round.base, a.lines))} lines/s, ours ${cell(rate(round.ours, a.lines))} lines/s (${round.ours.result.chunks} chunks of up to ${round.ours.result.maxChunkLines} lines, ${(round.ours.result.storedBytes / 2 ** 20).toFixed(1)} MiB stored, all ${cell(a.lines)} lines checked)`);
      log(`  ours' CPU by thread (ms): ${Object.entries(round.ours.result.threads).map(([t, ms]) => `${t} ${cell(ms)}`).join(', ')}`);
    }
    report(a, rounds, logBytes, log);
  } finally {
    await cleanup(dir);
  }
}

let cleaning: Promise<void> | undefined;

/** Stops the private engine and removes the temp dir, once: a signal and the main path share it. */
function cleanup(dir: string): Promise<void> {
  cleaning ??= (async () => {
    try {
      await engine?.stop();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  })();
  return cleaning;
}

const rate = (s: Side, n: number): number => n / (s.ms / 1000);
const perLineUs = (ms: number, n: number): number => (ms * 1000) / n;
const fmt = (xs: number[], digits = 0): string => `${cell(median(xs), digits)} (${cell(Math.min(...xs), digits)}-${cell(Math.max(...xs), digits)})`;

function roundRows(rounds: Round[], n: number): string[][] {
  const rows: string[][] = [];
  rounds.forEach((r, i) => {
    for (const [name, s] of [['docker logs -f', r.base], ['ours', r.ours]] as const) {
      rows.push([`${i + 1}${r.first === name ? ' (first)' : ''}`, name, cell(rate(s, n)), cell(s.ms / 1000, 2), cell(perLineUs(s.cpuMs, n), 2), cell(perLineUs(s.engineCpuMs, n), 2)]);
    }
  });
  return rows;
}

function report(a: { lines: number; rounds: number; json: boolean }, rounds: Round[], logBytes: number, log: (line: string) => void): void {
  const n = a.lines;
  const col = (pick: (r: Round) => number): number[] => rounds.map(pick);
  const rateRatios = col((r) => rate(r.ours, n) / rate(r.base, n));
  const cpuRatios = col((r) => r.ours.cpuMs / r.base.cpuMs);
  log('');
  log(table(['round', 'side', 'lines/s', 'wall s', 'CPU µs/line', 'engine CPU µs/line'], roundRows(rounds, n)));
  const rows = [
    ['docker logs -f: rate', fmt(col((r) => rate(r.base, n))), 'lines/s', `median (range) of ${a.rounds}`],
    ['ours: rate', fmt(col((r) => rate(r.ours, n))), 'lines/s', 'into the outbox, committed'],
    ['docker logs -f: CPU per line', fmt(col((r) => perLineUs(r.base.cpuMs, n)), 2), 'µs', 'the docker CLI (GNU time)'],
    ['ours: CPU per line', fmt(col((r) => perLineUs(r.ours.cpuMs, n)), 2), 'µs', 'the agent child (process.cpuUsage)'],
    ['engine CPU per line, during docker logs -f', fmt(col((r) => perLineUs(r.base.engineCpuMs, n)), 2), 'µs', 'dockerd, not in the target'],
    ['engine CPU per line, during ours', fmt(col((r) => perLineUs(r.ours.engineCpuMs, n)), 2), 'µs', 'dockerd, not in the target'],
    ['rate, ours / docker logs -f', fmt(rateRatios, 3), '', 'per round, paired'],
    ['CPU per line, ours / docker logs -f', fmt(cpuRatios, 3), '', 'per round, paired'],
  ];
  log('');
  log(table(['case', 'value', 'unit', 'notes'], rows));
  const targets = {
    rate_vs_docker_logs: target('>=', 0.5, median(rateRatios)),
    cpu_per_line_vs_docker_logs: target('<=', 2, median(cpuRatios)),
  };
  log('');
  log(table(['target', 'want', 'value', 'met'], Object.entries(targets).map(([k, t]) => [k, t.want, String(t.value), t.met ? 'yes' : 'NO'])));
  if (!a.json) return;
  const med = (pick: (r: Round) => number): number | null => {
    const m = median(col(pick));
    return m === null ? null : round(m);
  };
  const out: BenchReport = {
    benchmark: 'logs',
    machine: machine(),
    config: { lines: n, rounds: a.rounds, lineBytes: expectedLine(n).length + 1, logBytes, pregenerated: true, ...overrides() },
    results: [
      { name: 'docker_logs_rate', value: med((r) => rate(r.base, n)), unit: 'lines/s' },
      { name: 'ours_rate', value: med((r) => rate(r.ours, n)), unit: 'lines/s' },
      { name: 'docker_logs_cpu_per_line', value: med((r) => perLineUs(r.base.cpuMs, n)), unit: 'µs' },
      { name: 'ours_cpu_per_line', value: med((r) => perLineUs(r.ours.cpuMs, n)), unit: 'µs' },
      { name: 'engine_cpu_per_line_docker_logs', value: med((r) => perLineUs(r.base.engineCpuMs, n)), unit: 'µs' },
      { name: 'engine_cpu_per_line_ours', value: med((r) => perLineUs(r.ours.engineCpuMs, n)), unit: 'µs' },
    ],
    ratios: { rate_vs_docker_logs: targets.rate_vs_docker_logs.value, cpu_per_line_vs_docker_logs: targets.cpu_per_line_vs_docker_logs.value },
    targets,
  };
  console.log(jsonLine(out));
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
