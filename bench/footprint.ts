import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMosquitto, type Mosquitto } from '../devcloud/mosquitto.js';
import { benchArgs, cell, jsonLine, machine, median, ratio, round, table, target, type BenchResult } from './report.js';

/**
 * npm run bench:footprint [-- --seconds N --rounds R --settle S --json] [--agent path/to/cli.js]
 *
 * The agent's idle footprint (issue 22). Each round, in turn:
 *  - floor: a plain `node -e` process idling (a timer every hour): the runtime's own RSS and CPU;
 *  - agent: the built agent started as its bin starts it (dist/bundle/cli.js, the bundle of
 *    scripts/bundle.ts, whose second line is a sh launcher that execs node with its settings: run with
 *    /bin/sh, as execve would), local mode (no cloud.apiUrl), the local API on a free port, JSON logs
 *    at info, the MQTT session up against a private Mosquitto this bench starts, and a local target
 *    with one native process service (`/bin/sleep`). Measured once the service runs, the session is
 *    connected and the start's integrity check is over, plus `--settle` seconds;
 *  - agent_plain_node: the same file under `node`, without the launcher's settings, when there is a
 *    launcher. (`--agent dist/src/cli.js` measures the unbundled agent, as the tests and the soak start it.)
 * For `--seconds`: RSS (VmRSS of /proc/<pid>/status) sampled every second (median and peak), and the
 * CPU time of the whole process (every thread: utime + stime of /proc/<pid>/stat) over the window,
 * as a percentage of one core. The service's own process is not counted: the agent alone.
 * Reported: the median over rounds, and the range.
 */

const USAGE = 'usage: node dist/bench/footprint.js [--seconds N] [--rounds R] [--settle S] [--json] [--agent path/to/cli.js]';
const DEFAULT_CLI = fileURLToPath(new URL('../bundle/cli.js', import.meta.url));
const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

interface Sample {
  rssMiB: number;
  peakMiB: number;
  hwmMiB: number;
  cpuPercent: number;
}

type Case = 'floor' | 'agent' | 'agent_plain_node';

function status(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(VmRSS|VmHWM):\s+(\d+) kB/.exec(line);
    if (m) out[m[1] as string] = Number(m[2]) / 1024;
  }
  return out;
}

/** utime + stime of every thread, in clock ticks. */
function cpuTicks(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** RSS every second and CPU over `seconds`. */
async function sample(pid: number, seconds: number): Promise<Sample> {
  const rss: number[] = [];
  const t0 = cpuTicks(pid);
  const w0 = performance.now();
  for (let i = 0; i < seconds; i++) {
    await sleep(1_000);
    rss.push(status(pid).VmRSS ?? NaN);
  }
  const cpuPercent = ((cpuTicks(pid) - t0) / TICKS / ((performance.now() - w0) / 1000)) * 100;
  return { rssMiB: median(rss) ?? NaN, peakMiB: Math.max(...rss), hwmMiB: status(pid).VmHWM ?? NaN, cpuPercent };
}

/**
 * How the bin starts: a `#!/bin/sh` first line means a launcher (it execs node with its settings,
 * same pid), so the bench runs it with sh as execve would; otherwise node runs the file.
 */
function launcher(cli: string): { line: string; viaShell: boolean } {
  const head = readFileSync(cli, 'utf8').split('\n', 2);
  const viaShell = head[0] === '#!/bin/sh';
  return { line: viaShell ? (head[1] ?? '') : (head[0] ?? ''), viaShell };
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  return exited;
}

async function floor(seconds: number, settle: number): Promise<Sample> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 3_600_000)'], { stdio: 'ignore' });
  try {
    await sleep(settle * 1000);
    return await sample(child.pid as number, seconds);
  } finally {
    await stop(child);
  }
}

interface Started {
  child: ChildProcess;
  api: string;
  key: string;
}

/** Starts the agent and resolves once its local API answers (its "agent started" line). */
async function startAgent(cli: string, viaShell: boolean, dir: string, broker: Mosquitto): Promise<Started> {
  const configFile = join(dir, 'config.json');
  writeFileSync(configFile, JSON.stringify({ api: { port: 0 }, logging: { level: 'info', format: 'json' }, mqtt: { url: broker.url } }));
  const args = [cli, 'run', '--config', configFile, '--data-dir', dir];
  const child = viaShell ? spawn('/bin/sh', args, { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (t: string) => (err += t.slice(0, 4_000)));
  const api = await new Promise<string>((resolveApi, reject) => {
    const timer = setTimeout(() => reject(new Error(`the agent did not start within 120 s: ${err}`)), 120_000);
    child.once('exit', (code) => reject(new Error(`the agent exited with ${code}: ${err}`)));
    child.stdout?.setEncoding('utf8').on('data', (t: string) => {
      out += t;
      for (;;) {
        const nl = out.indexOf('\n');
        if (nl < 0) break;
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const m = /"api":"([^"]+)"[^\n]*"msg":"agent started/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolveApi(m[1] as string);
        }
      }
    });
  });
  // Log lines keep coming (at info): read and dropped, as a service manager's journal would take them.
  child.stdout?.removeAllListeners('data').resume();
  const key = (JSON.parse(readFileSync(join(dir, 'identity.json'), 'utf8')) as { localApiKey: string }).localApiKey;
  return { child, api, key };
}

async function call(a: Started, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(`${a.api}${path}`, {
    method,
    headers: { authorization: `Bearer ${a.key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as Record<string, unknown>;
}

/** Waits until the service runs, the MQTT session is connected and the start's integrity check is over. */
async function ready(a: Started): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const state = (await call(a, 'GET', '/v2/state')) as { current?: { apps?: Record<string, { services?: Record<string, { status?: string }> }> }; database?: { integrity?: { state?: string } } };
    const conn = (await call(a, 'GET', '/v2/connection')) as { mqtt?: { connected?: boolean } | null };
    const running = state.current?.apps?.idle?.services?.napper?.status === 'running';
    const checked = !['pending', 'running'].includes(state.database?.integrity?.state ?? 'pending');
    if (running && conn.mqtt?.connected === true && checked) return;
    if (Date.now() > deadline) throw new Error(`not ready in 120 s: service running ${running}, mqtt ${JSON.stringify(conn.mqtt)}, integrity ${state.database?.integrity?.state}`);
    await sleep(250);
  }
}

async function agent(cli: string, viaShell: boolean, broker: Mosquitto, seconds: number, settle: number): Promise<Sample> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-footprint-'));
  let started: Started | undefined;
  try {
    started = await startAgent(cli, viaShell, dir, broker);
    await call(started, 'POST', '/v2/local/target-state', { version: 1, apps: { idle: { services: { napper: { runtime: 'process', command: ['/bin/sleep', '86400'] } } } } });
    await ready(started);
    await sleep(settle * 1000);
    return await sample(started.child.pid as number, seconds);
  } finally {
    if (started) await stop(started.child);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const a = benchArgs(
    process.argv.slice(2),
    USAGE,
    { seconds: { default: 60, min: 1, max: 3_600 }, rounds: { default: 3, min: 1, max: 20 }, settle: { default: 5, min: 0, max: 600 } },
    { strings: { agent: { default: DEFAULT_CLI } } },
  );
  const cli = resolve(a.agent);
  const log = a.json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  const bin = launcher(cli);
  const cases: Case[] = bin.viaShell ? ['floor', 'agent', 'agent_plain_node'] : ['floor', 'agent'];
  log(`agent ${cli}, started as its bin: ${bin.line}; ${a.rounds} rounds of ${a.seconds} s idle after ${a.settle} s settling`);
  const broker = await startMosquitto({ verbose: false });
  const runs: Record<Case, Sample[]> = { floor: [], agent: [], agent_plain_node: [] };
  try {
    for (let round = 0; round < a.rounds; round++) {
      for (const c of cases) {
        const s = c === 'floor' ? await floor(a.seconds, a.settle) : await agent(cli, c === 'agent' && bin.viaShell, broker, a.seconds, a.settle);
        runs[c].push(s);
        log(`round ${round + 1} ${c}: RSS ${cell(s.rssMiB, 1)} MiB (peak ${cell(s.peakMiB, 1)}, high-water since start ${cell(s.hwmMiB, 1)}), CPU ${cell(s.cpuPercent, 3)}%`);
      }
    }
  } finally {
    await broker.dispose();
  }
  report(runs, cases, a, cli, bin.line);
}

function report(runs: Record<Case, Sample[]>, cases: Case[], a: { seconds: number; rounds: number; settle: number; json: boolean }, cli: string, binLine: string): void {
  const med = (c: Case, k: keyof Sample): number | null => median(runs[c].map((s) => s[k]));
  const range = (c: Case, k: keyof Sample, digits: number): string => {
    const xs = runs[c].map((s) => s[k]);
    return `${cell(Math.min(...xs), digits)}-${cell(Math.max(...xs), digits)}`;
  };
  const rows = cases.map((c) => [
    c,
    cell(med(c, 'rssMiB'), 1),
    range(c, 'rssMiB', 1),
    cell(med(c, 'peakMiB'), 1),
    cell(med(c, 'hwmMiB'), 1),
    cell(med(c, 'cpuPercent'), 3),
    range(c, 'cpuPercent', 3),
  ]);
  (a.json ? console.error : console.log)(table(['case', 'RSS MiB (median)', 'range', 'peak MiB', 'high-water MiB', 'CPU % of a core', 'range'], rows));
  if (!a.json) return;
  const results: BenchResult[] = [];
  for (const c of cases) {
    const r = (k: keyof Sample): number | null => {
      const v = med(c, k);
      return v === null ? null : round(v);
    };
    results.push({ name: `${c}_rss`, value: r('rssMiB'), unit: 'MiB' });
    results.push({ name: `${c}_rss_peak`, value: r('peakMiB'), unit: 'MiB' });
    results.push({ name: `${c}_cpu`, value: r('cpuPercent'), unit: '% of a core' });
  }
  const rss = med('agent', 'rssMiB');
  const cpu = med('agent', 'cpuPercent');
  console.log(
    jsonLine({
      benchmark: 'footprint',
      machine: machine(),
      config: { seconds: a.seconds, rounds: a.rounds, settle: a.settle, agent: cli, bin: binLine, workload: 'one process service (/bin/sleep)', mqtt: 'private Mosquitto', mode: 'local' },
      results,
      ratios: { rss_vs_floor: ratio(rss, med('floor', 'rssMiB')), rss_above_floor_mib: rss === null || med('floor', 'rssMiB') === null ? null : round(rss - (med('floor', 'rssMiB') as number)) },
      targets: { idle_rss_mib: target('<=', 64, rss), idle_cpu_percent: target('<=', 0.5, cpu) },
    }),
  );
}

await main();
