/**
 * Makes the data dir a released agent leaves behind, for the upgrade test
 * (test/integration/upgrade-from-release.test.ts): run it with the build of a release, before the next
 * release changes anything, and commit what it writes under test/fixtures/releases/<version>/.
 *
 *   npm run build && node dist/scripts/upgrade-fixture.js test/fixtures/releases/0.1.0
 *
 * The agent runs from the bundle, offline (its cloud is a closed port), in local mode with a native
 * process service, takes telemetry that stays queued, and stops cleanly. What it leaves (identity,
 * database with the queue and the target in force) must carry over to every later version.
 */
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const BIN = new URL('../bundle/cli.js', import.meta.url).pathname;
const out: string = process.argv[2] ?? '';
if (!out) throw new Error('usage: node dist/scripts/upgrade-fixture.js OUT_DIR');

export const FIXTURE_TELEMETRY = 100;
export const FIXTURE_TARGET = {
  version: 7,
  apps: { fixture: { services: { ticker: { runtime: 'process', command: ['/bin/sleep', '100000'], restart: 'always' } } } },
};

/** A loopback port nothing listens on: the agent's cloud, so everything it produces stays queued. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'upgrade-fixture-'));
  const configFile = join(dataDir, 'config.json');
  const config = {
    device: { apiKey: 'fixture-device-key-0001' },
    cloud: { apiUrl: `http://127.0.0.1:${await closedPort()}` },
    api: { port: 0 },
    logging: { format: 'json', level: 'info' },
    features: { metrics: false },
  };
  writeFileSync(configFile, JSON.stringify(config));
  const child = spawn(process.execPath, [BIN, 'run', '--config', configFile, '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const api = await new Promise<string>((res, rej) => {
    let buf = '';
    child.stdout.on('data', (c: Buffer) => {
      buf += c.toString('utf8');
      // The "agent started" record names the local API's address.
      const m = /"api":"(http:\/\/[^"]+)"[^\n]*"msg":"agent started/.exec(buf);
      if (m?.[1]) res(m[1]);
    });
    child.once('exit', (code) => rej(new Error(`the agent exited (${String(code)}) before its API listened:\n${buf}`)));
  });
  const identity = JSON.parse(readFileSync(join(dataDir, 'identity.json'), 'utf8')) as { uuid: string; localApiKey: string };
  const call = async (method: string, path: string, body: unknown): Promise<unknown> => {
    const r = await fetch(`${api}${path}`, { method, headers: { authorization: `Bearer ${identity.localApiKey}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  await call('POST', '/v2/local/target-state', FIXTURE_TARGET);
  // A local secret, where the release has secrets (0.2.0 on): it must carry over, still readable.
  const secrets: string[] = [];
  const put = await fetch(`${api}/v2/secrets/fixture-token`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${identity.localApiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ value: 'fixture-secret-value-0001' }),
  });
  if (put.ok) secrets.push('fixture-token');
  else if (put.status !== 404) throw new Error(`PUT /v2/secrets/fixture-token: ${put.status} ${await put.text()}`);
  const items = Array.from({ length: FIXTURE_TELEMETRY }, (_, n) => ({ stream: 'fixture', payload: { n } }));
  const { ids } = (await call('POST', '/v2/telemetry', items)) as { ids: string[] };
  // Until the service runs, so the stored current state has it too.
  for (let i = 0; ; i++) {
    const state = (await (await fetch(`${api}/v2/state`, { headers: { authorization: `Bearer ${identity.localApiKey}` } })).json()) as Record<string, unknown>;
    if (JSON.stringify(state).includes('"running"')) break;
    if (i > 200) throw new Error('the fixture service did not start within 20 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGTERM');
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`the agent exited with ${String(code)} on SIGTERM`);

  const target = resolve(out);
  rmSync(target, { recursive: true, force: true });
  mkdirSync(target, { recursive: true });
  for (const name of readdirSync(dataDir)) {
    // Not the run's config, its lock, its clean-close mark (the upgrade must pass the integrity check) or its reserve.
    if (['config.json', 'disk-reserve', 'agent.lock', 'agent.lock.pid', 'agent.db.clean'].includes(name) || name.startsWith('.')) continue;
    cpSync(join(dataDir, name), join(target, name), { recursive: true });
  }
  const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  writeFileSync(
    join(target, 'fixture.json'),
    `${JSON.stringify({ agentVersion: version, madeAt: new Date().toISOString(), uuid: identity.uuid, localApiKey: identity.localApiKey, deviceApiKey: config.device.apiKey, telemetryIds: ids, target: FIXTURE_TARGET, secrets }, null, 2)}\n`,
  );
  rmSync(dataDir, { recursive: true, force: true });
  console.log(`wrote the data dir of agent ${version} to ${target}: ${readdirSync(target).join(', ')}`);
}

await main();
