import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../devcloud/ports.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';
import { ROOT, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tarGz } from '../helpers/tar-writer.js';

// The built agent under `launch` against the devcloud; the "second build" is this build with a bumped
// version, packed with the system tar and served from a loopback HTTP server.
const env = agentsWithDevCloud();
const { dirs, agents } = env;
const packages = new Map<string, Buffer>();
let server: Server;
let base = '';

beforeAll(async () => {
  server = createServer((req, res) => {
    const body = packages.get(req.url ?? '');
    if (!body) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': body.length }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

/** The versions the test builds: the next two minor versions of this build's. */
const CURRENT = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const [major, minor] = CURRENT.split('.').map(Number) as [number, number];
const NEXT = `${major}.${minor + 1}.0`;
const BROKEN = `${major}.${minor + 2}.0`;
const STUCK = `${major}.${minor + 3}.0`;
const escaped = (v: string): string => v.replace(/\./g, '\\.');

/** Whether a process runs (a zombie left for init to reap does not). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !['Z', 'X'].includes(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? 'X');
  } catch {
    return false;
  }
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A release tree of this build (dist/bundle, package.json, the runtime node_modules) with `version`, tar.gz'd. */
function releaseOf(version: string, cli?: string): Buffer {
  const work = dirs.make('pkg-');
  const top = join(work, `iotistic-agent-${version}`);
  mkdirSync(join(top, 'dist'), { recursive: true });
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(top, 'package.json'), JSON.stringify({ ...pkg, version }));
  if (cli !== undefined) {
    mkdirSync(join(top, 'dist/bundle'), { recursive: true });
    writeFileSync(join(top, 'dist/bundle/cli.js'), cli);
  } else {
    cpSync(join(ROOT, 'dist/bundle'), join(top, 'dist/bundle'), { recursive: true });
    const modules = execFileSync(process.execPath, [join(ROOT, 'deploy/runtime-modules.mjs'), ROOT], { encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const m of modules) cpSync(join(ROOT, m), join(top, m), { recursive: true, dereference: true });
  }
  execFileSync('tar', ['-czf', join(work, 'pkg.tgz'), '-C', work, `iotistic-agent-${version}`]);
  return readFileSync(join(work, 'pkg.tgz'));
}

function serve(name: string, body: Buffer): { url: string; sha256: string } {
  packages.set(`/${name}`, body);
  return { url: `${base}/${name}`, sha256: sha256(body) };
}


let n = 0;
async function launched(update: Record<string, unknown> = {}, dataDir = dirs.make()): Promise<{ agent: AgentProcess; uuid: string; api: string; port: number; config: Record<string, unknown> }> {
  const dev = { uuid: `update-${process.pid}-${++n}`, apiKey: `update-key-${n}-0123456789` };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const port = await freePort();
  const config = {
      device: dev,
      api: { port },
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      jobs: { pollIntervalMs: 1_000 },
      update: { healthTimeoutSeconds: 30, probationSeconds: 1, trialAttempts: 2, ...update },
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 500, offline: {
          minBackoffSeconds: 0.2,
          maxBackoffSeconds: 2,
          probeMaxIntervalSeconds: 1,
          offlineRetryIntervalSeconds: 1,
          // The test holds telemetry back with 503s while the job runs: the job poller must not pause for it.
          enableGracefulDegradation: false,
        },
      },
  };
  const agent = await spawnAgent({ dataDir, launch: true, timeoutMs: 60_000, config });
  agents.push(agent);
  return { agent, uuid: dev.uuid, api: `http://127.0.0.1:${port}`, port, config };
}

/** The local API of whichever agent the launcher runs now (the port is fixed, the process changes). */
async function get(at: { api: string; agent: AgentProcess }, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${at.api}${path}`, { headers: { authorization: `Bearer ${at.agent.key}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

const versionOf = async (at: { api: string; agent: AgentProcess }): Promise<string | undefined> => {
  try {
    const r = await get(at, '/v2/device');
    return r.status === 200 ? (r.body.version as string) : undefined;
  } catch {
    return undefined;
  }
};

async function jobEnd(uuid: string, id: string, timeoutMs = 120_000): Promise<{ status: string; details: Record<string, unknown> }> {
  return waitFor(
    `job ${id} to end`,
    () => {
      const j = env.cloud.admin.job(uuid, id);
      if (j.status === 'QUEUED' || j.status === 'IN_PROGRESS') return undefined;
      return { status: j.status, details: (j.updates.at(-1)?.details ?? {}) as Record<string, unknown> };
    },
    timeoutMs,
    200,
  );
}

describe('self-update under the launcher', () => {
  it('refuses bad packages, updates to a second build with the queue and identity kept, and rolls back a version that cannot start', async () => {
    const second = serve('second.tgz', releaseOf(NEXT));
    const broken = serve('broken.tgz', releaseOf(BROKEN, 'process.exit(1);\n'));
    const unsafe = serve('unsafe.tgz', tarGz([{ name: 'pkg/package.json', data: '{}' }, { name: 'pkg/../../evil.js', data: 'x' }]));
    const at = await launched();
    const { uuid } = at;
    const before = (await get(at, '/v2/device')).body;

    // A wrong SHA-256: FAILED with both digests, nothing switched.
    const badSum = env.cloud.admin.createJob(uuid, { type: 'update-agent', params: { url: second.url, sha256: 'a'.repeat(64) } }).id;
    const sumEnd = await jobEnd(uuid, badSum);
    expect(sumEnd.status).toBe('FAILED');
    expect(String(sumEnd.details.error)).toContain(second.sha256);
    expect(String(sumEnd.details.error)).toContain('a'.repeat(64));
    // A member climbing out with "..": FAILED, nothing switched.
    const evil = env.cloud.admin.createJob(uuid, { type: 'update-agent', params: { url: unsafe.url, sha256: unsafe.sha256 } }).id;
    const evilEnd = await jobEnd(uuid, evil);
    expect(evilEnd.status).toBe('FAILED');
    expect(String(evilEnd.details.error)).toContain('..');
    expect(existsSync(join(at.agent.dataDir, '..', 'evil.js'))).toBe(false);
    expect(await versionOf(at)).toBe(before.version);

    // Telemetry queued while the cloud is away, held back (503) until after the update.
    await env.cloud.admin.setFaults({ refuse: true });
    const posted = await fetch(`${at.api}/v2/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${at.agent.key}`, 'content-type': 'application/json' },
      body: JSON.stringify(Array.from({ length: 25 }, (_, i) => ({ stream: 'temp', payload: { i } }))),
    });
    expect(posted.status).toBe(202);
    const ids = ((await posted.json()) as { ids: string[] }).ids;
    const update = env.cloud.admin.createJob(uuid, { type: 'update-agent', params: { url: second.url, sha256: second.sha256 }, timeoutSeconds: 300 }).id;
    await env.cloud.admin.setFaults({ refuse: null, throttle: { status: 503, retryAfter: 5, path: 'messages' } });

    // The job ends on the device while its updates, like the telemetry, wait behind the 503s.
    await waitFor(
      'the update done on the device',
      async () => {
        const jobs = (await get(at, '/v2/jobs').catch(() => undefined))?.body as { recent?: { id: string; status: string }[] } | undefined;
        return jobs?.recent?.some((j) => j.id === update && j.status === 'SUCCEEDED');
      },
      120_000,
      250,
    );
    expect(await versionOf(at)).toBe(NEXT);
    expect(env.storedMessages(uuid).filter((m) => ids.includes(m.id))).toEqual([]);
    await env.cloud.admin.clearFaults();
    const updated = await jobEnd(uuid, update);
    expect(updated).toMatchObject({ status: 'SUCCEEDED', details: { from: before.version, to: NEXT } });
    expect(await versionOf(at)).toBe(NEXT);
    expect((await get(at, '/v2/device')).body.uuid).toBe(before.uuid);
    await waitFor('the queued telemetry delivered', () => ids.every((id) => env.storedMessages(uuid).some((m) => m.id === id)), 60_000, 250);
    const stored = env.storedMessages(uuid).filter((m) => ids.includes(m.id));
    expect(stored.length).toBe(ids.length);
    expect(env.cloud.admin.received(uuid).messages.duplicates).toBe(0);

    // A version that exits at once: rolled back to NEXT, FAILED with the reason.
    const bad = env.cloud.admin.createJob(uuid, { type: 'update-agent', params: { url: broken.url, sha256: broken.sha256 }, timeoutSeconds: 300 }).id;
    const failed = await jobEnd(uuid, bad);
    expect(failed.status).toBe('FAILED');
    expect(String(failed.details.error)).toMatch(new RegExp(`version ${escaped(BROKEN)} exited with code 1 two times during its trial`));
    await waitFor(`${NEXT} running again`, async () => (await versionOf(at)) === NEXT, 60_000);
    await waitFor('healthy again', async () => (await fetch(`${at.api}/v1/healthy`)).status === 200, 30_000);
    const state = JSON.parse(readFileSync(join(at.agent.dataDir, 'releases/state.json'), 'utf8')) as { current: string; trial?: unknown };
    expect(state.current).toMatch(new RegExp(`^${escaped(NEXT)}-`));
    expect(state.trial).toBeUndefined();
    // What an operator sees: the release in force and why the last update was rolled back.
    const lifecycle = ((await get(at, '/v2/state')).body as { lifecycle: Record<string, unknown> }).lifecycle;
    expect(lifecycle).toMatchObject({ version: NEXT, launched: true, release: state.current, trial: null, lastOutcome: { jobId: bad, status: 'FAILED' } });
    expect(String((lifecycle.lastOutcome as { reason: unknown }).reason)).toMatch(/exited with code 1/);
  }, 300_000);

  it('applies a config patch that works and rolls back one that leaves the agent unable to start', async () => {
    const at = await launched();
    const { uuid } = at;
    const good = env.cloud.admin.createJob(uuid, { type: 'update-config', params: { patch: { settings: { reportIntervalMs: 700 } } }, timeoutSeconds: 120 }).id;
    const ok = await jobEnd(uuid, good);
    expect(ok).toMatchObject({ status: 'SUCCEEDED', details: { changed: { 'settings.reportIntervalMs': 700 } } });
    const file = join(at.agent.dataDir, 'config.json');
    expect((JSON.parse(readFileSync(file, 'utf8')) as { settings: { reportIntervalMs: number } }).settings.reportIntervalMs).toBe(700);
    // In force: the agent that runs now reads it (the API shows the config in force, secrets redacted).
    const inForce = (await get(at, '/v2/config')).body as { config: { settings: { reportIntervalMs: number }; device: { apiKey: string } } };
    expect(inForce.config.settings.reportIntervalMs).toBe(700);
    expect(inForce.config.device.apiKey).toBe('[redacted]');

    // Not allowed from the cloud: REJECTED, the file unchanged.
    const local = env.cloud.admin.createJob(uuid, { type: 'update-config', params: { patch: { jobs: { allowedCommands: ['/bin/sh'] } } } }).id;
    const refused = await jobEnd(uuid, local);
    expect(refused.status).toBe('REJECTED');
    expect(String(refused.details.error)).toContain('jobs.allowedCommands');

    // Valid for the schema, but the API port is taken: the agent cannot start, the old file comes back.
    const taken = createNetServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    try {
      const port = (taken.address() as AddressInfo).port;
      const badJob = env.cloud.admin.createJob(uuid, { type: 'update-config', params: { patch: { api: { port } } }, timeoutSeconds: 120 }).id;
      const failed = await jobEnd(uuid, badJob);
      expect(failed.status).toBe('FAILED');
      expect(String(failed.details.error)).toMatch(/the config of job .* (exited|did not become healthy)/);
      expect((JSON.parse(readFileSync(file, 'utf8')) as { api: { port: number } }).api.port).toBe(at.port);
      await waitFor('healthy again', async () => (await fetch(`${at.api}/v1/healthy`).catch(() => undefined))?.status === 200, 60_000);
    } finally {
      await new Promise<void>((r) => taken.close(() => r()));
    }
  }, 300_000);

  it('carries on from state.json after the launcher itself is killed mid-trial: the restart counts, the deadline holds', async () => {
    // A version that starts, never reports healthy, and does not notice its launcher die (hung): the next
    // launcher must stop it (outside systemd nothing else would), or it outlives its rollback.
    const stuck = serve('stuck.tgz', releaseOf(STUCK, 'setInterval(() => {}, 1000);\n'));
    const at = await launched({ healthTimeoutSeconds: 8, trialAttempts: 5 });
    const id = env.cloud.admin.createJob(at.uuid, { type: 'update-agent', params: { url: stuck.url, sha256: stuck.sha256 }, timeoutSeconds: 120 }).id;
    const stateFile = join(at.agent.dataDir, 'releases/state.json');
    await waitFor('the trial under way', () => existsSync(stateFile) && (JSON.parse(readFileSync(stateFile, 'utf8')) as { trial?: { attempts: number } }).trial?.attempts === 1, 60_000);
    const childFile = join(at.agent.dataDir, 'releases/agent.json');
    const hung = await waitFor('the version on trial recorded', () => (existsSync(childFile) ? (JSON.parse(readFileSync(childFile, 'utf8')) as { pid: number }).pid : undefined), 30_000);
    await at.agent.stop('SIGKILL');
    expect(alive(hung)).toBe(true);

    const again = await spawnAgent({ dataDir: at.agent.dataDir, launch: true, timeoutMs: 60_000, config: at.config });
    agents.push(again);
    const end = await jobEnd(at.uuid, id, 60_000);
    expect(end.status).toBe('FAILED');
    expect(String(end.details.error)).toBe(`version ${STUCK} did not become healthy within 8 s`);
    expect(again.records().some((r) => String(r.msg).startsWith('rolled back') && r.part === 'launcher')).toBe(true);
    expect((JSON.parse(readFileSync(stateFile, 'utf8')) as { current: unknown; trial?: unknown }).trial).toBeUndefined();
    expect(await versionOf({ api: at.api, agent: again })).toBe(CURRENT);
    // The hung version the killed launcher left was stopped by the new one before it started another.
    expect(alive(hung)).toBe(false);
    expect(again.records().some((r) => r.pid === hung && String(r.msg).includes('still running; stopping it'))).toBe(true);
  }, 120_000);

  it('rejects update-agent when the agent runs without the launcher', async () => {
    const dev = { uuid: `update-run-${process.pid}`, apiKey: 'update-run-key-0123456789' };
    env.cloud.admin.createDevice(dev);
    env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    const agent = await spawnAgent({ dataDir: dirs.make(), config: { device: dev, cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 }, features: { metrics: false }, jobs: { pollIntervalMs: 1_000 } } });
    agents.push(agent);
    const id = env.cloud.admin.createJob(dev.uuid, { type: 'update-agent', params: { url: 'https://example.invalid/p.tgz', sha256: 'b'.repeat(64) } }).id;
    const end = await jobEnd(dev.uuid, id, 30_000);
    expect(end.status).toBe('REJECTED');
    expect(String(end.details.error)).toContain('not running under `iotistic-agent launch`');
  }, 60_000);
});
