import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitForPort } from '../devcloud/ports.js';
import { deadline } from './drain.js';

/**
 * The agent the ingest benchmark feeds: the built CLI (`run`) as a child process on a fresh data dir,
 * local broker on, API and broker on free ports, no cloud (local mode: whatever it takes in stays in
 * the outbox, which is what is measured). Its own messages (health, state) go to other channels, so
 * the telemetry channel's depth counts exactly what the producers handed over.
 */

/** The agent as installed: the bundle the bin runs (scripts/bundle.ts). */
const CLI = fileURLToPath(new URL('../bundle/cli.js', import.meta.url));
/** The local API's key, set in the config (so no identity file is read). */
const KEY = 'bench-ingest-local-key-0001';
/** How long a start may take: on a loaded machine (nice 19 beside a mutation run) a minute was not enough. */
const START_DEADLINE_MS = 180_000;

export interface BenchAgent {
  apiUrl: string;
  brokerPort: number;
  key: string;
  pid: number | undefined;
  /** `GET /v2/queue`: the telemetry channel's depth and the outbox's durability. */
  queue(): Promise<{ depth: number; durability: string }>;
  /** Its stderr so far (warnings and errors: the log level is warn). */
  stderr(): string;
  /** SIGTERM (SIGKILL after 10 s), then the data dir is removed (unless the run said `keep`). */
  stop(): Promise<void>;
}

export interface AgentRun {
  /** An existing data dir (a queue left by an earlier run); default a new dir under `root`. */
  dataDir?: string;
  /** Config sections added to the bench's own (an uplink, settings); a section given here is merged over the bench's. */
  config?: Record<string, Record<string, unknown>>;
  /** Leave the data dir at `stop` (for a next run on it). */
  keep?: boolean;
}

/** Starts the agent in a new dir under `root` (or `run.dataDir`) and resolves once `/v2/queue` answers 200. */
export async function startAgent(root: string, run: AgentRun = {}): Promise<BenchAgent & { dataDir: string }> {
  const dataDir = run.dataDir ?? mkdtempSync(join(root, 'agent-'));
  const ports = { api: await freePort(), broker: await freePort() };
  const configFile = join(dataDir, 'config.json');
  const base: Record<string, Record<string, unknown>> = {
    api: { port: ports.api, localApiKey: KEY },
    localBroker: { port: ports.broker },
    logging: { level: 'warn', format: 'json' },
    features: { metrics: false, localBroker: true },
  };
  for (const [section, values] of Object.entries(run.config ?? {})) base[section] = { ...base[section], ...values };
  writeFileSync(configFile, JSON.stringify(base));
  const child = spawn(process.execPath, [CLI, 'run', '--config', configFile, '--data-dir', dataDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (t: string) => (err += t));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  const apiUrl = `http://127.0.0.1:${ports.api}`;
  const queue = async (): Promise<{ depth: number; durability: string }> => {
    const res = await fetch(`${apiUrl}/v2/queue`, { headers: { authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(START_DEADLINE_MS) });
    if (res.status !== 200) throw new Error(`GET /v2/queue answered ${res.status}: ${await res.text()}`);
    const body = (await res.json()) as { durability: string; channels: Record<string, { depth: number } | undefined> };
    return { depth: body.channels.telemetry?.depth ?? 0, durability: body.durability };
  };
  const stop = async (): Promise<void> => {
    if (alive()) child.kill('SIGTERM');
    await deadline(exited, 10_000, 'the agent stop').catch(async () => {
      child.kill('SIGKILL');
      await exited;
    });
    if (!run.keep) rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    const end = Date.now() + START_DEADLINE_MS;
    await waitForPort('127.0.0.1', ports.api, START_DEADLINE_MS, alive, 20);
    await waitForPort('127.0.0.1', ports.broker, end - Date.now(), alive, 20);
    await readyQueue(queue, alive, end);
  } catch (e) {
    await stop();
    throw new Error(`the agent did not start: ${(e as Error).message}\n${err.slice(-2000)}`);
  }
  return { apiUrl, brokerPort: ports.broker, key: KEY, pid: child.pid, queue, stderr: () => err, stop, dataDir };
}

/** The API's port is bound early in the start; `/v2/queue` answers once the outbox is open. */
async function readyQueue(queue: () => Promise<unknown>, alive: () => boolean, end: number): Promise<void> {
  for (;;) {
    try {
      await queue();
      return;
    } catch (e) {
      if (!alive() || Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

