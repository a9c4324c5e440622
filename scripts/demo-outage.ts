/**
 * `npm run demo:outage`: an outage to watch. Starts the devcloud and the built agent (the bin, as a
 * device runs it) with everything under ./data/outage, a producer posting telemetry 5 times a second,
 * then makes the devcloud refuse connections for 60 s (DEMO_OUTAGE_SECONDS) and lets it come back,
 * printing the connection status and the telemetry queue's depth every 3 s until the backlog is
 * delivered. The dashboard URL (with its key in the fragment) is printed first: open it to watch.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { startDevCloud } from '../devcloud/server.js';
import { errorMessage } from '../src/util/errors.js';

const OUTAGE_S = Number(process.env.DEMO_OUTAGE_SECONDS ?? 60);
const BIN = process.env.DEMO_BIN ?? new URL('../bundle/cli.js', import.meta.url).pathname;
const root = resolve('data/outage');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Agent {
  api: string;
  key: string;
  stop: () => Promise<void>;
}

/** Starts the bin on a fresh config pointed at the devcloud; resolves once its local API listens. */
async function startAgent(cloudUrl: string): Promise<Agent> {
  const dataDir = resolve(root, 'agent');
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const key = randomBytes(24).toString('base64url');
  const config = {
    dataDir,
    device: { uuid: 'outage-demo', apiKey: randomBytes(18).toString('base64url') },
    cloud: { apiUrl: cloudUrl },
    api: { port: 0, localApiKey: key },
    logging: { format: 'json', level: 'info' },
    // Quick to notice the return and to show degradation, for a demo of a minute.
    settings: { offline: { probeMaxIntervalSeconds: 5, offlineThresholdSeconds: 20, maxBackoffSeconds: 30 } },
  };
  const file = resolve(root, 'agent.json');
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  const child = spawn('/bin/sh', [BIN, 'run', '--config', file], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let out = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    if (process.env.DEMO_DEBUG) process.stderr.write(c);
  });
  for (let i = 0; i < 600; i++) {
    const line = out.split('\n').find((l) => l.includes('"agent started'));
    if (line) {
      out = '';
      child.stdout.resume();
      return { api: (JSON.parse(line) as { api: string }).api, key, stop: () => (child.kill('SIGTERM'), exited) };
    }
    if (child.exitCode !== null) break;
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`the agent did not start (${BIN}; run npm run build)`);
}

async function get(agent: Agent, path: string): Promise<unknown> {
  const res = await fetch(`${agent.api}${path}`, { headers: { authorization: `Bearer ${agent.key}` } });
  return res.json();
}

/** One line: elapsed time, phase, connection status, telemetry queued and delivered. */
async function report(agent: Agent, t0: number, phase: string): Promise<number> {
  const conn = (await get(agent, '/v2/connection')) as { status: string; degradation?: { mode: string } };
  const queue = (await get(agent, '/v2/queue')) as { channels: Record<string, { depth: number; delivered?: number }> };
  const tel = queue.channels.telemetry ?? { depth: 0 };
  const s = ((Date.now() - t0) / 1000).toFixed(0).padStart(4);
  process.stdout.write(`${s}s  ${phase.padEnd(8)} connection ${conn.status.padEnd(8)} mode ${(conn.degradation?.mode ?? '-').padEnd(8)} telemetry queued ${String(tel.depth).padStart(5)}  delivered ${String(tel.delivered ?? 0)}\n`);
  return tel.depth;
}

/** Posts one reading every 200 ms until stopped. */
function produce(agent: Agent): () => void {
  let n = 0;
  const timer = setInterval(() => {
    void fetch(`${agent.api}/v2/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${agent.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ stream: 'flow', payload: { n: n++, lpm: 10 + Math.random() } }),
    }).catch(() => undefined);
  }, 200);
  return () => clearInterval(timer);
}

async function main(): Promise<void> {
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const cloud = await startDevCloud({ dbPath: resolve(root, 'devcloud.db') });
  const agent = await startAgent(cloud.url).catch(async (err: unknown) => {
    await cloud.close();
    throw err;
  });
  const stopProducer = produce(agent);
  let done = false;
  const finish = async (): Promise<void> => {
    if (done) return;
    done = true;
    stopProducer();
    await cloud.admin.clearFaults().catch(() => undefined);
    await agent.stop();
    await cloud.close();
  };
  process.once('SIGINT', () => void finish().then(() => process.exit(130)));
  process.stdout.write(`\n  Dashboard: ${agent.api}/#key=${encodeURIComponent(agent.key)}\n  Devcloud:  ${cloud.url} (admin ${cloud.adminUrl})\n  Data:      ${root}\n\n`);
  const t0 = Date.now();
  for (let i = 0; i < 3; i++, await sleep(3000)) await report(agent, t0, 'normal');
  await cloud.admin.setFaults({ refuse: { forMs: OUTAGE_S * 1000 } });
  process.stdout.write(`--- the devcloud refuses connections for ${OUTAGE_S} s ---\n`);
  const back = Date.now() + OUTAGE_S * 1000;
  while (Date.now() < back) {
    await report(agent, t0, 'outage');
    await sleep(3000);
  }
  process.stdout.write('--- the devcloud is back ---\n');
  // The producer goes on: a depth back near what one flush leaves means the backlog is delivered.
  for (let i = 0; i < 40; i++, await sleep(3000)) if ((await report(agent, t0, 'back')) < 20) break;
  await finish();
}

main().catch((err: unknown) => {
  process.stderr.write(`demo:outage: ${errorMessage(err)}\n`);
  process.exit(1);
});
