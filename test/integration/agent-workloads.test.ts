import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { applyMergePatch, type Json } from '../../src/util/json-diff.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startEngine, type TestEngine } from '../helpers/docker.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
let cloud: DevCloud;
let engine: TestEngine;
const agents: AgentProcess[] = [];

beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
  engine = await startEngine();
}, 120_000);
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGTERM');
});
afterAll(async () => {
  await cloud?.close();
  await engine?.stop();
  dirs.cleanup();
}, 120_000);

type Services = Record<string, { status: string; restarts: number; lastError: string | null }>;
interface StateView {
  current: { status: string; targetVersion: number | null; apps: Record<string, { services: Services }> };
}

/** What the devcloud knows of the device's state: its merge-patch reports folded, oldest first. */
function cloudState(uuid: string): Json {
  const reports = cloud.admin.reports(uuid, { limit: 1000 }).reports.slice().reverse();
  let state: Json = {};
  for (const r of reports) state = applyMergePatch(state, (r as { state: Json }).state);
  return state;
}

async function agentWith(uuid: string, env: NodeJS.ProcessEnv = {}): Promise<AgentProcess> {
  const dev = { uuid, apiKey: `${uuid}-key-0123456789` };
  cloud.admin.createDevice(dev);
  const a = await spawnAgent({
    dataDir: dirs.make(),
    env,
    config: {
      device: dev,
      cloud: { apiUrl: cloud.url },
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 200, reconciliationIntervalMs: 2_000 },
    },
  });
  agents.push(a);
  return a;
}

describe('a target applied through the devcloud', () => {
  it('runs a native process service and reports it running, locally and to the cloud', async () => {
    const uuid = `wl-proc-${process.pid}`;
    cloud.admin.setTarget(uuid, {
      version: 3,
      apps: { edge: { services: { ticker: { runtime: 'process', command: ['/bin/sleep', '3600'], restart: 'always' } } } },
    });
    const agent = await agentWith(uuid);
    const view = await waitFor('the service running', async () => {
      const v = (await agent.get('/v2/state')).body as StateView;
      return v.current.apps.edge?.services.ticker?.status === 'running' && v.current.status === 'applied' ? v : undefined;
    });
    expect(view.current.targetVersion).toBe(3);
    await waitFor('the cloud to see it running', () => {
      const s = cloudState(uuid) as { status?: string; apps?: { edge?: { services?: Services } } };
      return s.status === 'applied' && s.apps?.edge?.services?.ticker?.status === 'running';
    });
  });

  it('runs a container on a real Docker engine and reports it running, locally and to the cloud', async () => {
    const uuid = `wl-docker-${process.pid}`;
    await engine.buildImage('local/agent-e2e:1');
    cloud.admin.setTarget(uuid, {
      version: 5,
      apps: { edge: { services: { box: { image: 'local/agent-e2e:1', command: ['/bin/sleep', '3600'], environment: { MODE: 'e2e' } } } } },
    });
    const agent = await agentWith(uuid, { DOCKER_HOST: engine.host });
    await waitFor(
      'the container running',
      async () => ((await agent.get('/v2/state')).body as StateView).current.apps.edge?.services.box?.status === 'running',
      60_000,
    );
    await waitFor('the cloud to see it running', () => {
      const s = cloudState(uuid) as { apps?: { edge?: { services?: Services } } };
      return s.apps?.edge?.services?.box?.status === 'running';
    });
    const containers = await engine.docker.listContainers({ filters: { label: ['io.iotistic.service=box'] } });
    expect(containers).toHaveLength(1);
    expect(containers[0]?.State).toBe('running');
  });

  it('runs native processes as an unprivileged user by default, not as the root agent', async () => {
    const dataDir = dirs.make();
    const a = await spawnAgent({ dataDir, config: {} });
    agents.push(a);
    const r = await fetch(`${a.apiUrl}/v2/local/target-state`, {
      method: 'POST',
      headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ version: 1, apps: { who: { services: { ami: { runtime: 'process', command: ['/bin/sh', '-c', 'id -u; pwd; sleep 3600'] } } } } }),
    });
    expect(r.status).toBe(200);
    const log = join(dataDir, 'services', 'apps', 'who', 'ami', 'output.log');
    const text = await waitFor('its output', () => (existsSync(log) && readFileSync(log, 'utf8').includes('\n/') ? readFileSync(log, 'utf8') : undefined));
    // The agent runs as root in CI; its processes run as nobody (65534) in "/".
    expect(process.getuid?.()).toBe(0);
    const lines = text.split('\n').filter((l) => !l.startsWith('---'));
    expect(lines.slice(0, 2)).toEqual(['65534', '/']);
  });

  it('applies a local target without a cloud and refuses one that asks for the host', async () => {
    const a = await spawnAgent({ dataDir: dirs.make(), config: {} });
    agents.push(a);
    const post = (doc: unknown) =>
      fetch(`${a.apiUrl}/v2/local/target-state`, {
        method: 'POST',
        headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' },
        body: JSON.stringify(doc),
      });
    const refused = await post({ version: 1, apps: { x: { services: { s: { image: 'local/x:1', privileged: true } } } } });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { message: string }).message).toContain('apps.x.services.s.privileged');
    const next = { version: 2, apps: { local: { services: { napper: { runtime: 'process', command: ['/bin/sleep', '3600'] } } } } };
    // The plan of it first, through the same API: one process to create and start, nothing pulled.
    const planned = await fetch(`${a.apiUrl}/v2/target/plan`, { method: 'POST', headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' }, body: JSON.stringify(next) });
    expect(planned.status).toBe(200);
    expect(await planned.json()).toMatchObject({
      targetVersion: 2,
      services: [{ app: 'local', service: 'napper', runtime: 'process', action: 'create', steps: [{ kind: 'create' }, { kind: 'start' }], downtime: { kind: 'none' } }],
      images: { pull: [], present: [] },
      refused: [],
    });
    const ok = await post(next);
    expect(ok.status).toBe(200);
    await waitFor('the local service running', async () => ((await a.get('/v2/state')).body as StateView).current.apps.local?.services.napper?.status === 'running');
    expect(((await a.get('/v2/state')).body as { mode: string }).mode).toBe('local');
  });
});
