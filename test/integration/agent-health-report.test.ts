import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

// The built agent and the devcloud: its fault switches refuse connections, and answer 503 to the health endpoint alone.
const dirs = tempDirs();
let cloud: DevCloud;
const agents: AgentProcess[] = [];
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  await cloud.admin.clearFaults();
});
afterAll(async () => {
  await cloud.close();
  dirs.cleanup();
});

interface Queue {
  channels: Record<string, { depth: number }>;
}

it('a health report queued on the return from offline survives a kill -9 before the cloud takes it, and arrives after the restart', async () => {
  const dev = { uuid: `health-${process.pid}`, apiKey: 'health-key-0123456789' };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  const config = {
    device: dev,
    cloud: { apiUrl: cloud.url, requestTimeoutMs: 1_000 },
    features: { metrics: false },
    settings: { pollIntervalMs: 1_000, offline: { offlineAfterFailures: 1, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1 } },
  };
  const start = async (): Promise<AgentProcess> => {
    const a = await spawnAgent({ dataDir, config });
    agents.push(a);
    return a;
  };
  const status = async (a: AgentProcess): Promise<string> => ((await a.get('/v2/connection')).body as { status: string }).status;
  const first = await start();
  await waitFor('online', async () => (await status(first)) === 'online', 20_000);

  // An outage; the cloud comes back but its health endpoint answers 503 for now.
  await cloud.admin.setFaults({ refuse: true });
  await waitFor('offline', async () => (await status(first)) === 'offline', 20_000);
  await cloud.admin.setFaults({ refuse: null, throttle: { status: 503, retryAfter: 60, path: '/health$', method: 'POST' } });
  await waitFor('online again', async () => (await status(first)) === 'online', 20_000);
  await waitFor('the report waiting in the outbox', async () => ((await first.get('/v2/queue')).body as Queue).channels['health']?.depth === 1, 20_000);
  expect(cloud.admin.health(dev.uuid).health).toEqual([]);

  await first.stop('SIGKILL');
  agents.splice(0);
  await cloud.admin.clearFaults();
  await start();
  const report = await waitFor('the report at the cloud', () => cloud.admin.health(dev.uuid).health[0], 30_000);
  const outages = (report.health as { outages: { end: number | null; cause: string }[] }).outages;
  // The outage of the first run, ended: the report as it was when queued. (With offlineAfterFailures 1
  // each 503 of the health endpoint was an outage of its own too, each return a newer report: the
  // latest replaced the others while it waited, so one arrives.)
  expect(outages.some((o) => o.end !== null && /ECONNREFUSED|ECONNRESET/.test(o.cause))).toBe(true);
  expect(cloud.admin.health(dev.uuid).health).toHaveLength(1);
}, 90_000);
