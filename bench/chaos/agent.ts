import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/**
 * One agent under test: the built CLI (`run`) as a child process on its own data dir, config file
 * and fixed ports (producers keep their address across restarts), under libfaketime so its wall
 * clock can be stepped (monotonic time is left alone). Output goes straight to a log file (no pipe
 * to lose on SIGKILL). Like systemd's Restart=always, an agent that exits while supervised is
 * started again; every start must reach `/v1/healthy` within the deadline or it counts as bricked.
 */

export const AGENT_CLI = fileURLToPath(new URL(import.meta.url.includes('/dist/bench/') ? '../../src/cli.js' : '../../dist/src/cli.js', import.meta.url));
export const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1';

export type Uplink = 'http' | 'mqtt';

export interface AgentSpec {
  name: Uplink;
  runDir: string;
  dataDir: string;
  apiPort: number;
  brokerPort: number;
  cloudUrl: string;
  mqttUrl?: string;
  apiKey: string;
  localKey: string;
}

export interface StartRecord {
  agent: string;
  at: number;
  ok: boolean;
  /** Spawn to `/v1/healthy` 200, or to the give-up. */
  ms: number;
  why?: string;
}

/** The outbox's drop reasons (`/v2/queue` channels.*.drops). */
export interface DropCounts {
  count: number;
  bytes: number;
  disk: number;
  ttl: number;
  parkedLimit: number;
  /** Lost with a corrupt database: the rows on the pages the db-corrupt fault overwrote, as the agent's salvage counted them. */
  corrupt: number;
}

/** As a service manager would (systemd Restart=always, RestartSec=2). */
const RESTART_DELAY_MS = 2_000;

const ZERO: DropCounts = { count: 0, bytes: 0, disk: 0, ttl: 0, parkedLimit: 0, corrupt: 0 };

export class AgentUnderTest {
  readonly configFile: string;
  readonly logFile: string;
  readonly clockFile: string;
  readonly starts: StartRecord[] = [];
  /** Every uuid the agent answered with: a changed one is an identity reset. */
  readonly uuids: string[] = [];
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private supervised = false;
  private restarting: Promise<StartRecord> | undefined;
  /** Drops seen per process start; a counter lower than the last one means it restarted from 0. */
  private dropsBase: DropCounts = { ...ZERO };
  private dropsLast: DropCounts = { ...ZERO };
  private dropsTotal: DropCounts = { ...ZERO };

  constructor(
    readonly spec: AgentSpec,
    private readonly startDeadlineMs: number,
  ) {
    this.configFile = join(spec.runDir, `agent-${spec.name}.json`);
    this.logFile = join(spec.runDir, `agent-${spec.name}.log`);
    this.clockFile = join(spec.runDir, `clock-${spec.name}`);
    writeFileSync(this.clockFile, '+0\n');
    writeFileSync(this.configFile, JSON.stringify(this.config(spec.apiPort, spec.brokerPort), null, 2));
  }

  get name(): string {
    return this.spec.name;
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.spec.apiPort}`;
  }

  /** RSS of the running agent in MiB (from /proc), for faults that feed it large inputs. */
  rssMiB(): number | undefined {
    const pid = this.running() ? this.child?.pid : undefined;
    if (pid === undefined) return undefined;
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return m ? Math.round(Number(m[1]) / 1024) : undefined;
    } catch {
      return undefined;
    }
  }

  running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  config(apiPort: number, brokerPort: number): Record<string, unknown> {
    const s = this.spec;
    return {
      dataDir: s.dataDir,
      device: { apiKey: s.apiKey },
      cloud: { apiUrl: s.cloudUrl, requestTimeoutMs: 10_000 },
      ...(s.mqttUrl ? { mqtt: { url: s.mqttUrl, keepAliveSeconds: 5 } } : {}),
      api: { port: apiPort, localApiKey: s.localKey },
      localBroker: { port: brokerPort },
      features: { localBroker: true },
      // A health report (with the loss ledger) every 10 s, so the end of the run has one made after the drain.
      settings: { healthReportIntervalMs: 10_000 },
      logging: { level: 'info', format: 'json' },
    };
  }

  /** The environment of an agent process: its own stepped wall clock. */
  env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: this.clockFile,
      FAKETIME_CACHE_DURATION: '1',
      FAKETIME_DONT_FAKE_MONOTONIC: '1',
    };
  }

  /** Starts the agent and waits for `/v1/healthy`; from then on it is supervised. */
  async start(): Promise<StartRecord> {
    this.supervised = true;
    // A restart the supervisor has begun counts as this start: never two processes at once.
    const pending = await this.restarting;
    if (pending && this.running()) return pending;
    return this.spawnOnce();
  }

  /** SIGKILL, no restart until `start`. */
  async kill(): Promise<void> {
    this.supervised = false;
    await this.restarting;
    if (this.running()) this.child?.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM (a clean stop), no restart. */
  async stop(): Promise<void> {
    this.supervised = false;
    await this.restarting;
    if (this.running()) this.child?.kill('SIGTERM');
    await this.exited;
  }

  async get(path: string, timeoutMs = 5_000): Promise<{ status: number; body: unknown }> {
    const res = await fetch(`${this.apiUrl}${path}`, {
      headers: { authorization: `Bearer ${this.spec.localKey}` },
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body };
  }

  async post(path: string, json?: unknown, timeoutMs = 10_000): Promise<{ status: number; body: unknown }> {
    const res = await fetch(`${this.apiUrl}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.spec.localKey}`, ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await res.text();
    return { status: res.status, body: text };
  }

  async healthy(): Promise<boolean> {
    try {
      return (await this.get('/v1/healthy', 2_000)).status === 200;
    } catch {
      return false;
    }
  }

  /** Reads the outbox counters (drops by reason, depth) and folds them into the totals. */
  async pollQueue(): Promise<{ depth: number; parked: number } | undefined> {
    if (!this.running()) return undefined;
    try {
      const r = await this.get('/v2/queue', 5_000);
      if (r.status !== 200) return undefined;
      const t = (r.body as { channels?: Record<string, { depth?: number; parked?: number; drops?: Partial<DropCounts> }> }).channels?.telemetry;
      if (!t) return { depth: 0, parked: 0 };
      this.observeDrops({ count: t.drops?.count ?? 0, bytes: t.drops?.bytes ?? 0, disk: t.drops?.disk ?? 0, ttl: t.drops?.ttl ?? 0, parkedLimit: t.drops?.parkedLimit ?? 0, corrupt: t.drops?.corrupt ?? 0 });
      return { depth: t.depth ?? 0, parked: t.parked ?? 0 };
    } catch {
      return undefined;
    }
  }

  /** Drops since the run began, by reason, as far as the agent reported them before each exit. */
  drops(): DropCounts {
    return { ...this.dropsTotal };
  }

  /**
   * Starts a second agent on the same data dir (other ports) and waits for it to exit (it must refuse),
   * for `waitMs` at most, or until its local API answers (it runs: proof enough). A loaded machine can
   * take seconds just to load the agent's modules, so silence for a while proves nothing; an answer does.
   */
  async secondInstance(apiPort: number, brokerPort: number, waitMs: number): Promise<{ exit: number | null; ranMs: number; output: string; answered: boolean }> {
    const configFile = join(this.spec.runDir, `agent-${this.name}-second.json`);
    const logFile = join(this.spec.runDir, `agent-${this.name}-second.log`);
    writeFileSync(configFile, JSON.stringify(this.config(apiPort, brokerPort)));
    const out = openSync(logFile, 'a', 0o600);
    const t0 = Date.now();
    const child = spawn(process.execPath, [AGENT_CLI, 'run', '--config', configFile, '--data-dir', this.spec.dataDir], {
      env: this.env(),
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    let exit: number | null = null;
    let exited = false;
    const gone = new Promise<void>((resolve) =>
      child.once('exit', (code, signal) => {
        exit = code ?? (signal ? 128 : null);
        exited = true;
        resolve();
      }),
    );
    let answered = false;
    while (!exited && !answered && Date.now() - t0 < waitMs) {
      answered = await answers(apiPort);
      if (!answered) await Promise.race([gone, sleep(250)]);
    }
    const ranMs = Date.now() - t0;
    if (!exited) {
      child.kill('SIGKILL');
      await gone;
      exit = null;
    }
    return { exit, ranMs, output: tail(readFileSync(logFile, 'utf8'), 400), answered };
  }

  private observeDrops(now: DropCounts): void {
    for (const k of Object.keys(ZERO) as (keyof DropCounts)[]) {
      // A counter below its last value restarted from 0 (kept in memory); above it, it was kept.
      if (now[k] < this.dropsLast[k]) this.dropsBase[k] = this.dropsTotal[k];
      this.dropsLast[k] = now[k];
      this.dropsTotal[k] = Math.max(this.dropsTotal[k], this.dropsBase[k] + now[k]);
    }
  }

  private async spawnOnce(): Promise<StartRecord> {
    const t0 = Date.now();
    const out = openSync(this.logFile, 'a', 0o600);
    const child = spawn(process.execPath, [AGENT_CLI, 'run', '--config', this.configFile, '--data-dir', this.spec.dataDir], {
      env: this.env(),
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    this.child = child;
    const logStart = existsSync(this.logFile) ? readFileSync(this.logFile).length : 0;
    this.exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.once('exit', () => {
      if (this.supervised && this.child === child) this.restarting = this.restartSoon();
    });
    const record = await this.waitHealthy(child, t0, logStart);
    this.starts.push(record);
    if (record.ok) await this.noteUuid();
    else if (child.exitCode === null && child.signalCode === null) {
      // Alive but never healthy: a supervisor's start timeout kills it and tries again.
      child.kill('SIGKILL');
    }
    return record;
  }

  private async restartSoon(): Promise<StartRecord> {
    await new Promise((r) => setTimeout(r, RESTART_DELAY_MS));
    if (!this.supervised || this.running()) return { agent: this.name, at: Date.now(), ok: true, ms: 0 };
    return this.spawnOnce();
  }

  private async waitHealthy(child: ChildProcess, t0: number, logStart: number): Promise<StartRecord> {
    const deadline = t0 + this.startDeadlineMs;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        const log = readFileSync(this.logFile, 'utf8').slice(logStart);
        return { agent: this.name, at: t0, ok: false, ms: Date.now() - t0, why: `exited (${child.exitCode ?? child.signalCode}) before healthy: ${tail(log, 300)}` };
      }
      if (await this.healthy()) return { agent: this.name, at: t0, ok: true, ms: Date.now() - t0 };
      if (Date.now() > deadline) return { agent: this.name, at: t0, ok: false, ms: Date.now() - t0, why: `not healthy within ${this.startDeadlineMs} ms` };
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private async noteUuid(): Promise<void> {
    try {
      const r = await this.get('/v2/device');
      const uuid = (r.body as { uuid?: string }).uuid;
      if (typeof uuid === 'string' && this.uuids.at(-1) !== uuid) this.uuids.push(uuid);
    } catch {
      // asked again at the next start
    }
  }
}

/** Whether something answers HTTP on the loopback port (any status). */
async function answers(port: number): Promise<boolean> {
  try {
    await fetch(`http://127.0.0.1:${port}/v1/healthy`, { signal: AbortSignal.timeout(1_000) });
    return true;
  } catch {
    return false;
  }
}

/** The last `n` characters of a log, on one line. */
export function tail(text: string, n: number): string {
  return text.slice(-n).replace(/\s+/g, ' ').trim();
}
