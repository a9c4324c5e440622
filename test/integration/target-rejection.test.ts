import { readdirSync, readFileSync } from 'node:fs';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The target poll of the real agent, seen from the wire (a recorder between agent and devcloud) and
 * from the device (the processes it runs, what it holds after a restart): the ETag goes out on every
 * poll and a 304 keeps the target; a rejected target never runs and is never stored.
 */

interface Exchange {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  status: number;
  etag: string | undefined;
}

/** Forwards every request to `target` and records it with the answer's status and ETag. */
async function recorder(target: string): Promise<{ url: string; seen: Exchange[]; server: Server }> {
  const seen: Exchange[] = [];
  const to = new URL(target);
  const server = createServer((req, res) => {
    const fwd = request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, status: up.statusCode ?? 0, etag: up.headers.etag });
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    fwd.on('error', () => res.destroy());
    req.pipe(fwd);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}

/** Command lines of the processes on this machine that contain `needle`. */
function processesWith(needle: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(needle)) found.push(cmd);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

const dirs = tempDirs();
let cloud: DevCloud;
let rec: Awaited<ReturnType<typeof recorder>>;
const agents: AgentProcess[] = [];
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
  rec = await recorder(cloud.url);
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGTERM');
});
afterAll(async () => {
  rec?.server.closeAllConnections();
  await new Promise((r) => rec?.server.close(r));
  await cloud?.close();
  dirs.cleanup();
});

interface StateView {
  target: { version: number } | null;
  lastRejection: { message: string } | null;
  current: { status: string; targetVersion: number | null; apps: Record<string, { services: Record<string, { status: string }> }> };
}

describe('target poll of the real agent', () => {
  it('sends its ETag and keeps the target on a 304; a rejected target never runs and is not there after a restart', async () => {
    const uuid = `tgt-rej-${process.pid}`;
    const dev = { uuid, apiKey: `${uuid}-key-0123456789` };
    cloud.admin.createDevice(dev);
    // Distinct sleep lengths: the processes of this test, and only them, can be found in /proc.
    const good = `${3000 + (process.pid % 1000)}.25`;
    const bad = `${3000 + (process.pid % 1000)}.75`;
    cloud.admin.setTarget(uuid, { version: 1, apps: { edge: { services: { ticker: { runtime: 'process', command: ['/bin/sleep', good] } } } } });
    const dataDir = dirs.make();
    const start = async (): Promise<AgentProcess> => {
      const a = await spawnAgent({
        dataDir,
        config: { device: dev, cloud: { apiUrl: rec.url }, settings: { pollIntervalMs: 60_000, reportIntervalMs: 500, reconciliationIntervalMs: 1_000 } },
      });
      agents.push(a);
      return a;
    };
    const state = async (a: AgentProcess) => (await a.get('/v2/state')).body as StateView;
    const polls = () => rec.seen.filter((e) => e.method === 'GET' && e.url === `/device/v1/${uuid}/state`);
    const update = (a: AgentProcess) => fetch(`${a.apiUrl}/v1/update`, { method: 'POST', headers: { authorization: `Bearer ${a.key}` } });
    const running = (v: StateView) => v.current.status === 'applied' && v.current.apps.edge?.services.ticker?.status === 'running';

    let agent = await start();
    await waitFor('v1 running', async () => running(await state(agent)) && (await state(agent)).current.targetVersion === 1);
    const first = polls()[0]!;
    expect(first.status).toBe(200);
    expect(first.headers['if-none-match']).toBeUndefined();
    expect(first.etag).toBeTruthy();

    // ETag round trip: the next poll names what the agent holds, the cloud answers 304, the target stays.
    await update(agent);
    await waitFor('a second poll', () => polls().length >= 2);
    expect(polls()[1]).toMatchObject({ status: 304, headers: { 'if-none-match': first.etag } });
    expect((await state(agent)).target?.version).toBe(1);

    // A v2 that would replace the ticker with another process, complete (nothing left to defaults) but for
    // one field the schema does not know: invalid as a whole, though a reconciler could run it.
    const other = { runtime: 'process', command: ['/bin/sleep', bad], environment: {}, ports: [], volumes: [], restart: 'always', labels: {}, privileged: false, devices: [] };
    const { etag: badEtag } = cloud.admin.setTarget(uuid, { version: 2, config: {}, apps: { edge: { services: { other } } }, rollout: 'now' });
    await update(agent);
    const rejected = await waitFor('the rejection', async () => {
      const v = await state(agent);
      return v.lastRejection ? v : undefined;
    });
    expect(rejected.lastRejection?.message).toContain('rollout');
    expect(rejected.target?.version).toBe(1);
    // The next poll names the rejected document: the cloud does not send it again.
    const before = polls().length;
    await update(agent);
    await waitFor('a poll after the rejection', () => polls().length > before);
    expect(polls()[before]).toMatchObject({ status: 304, headers: { 'if-none-match': badEtag } });
    // Nothing of v2 reached the reconciler: it still applies v1, and v2's process never started.
    const still = await waitFor('a reconciled state', async () => {
      const v = await state(agent);
      return running(v) ? v : undefined;
    });
    expect(still.current.targetVersion).toBe(1);
    expect(Object.keys(still.current.apps.edge?.services ?? {})).toEqual(['ticker']);
    expect(processesWith(`sleep ${bad}`)).toEqual([]);

    // Restarted, the agent runs what it stored: v1, never v2's process.
    await agent.stop('SIGTERM');
    agents.splice(agents.indexOf(agent), 1);
    agent = await start();
    const after = await waitFor('v1 running again', async () => {
      const v = await state(agent);
      return running(v) ? v : undefined;
    });
    expect(after.target?.version).toBe(1);
    expect(after.current.targetVersion).toBe(1);
    expect(processesWith(`sleep ${good}`)).toHaveLength(1);
    expect(processesWith(`sleep ${bad}`)).toEqual([]);
  });
});
