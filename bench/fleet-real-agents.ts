import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../devcloud/ports.js';
import { deadline } from './drain.js';

/**
 * The real agents of bench/fleet-real.ts: the built CLI (`run`) as child processes, each with its own
 * data dir and a small config (its device identity, the cloud and its broker through the world's
 * proxies, no metrics, no local broker), everything else at the agent's defaults, as a fleet runs.
 */

const CLI = fileURLToPath(new URL('../bundle/cli.js', import.meta.url));

export interface FleetAgent {
  index: number;
  uuid: string;
  pid: number | undefined;
  /** The agent's own view of its channels (`GET /v2/connection`): `api` and `mqtt` → online | degraded | offline. */
  channels(): Promise<Record<string, string>>;
  alive(): boolean;
  stderr(): string;
  stop(): Promise<void>;
}

export interface FleetAgentSpec {
  index: number;
  uuid: string;
  apiKey: string;
  apiUrl: string;
  mqttUrl: string;
  root: string;
}

export async function startFleetAgent(s: FleetAgentSpec): Promise<FleetAgent> {
  const dataDir = join(s.root, `agent-${s.index}`);
  mkdirSync(dataDir, { recursive: true });
  const api = { port: await freePort(), localApiKey: `fleet-local-key-${s.index}-0123456789` };
  const config = {
    device: { uuid: s.uuid, apiKey: s.apiKey },
    cloud: { apiUrl: s.apiUrl },
    mqtt: { url: s.mqttUrl },
    api,
    // IOTISTIC_FLEET_LOG_LEVEL=info (or debug) to see why an agent came back late.
    logging: { level: process.env.IOTISTIC_FLEET_LOG_LEVEL ?? 'warn', format: 'json' },
    features: { metrics: false, localBroker: false },
  };
  const configFile = join(dataDir, 'config.json');
  writeFileSync(configFile, JSON.stringify(config), { mode: 0o600 });
  // IOTISTIC_FLEET_LOG_DIR=DIR keeps each agent's log (stdout) there, as agent-N.log.
  const logDir = process.env.IOTISTIC_FLEET_LOG_DIR;
  const out = logDir ? openSync(join(logDir, `agent-${s.index}.log`), 'a') : 'ignore';
  // The bench's own IOTISTIC_FLEET_* variables are not the agent's settings (it would warn of each).
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('IOTISTIC_FLEET_')));
  const child: ChildProcess = spawn(process.execPath, [CLI, 'run', '--config', configFile, '--data-dir', dataDir], { stdio: ['ignore', out, 'pipe'], env });
  if (typeof out === 'number') closeSync(out);
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (t: string) => {
    // Keep the tail only: a fleet of agents warning through an outage must not fill the bench's memory.
    err = (err + t).slice(-20_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  return {
    index: s.index,
    uuid: s.uuid,
    pid: child.pid,
    async channels() {
      const res = await fetch(`http://127.0.0.1:${api.port}/v2/connection`, { headers: { authorization: `Bearer ${api.localApiKey}` }, signal: AbortSignal.timeout(10_000) });
      if (res.status !== 200) throw new Error(`agent ${s.index}: GET /v2/connection answered ${res.status}`);
      const body = (await res.json()) as { channels?: Record<string, { status?: string }> };
      return Object.fromEntries(Object.entries(body.channels ?? {}).map(([k, v]) => [k, v.status ?? 'unknown']));
    },
    alive,
    stderr: () => err,
    async stop() {
      if (alive()) child.kill('SIGTERM');
      await deadline(exited, 15_000, 'the agent stop').catch(async () => {
        child.kill('SIGKILL');
        await exited;
      });
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
