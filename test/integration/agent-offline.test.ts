import { expect, it } from 'vitest';
import { spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// Issue 13 on the built agent: graceful degradation and health reports through the outbox. The
// devcloud's fault switches make it unreachable, or answer 503 on one endpoint; a real program is the job.
const env = agentsWithDevCloud();
const { dirs, agents } = env;

interface Degradation {
  mode: string;
  reason: string | null;
  features: { name: string; order: number; paused: boolean }[];
}
interface ShadowDoc {
  desired: Record<string, unknown>;
  desiredVersion: number | null;
  overrides: Record<string, unknown> | null;
  conflicts: unknown[];
}

it('offline beyond the threshold: jobs pause (one under way finishes, its result arrives after the return) and the shadow goes local (a change made offline merges after the return)', async () => {
  const dev = { uuid: `degrade-${process.pid}`, apiKey: 'degrade-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  env.cloud.admin.setShadowDesired(dev.uuid, { setpoint: 20, mode: 'auto' });
  const job = env.cloud.admin.createJob(dev.uuid, { type: 'run-command', params: { command: ['/bin/sleep', '5'] }, timeoutSeconds: 120 }).id;
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 1_000 },
      features: { metrics: false },
      jobs: { pollIntervalMs: 1_000, allowedCommands: ['/bin/sleep'] },
      settings: {
        pollIntervalMs: 1_000,
        offline: { offlineThresholdSeconds: 1, offlineAfterFailures: 1, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 },
      },
    },
  });
  agents.push(agent);
  const degradation = async (): Promise<Degradation> => ((await agent.get('/v2/connection')).body as { degradation: Degradation }).degradation;
  const shadow = async (): Promise<ShadowDoc> => (await agent.get('/v2/shadow')).body as ShadowDoc;

  await waitFor('the job under way at the cloud', () => env.cloud.admin.job(dev.uuid, job).status === 'IN_PROGRESS', 20_000);
  await waitFor('the desired state from the cloud', async () => (await shadow()).desiredVersion === 1, 20_000);

  // The cloud goes away for longer than the threshold.
  await env.cloud.admin.setFaults({ refuse: true });
  await waitFor('degraded', async () => (await degradation()).mode === 'degraded', 30_000);
  const d = await degradation();
  expect(d.reason).toMatch(/^offline for \d+ s \(threshold 1 s\)$/);
  expect(d.features).toEqual([
    { name: 'jobs', order: 20, paused: true },
    { name: 'shadow', order: 30, paused: true },
  ]);

  // Offline: the job runs to its end locally; an operator overrides the mode; the cloud changes the setpoint.
  await waitFor('the job finished locally', async () => ((await agent.get('/v2/jobs')).body as { recent: { id: string; status: string }[] }).recent.some((j) => j.id === job && j.status === 'SUCCEEDED'), 30_000);
  expect(env.cloud.admin.job(dev.uuid, job).status).toBe('IN_PROGRESS');
  expect((await agent.send('PATCH', '/v2/shadow', { desired: { mode: 'manual' } })).status).toBe(200);
  env.cloud.admin.setShadowDesired(dev.uuid, { setpoint: 22, mode: 'auto' });

  // Back: the result arrives, the features resume (within the stagger), the shadow merges 3-way.
  await env.cloud.admin.clearFaults();
  await waitFor('the job result at the cloud', () => env.cloud.admin.job(dev.uuid, job).status === 'SUCCEEDED', 30_000);
  expect(env.cloud.admin.job(dev.uuid, job).updates.map((u) => u.status)).toEqual(['IN_PROGRESS', 'SUCCEEDED']);
  await waitFor('normal again', async () => (await degradation()).mode === 'normal', 30_000);
  expect((await degradation()).features.every((f) => !f.paused)).toBe(true);
  await waitFor('the cloud change merged', async () => (await shadow()).desiredVersion === 2, 20_000);
  const merged = await shadow();
  expect(merged.desired).toEqual({ setpoint: 22, mode: 'manual' });
  expect(merged.overrides).toEqual({ mode: 'manual' });
  expect(agent.records().some((l) => String(l.msg) === 'entering degraded mode: cloud-dependent features paused')).toBe(true);
  expect(agent.records().some((l) => String(l.msg) === 'leaving degraded mode: features resumed')).toBe(true);
}, 90_000);

interface Queue {
  channels: Record<string, { depth: number }>;
}

it('a health report queued on the return from offline survives a kill -9 and a restart with the cloud still refusing it, and arrives once the cloud takes it', async () => {
  const dev = { uuid: `health-${process.pid}`, apiKey: 'health-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  const config = {
    device: dev,
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 1_000 },
    features: { metrics: false },
    // Two failures in a row take the channel offline: a 503 of the health endpoint alone, between
    // answered polls, does not (with one, each would be an outage of its own and push the first one
    // out of the list of outages a report carries).
    settings: { pollIntervalMs: 1_000, offline: { offlineAfterFailures: 2, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
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
  await env.cloud.admin.setFaults({ refuse: true });
  await waitFor('offline', async () => (await status(first)) === 'offline', 20_000);
  await env.cloud.admin.setFaults({ refuse: null, throttle: { status: 503, retryAfter: 60, path: '/health$', method: 'POST' } });
  await waitFor('online again', async () => (await status(first)) === 'online', 20_000);
  await waitFor('the report waiting in the outbox', async () => ((await first.get('/v2/queue')).body as Queue).channels['health']?.depth === 1, 20_000);
  expect(env.cloud.admin.health(dev.uuid).health).toEqual([]);

  await first.stop('SIGKILL');
  agents.splice(0);
  // The restart, with the cloud still refusing the report: it is still queued.
  const second = await start();
  await waitFor('the report queued after the restart', async () => (((await second.get('/v2/queue')).body as Queue).channels['health']?.depth ?? 0) >= 1, 20_000);
  expect(env.cloud.admin.health(dev.uuid).health).toEqual([]);
  await env.cloud.admin.clearFaults();
  const report = await waitFor('the report at the cloud', () => env.cloud.admin.health(dev.uuid).health[0], 30_000);
  const outages = (report.health as { outages: { end: number | null; cause: string }[] }).outages;
  // The outage of the first run, ended: the report as it was when queued. The latest replaced those
  // waiting; one in flight at the kill kept its place and may arrive too. (A kept-alive connection the
  // refusing cloud closed between requests reads UND_ERR_SOCKET.)
  expect(outages.some((o) => o.end !== null && /ECONNREFUSED|ECONNRESET|UND_ERR_SOCKET/.test(o.cause))).toBe(true);
  await waitFor('the queue empty', async () => ((await second.get('/v2/queue')).body as Queue).channels['health']?.depth === 0, 30_000);
  // At most: the one in flight at the kill, the one the restart made (it replaced the one waiting),
  // and one for the second run's own return from offline (the refused reports took its channel offline).
  expect(env.cloud.admin.health(dev.uuid).health.length).toBeLessThanOrEqual(3);
}, 90_000);
