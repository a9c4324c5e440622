import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI = join(ROOT, 'dist/src/cli.js');
/** What the `iotistic-agent` bin runs: the bundle (scripts/bundle.ts), a sh launcher line first. */
export const BIN = join(ROOT, 'dist/bundle/cli.js');

export function requireBuilt(): void {
  for (const built of [CLI, BIN]) if (!existsSync(built)) throw new Error(`${built} is missing: run \`npm run build\` first (npm test does)`);
}

export interface AgentProcess {
  child: ChildProcess;
  apiUrl: string;
  key: string;
  dataDir: string;
  /** Every JSON log record so far. */
  records(): Record<string, unknown>[];
  stderr(): string;
  get(path: string): Promise<{ status: number; body: unknown }>;
  /** A request to the local API with the key and, when given, a JSON body. */
  send(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }>;
  /** Sends a signal and waits for the exit, returning the code and how long it took. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
}

export interface SpawnAgentOptions {
  dataDir: string;
  config?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Start the bin as installed (`/bin/sh` runs the bundle's launcher line, which execs node) instead of `node dist/src/cli.js`. */
  bin?: boolean;
  /** A command the agent runs under, e.g. `['ip', 'netns', 'exec', 'ns1']` (in a network namespace); it must exec the agent. */
  prefix?: string[];
  /** Start `launch` (the launcher, which runs the agent as its child) instead of `run`. */
  launch?: boolean;
}

/** The key the agent's local API takes: configured, else the one in identity.json (local-api.key before it). */
export function localApiKey(dataDir: string, config: Record<string, unknown>): string {
  const configured = (config.api as { localApiKey?: unknown } | undefined)?.localApiKey;
  if (typeof configured === 'string') return configured;
  const identity = join(dataDir, 'identity.json');
  if (existsSync(identity)) return (JSON.parse(readFileSync(identity, 'utf8')) as { localApiKey: string }).localApiKey;
  return readFileSync(join(dataDir, 'local-api.key'), 'utf8').trim();
}

/** Writes a config, starts the built CLI with `run`, and resolves once the local API is listening. */
export async function spawnAgent(opts: SpawnAgentOptions): Promise<AgentProcess> {
  requireBuilt();
  const configFile = join(opts.dataDir, 'config.json');
  const config = { api: { port: 0 }, logging: { level: 'debug', format: 'json' }, ...opts.config };
  writeFileSync(configFile, JSON.stringify(config));
  const args = [opts.launch ? 'launch' : 'run', '--config', configFile, '--data-dir', opts.dataDir];
  const command = [opts.bin ? '/bin/sh' : process.execPath, opts.bin ? BIN : CLI, ...args];
  const [file = '', ...rest] = [...(opts.prefix ?? []), ...command];
  const child = spawn(file, rest, {
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  let errText = '';
  let partial = '';
  child.stdout!.on('data', (c: Buffer) => {
    partial += c.toString('utf8');
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    for (const l of parts) {
      try {
        lines.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        errText += `${l}\n`;
      }
    }
  });
  child.stderr!.on('data', (c: Buffer) => {
    errText += c.toString('utf8');
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let apiUrl: string | undefined;
  while (!apiUrl) {
    const started = lines.find((r) => typeof r.api === 'string' && String(r.msg).startsWith('agent started'));
    if (started) apiUrl = started.api as string;
    else if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode} before listening:\n${errText}`);
    else if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`agent did not start in time:\n${errText}\n${JSON.stringify(lines.slice(-5))}`);
    } else await new Promise((r) => setTimeout(r, 50));
  }
  const key = localApiKey(opts.dataDir, config);
  const send = async (method: string, path: string, json?: unknown): Promise<{ status: number; body: unknown }> => {
    const res = await fetch(`${apiUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body };
  };
  return {
    child,
    apiUrl,
    key,
    dataDir: opts.dataDir,
    records: () => lines,
    stderr: () => errText,
    get: (path) => send('GET', path),
    send,
    async stop(signal = 'SIGTERM') {
      const t0 = Date.now();
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const r = await exited;
      return { ...r, ms: Date.now() - t0 };
    },
  };
}

/** Runs the built CLI to completion (for commands that exit). */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  requireBuilt();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
