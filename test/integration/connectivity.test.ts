import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { spawnDevCloud, type SpawnedDevCloud } from '../helpers/devcloud.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const agents: AgentProcess[] = [];
const clouds: (DevCloud | SpawnedDevCloud)[] = [];
beforeAll(() => requireBuilt());
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  for (const c of clouds.splice(0)) await ('close' in c ? c.close() : c.kill());
  dirs.cleanup();
});

const STATE_GET = 'GET /device/v1/:uuid/state';
let n = 0;
function device(): { uuid: string; apiKey: string } {
  n++;
  return { uuid: `conn-test-${process.pid}-${n}`, apiKey: `key-${n}-0123456789abcdef` };
}

async function cloud(): Promise<DevCloud> {
  const c = await startDevCloud();
  clouds.push(c);
  return c;
}

interface Conn {
  status: string;
  pollFailures: number;
  lastReportSuccess: number;
  channels: Record<string, { status: string; lastError: string | null }>;
}
interface StateView {
  target: { version: number; document: { apps: Record<string, unknown> } } | null;
  lastRejection: { message: string } | null;
  lastPollError: string | null;
}

async function agentFor(
  dev: { uuid: string; apiKey: string },
  apiUrl: string,
  settings: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
  dataDir = dirs.make(),
): Promise<AgentProcess> {
  const { offline, ...rest } = settings as { offline?: Record<string, unknown> };
  const a = await spawnAgent({
    dataDir,
    config: {
      device: dev,
      cloud: { apiUrl, requestTimeoutMs: 2_000 },
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 200, ...rest, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2, ...offline } },
      ...extra,
    },
  });
  agents.push(a);
  return a;
}

const conn = async (a: AgentProcess): Promise<Conn> => (await a.get('/v2/connection')).body as Conn;
const state = async (a: AgentProcess): Promise<StateView> => (await a.get('/v2/state')).body as StateView;

describe('target state and reports against the devcloud', () => {
  it('fetches the target, reports its state, and polls at once on POST /v1/update', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    c.admin.setTarget(dev.uuid, { version: 3, apps: {} });
    const agent = await agentFor(dev, c.url);
    await waitFor('target v3', async () => (await state(agent)).target?.version === 3);
    await waitFor('a report of v3', () => {
      const last = c.admin.received(dev.uuid).reports.last as { state?: { targetVersion?: number } } | null;
      return last?.state?.targetVersion === 3;
    });
    const h = await conn(agent);
    expect(h.status).toBe('online');
    // Reports went through the outbox and its HTTP sink, and count as the seed's "report" operation.
    await waitFor('lastReportSuccess', async () => (await conn(agent)).lastReportSuccess > 0);

    c.admin.setTarget(dev.uuid, { version: 4, apps: {} });
    const t0 = Date.now();
    const r = await fetch(`${agent.apiUrl}/v1/update`, { method: 'POST', headers: { authorization: `Bearer ${agent.key}` } });
    expect(r.status).toBe(202);
    await waitFor('target v4', async () => (await state(agent)).target?.version === 4);
    // The poll interval is a minute: only the trigger explains a change this fast.
    expect(Date.now() - t0).toBeLessThan(10_000);
    // Reports are merge patches against what the cloud acknowledged: the second carries only the change.
    await waitFor('a report of v4', () => (c.admin.received(dev.uuid).reports.last as { state?: { targetVersion?: number } } | null)?.state?.targetVersion === 4);
    const last = c.admin.received(dev.uuid).reports.last as { state: Record<string, unknown> };
    expect(Object.keys(last.state)).toEqual(['targetVersion']);
  });

  it('rejects an invalid target whole, keeps the last good one, and says why with the path', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    c.admin.setTarget(dev.uuid, { version: 1, apps: { a: { services: { web: { image: 'nginx:1', ports: ['8080:80'] } } } } });
    const agent = await agentFor(dev, c.url);
    await waitFor('target v1', async () => (await state(agent)).target?.version === 1);
    c.admin.setTarget(dev.uuid, {
      version: 2,
      apps: { a: { services: { web: { image: 'nginx:1', ports: ['8080:80'] }, api: { runtime: 'kubernetes', image: 'x' }, db: { image: 'pg', ports: ['8080:5432'] } } } },
    });
    await fetch(`${agent.apiUrl}/v1/update`, { method: 'POST', headers: { authorization: `Bearer ${agent.key}` } });
    const s = await waitFor('a rejection', async () => {
      const v = await state(agent);
      return v.lastRejection ? v : undefined;
    });
    expect(s.target?.version).toBe(1);
    expect(s.lastRejection?.message).toContain('apps.a.services.api.runtime: expected one of "docker", "process", "auto", got "kubernetes"');
    expect(s.lastRejection?.message).toContain('apps.a.services.db.ports.0: expected a host port not already used');
  });
});

describe('faults injected by the devcloud', () => {
  it('counts 500s as failures and recovers', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    c.admin.setTarget(dev.uuid, { version: 7, apps: {} });
    await c.admin.setFaults({ fail: { count: 4, status: 500, path: '/state', method: 'GET' } });
    const agent = await agentFor(dev, c.url);
    await waitFor('target v7', async () => (await state(agent)).target?.version === 7);
    const h = await conn(agent);
    expect(h.pollFailures).toBeGreaterThanOrEqual(1);
    expect(h.status).toBe('online');
    expect(c.admin.faults().fired.fail).toBe(4);
  });

  it('waits at least Retry-After after a 429', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    c.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    const agent = await agentFor(dev, c.url);
    await waitFor('target v1', async () => (await state(agent)).target?.version === 1);
    await c.admin.setFaults({ throttle: { status: 429, retryAfter: '3', count: 1, path: '/state$', method: 'GET' } });
    const before = c.admin.received(dev.uuid).requests.byRoute[STATE_GET] ?? 0;
    await fetch(`${agent.apiUrl}/v1/update`, { method: 'POST', headers: { authorization: `Bearer ${agent.key}` } });
    await waitFor('the throttled poll', () => (c.admin.received(dev.uuid).requests.byRoute[STATE_GET] ?? 0) === before + 1, 10_000, 10);
    const throttledAt = Date.now();
    await waitFor('the next poll', () => (c.admin.received(dev.uuid).requests.byRoute[STATE_GET] ?? 0) === before + 2, 15_000, 10);
    // Retry-After: 3 is honoured even though the backoff alone would retry within 0.2-2 s.
    expect(Date.now() - throttledAt).toBeGreaterThanOrEqual(2_900);
  });

  it('times out a hung request and carries on', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    c.admin.setTarget(dev.uuid, { version: 2, apps: {} });
    await c.admin.setFaults({ hang: { count: 1, path: '/state$', method: 'GET' } });
    const agent = await agentFor(dev, c.url, {}, { cloud: { apiUrl: c.url, requestTimeoutMs: 1_000 } });
    await waitFor('a timeout', async () => (await conn(agent)).channels.api?.lastError?.includes('timed out after 1000 ms'));
    await waitFor('target v2', async () => (await state(agent)).target?.version === 2);
  });

  it('goes offline on refused connections and comes back when the cloud listens again', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    c.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    const agent = await agentFor(dev, c.url, { offline: { probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } });
    await waitFor('online', async () => (await conn(agent)).status === 'online' && (await state(agent)).target?.version === 1);
    await c.admin.setFaults({ refuse: true });
    await fetch(`${agent.apiUrl}/v1/update`, { method: 'POST', headers: { authorization: `Bearer ${agent.key}` } });
    const off = await waitFor('offline', async () => {
      const h = await conn(agent);
      return h.status === 'offline' ? h : undefined;
    });
    // A refused connect, or a kept-alive connection the refusing cloud closed under a request (the
    // agent sends more than polls: a health report, log chunks of its own warnings).
    expect(off.channels.api?.lastError).toMatch(/ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET/);
    await c.admin.clearFaults();
    await waitFor('online again', async () => (await conn(agent)).status === 'online', 20_000);
    // The return sends a health report with the outage that just ended.
    // (The report made at the start has no outage yet: the one of the return is looked for.)
    const health = await waitFor('a health report with the outage', () =>
      c.admin.health(dev.uuid).health.find((h) => ((h.health as { outages?: unknown[] }).outages ?? []).length > 0),
    );
    const body = health.health as { outages: { end: number | null; cause: string }[] };
    expect(body.outages[0]?.end).not.toBeNull();
    // The outage's first failure: a refused connect, or a kept-alive connection the refusing cloud
    // reset or closed (undici says UND_ERR_SOCKET when the close comes between requests).
    expect(body.outages[0]?.cause).toMatch(/ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET/);
  });
});

describe('outages of the cloud process', () => {
  it('is back online within the probe interval after the cloud returns, not after the backoff', async () => {
    const dataFile = join(dirs.make(), 'cloud.db');
    let c = await spawnDevCloud({ dataFile });
    clouds.push(c);
    const dev = device();
    const admin = (await import('../helpers/devcloud.js')).adminClient(c.adminUrl);
    await admin.createDevice(dev);
    await admin.setTarget(dev.uuid, { version: 1, apps: {} });
    // Offline for want of a connection, the poll loop itself retries only every 300 s
    // (offlineRetryIntervalSeconds): only the probe can bring it back sooner.
    const agent = await agentFor(dev, c.url, {
      pollIntervalMs: 1_000,
      offline: { offlineAfterFailures: 1, probeMaxIntervalSeconds: 2, offlineRetryIntervalSeconds: 300, wakeSpreadSeconds: 4 },
    });
    await waitFor('online', async () => (await conn(agent)).status === 'online' && (await state(agent)).target?.version === 1);
    await c.kill();
    clouds.splice(clouds.indexOf(c), 1);
    // Down until the poll loop itself has failed: then every loop that could bring the channel back sleeps
    // out the 300 s floor, and only the probe's wake can end it early.
    await waitFor('offline, the poll failed', async () => {
      const c = await conn(agent);
      return c.status === 'offline' && c.pollFailures >= 1;
    }, 30_000);
    const failuresWhileDown = (await conn(agent)).pollFailures;
    c = await spawnDevCloud({ dataFile, port: c.port });
    clouds.push(c);
    const back = Date.now();
    await waitFor('online again', async () => (await conn(agent)).status === 'online', 40_000, 50);
    const took = Date.now() - back;
    // Probe interval (2 s) + the wake's spread (wakeSpreadSeconds, 4 s) + margin for a busy machine; the
    // backoff floor would be 300 s.
    expect(took).toBeLessThan(16_000);
    // The loop did not hammer the dead cloud while it waited.
    expect(failuresWhileDown).toBeLessThanOrEqual(2);
  });

  it('keeps the last target in force across an agent restart while the cloud is down', async () => {
    const c = await cloud();
    const dev = device();
    c.admin.createDevice(dev);
    const doc = { version: 5, apps: { sensors: { services: { bridge: { runtime: 'process', command: ['/usr/bin/env'] } } } } };
    c.admin.setTarget(dev.uuid, doc);
    const dataDir = dirs.make();
    const first = await agentFor(dev, c.url, {}, {}, dataDir);
    await waitFor('target v5', async () => (await state(first)).target?.version === 5);
    expect((await first.stop()).code).toBe(0);
    agents.splice(agents.indexOf(first), 1);
    const url = c.url;
    await c.close();
    clouds.splice(clouds.indexOf(c), 1);

    const second = await agentFor(dev, url, {}, {}, dataDir);
    const s = await state(second);
    expect(s.target?.version).toBe(5);
    expect(Object.keys(s.target?.document.apps ?? {})).toEqual(['sensors']);
    await waitFor('offline', async () => (await conn(second)).status === 'offline');
    expect((await state(second)).target?.version).toBe(5);
  });
});
