import { readdirSync, readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { processStartTicks } from '../../src/util/process-group.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// The built agent as a child process, the devcloud's jobs API, real programs.
const env = agentsWithDevCloud();
const { dirs, agents } = env;

let n = 0;
function device(): { uuid: string; apiKey: string } {
  const dev = { uuid: `jobs-${process.pid}-${++n}`, apiKey: `jobs-key-${n}-0123456789` };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  return dev;
}

function config(dev: { uuid: string; apiKey: string }): Record<string, unknown> {
  return {
    device: dev,
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
    features: { metrics: false },
    jobs: { pollIntervalMs: 1_000, allowedCommands: ['/bin/echo', '/bin/sleep'] },
    settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2 } },
  };
}

async function start(dataDir: string, dev: { uuid: string; apiKey: string }): Promise<AgentProcess> {
  const agent = await spawnAgent({ dataDir, config: config(dev) });
  agents.push(agent);
  return agent;
}

const statusOf = (uuid: string, id: string): string => env.cloud.admin.job(uuid, id).status;

/** The command lines of the processes whose parent is `ppid` (from /proc). */
function childrenOf(ppid: number): string[] {
  const out: string[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] !== String(ppid)) continue;
      out.push(readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' '));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

it('runs jobs from the cloud and reports each one: succeeded, not allowed, unknown type, timed out', async () => {
  const dev = device();
  const echo = env.cloud.admin.createJob(dev.uuid, { type: 'run-command', params: { command: ['/bin/echo', 'hello', '; reboot'] } }).id;
  const shell = env.cloud.admin.createJob(dev.uuid, { type: 'run-command', params: { command: ['/bin/sh', '-c', 'reboot'] } }).id;
  const unknown = env.cloud.admin.createJob(dev.uuid, { type: 'format-disk' }).id;
  const slow = env.cloud.admin.createJob(dev.uuid, { type: 'run-command', params: { command: ['/bin/sleep', '30'] }, timeoutSeconds: 1 }).id;
  const agent = await start(dirs.make(), dev);

  await waitFor('every job answered', () => [echo, shell, unknown, slow].every((id) => statusOf(dev.uuid, id) !== 'IN_PROGRESS' && statusOf(dev.uuid, id) !== 'QUEUED'), 30_000);
  const done = env.cloud.admin.job(dev.uuid, echo);
  expect(done.status).toBe('SUCCEEDED');
  expect(done.updates.map((u) => u.status)).toEqual(['IN_PROGRESS', 'SUCCEEDED']);
  expect(done.updates[1]?.details).toMatchObject({ exitCode: 0, stdout: 'hello ; reboot\n' });

  const refused = env.cloud.admin.job(dev.uuid, shell);
  expect(refused.status).toBe('REJECTED');
  expect(JSON.stringify(refused.updates.at(-1)?.details)).toContain('\\"/bin/sh\\" is not in jobs.allowedCommands');
  expect(env.cloud.admin.job(dev.uuid, unknown)).toMatchObject({ status: 'REJECTED' });
  expect(JSON.stringify(env.cloud.admin.job(dev.uuid, unknown).updates)).toContain('unknown job type \\"format-disk\\"; this agent runs: plan-target, poll-target, purge-app, reboot, restart-app, restart-service, run-command, shutdown');
  expect(env.cloud.admin.job(dev.uuid, slow)).toMatchObject({ status: 'TIMED_OUT' });

  // The same, locally.
  const local = (await agent.get('/v2/jobs')).body as { enabled: boolean; counts: Record<string, number>; recent: { id: string; status: string }[] };
  expect(local.enabled).toBe(true);
  expect(local.counts).toMatchObject({ SUCCEEDED: 1, REJECTED: 2, TIMED_OUT: 1, RUNNING: 0 });
  expect(local.recent.find((j) => j.id === echo)?.status).toBe('SUCCEEDED');
});

it('reports a job that was running when the agent was SIGKILLed as FAILED after the restart, stops what it left running, and does not run it again', async () => {
  const dev = device();
  const dataDir = dirs.make();
  const first = await start(dataDir, dev);
  const id = env.cloud.admin.createJob(dev.uuid, { type: 'run-command', params: { command: ['/bin/sleep', '30'] }, timeoutSeconds: 60 }).id;
  await waitFor('the job started', () => env.cloud.admin.job(dev.uuid, id).updates.some((u) => u.status === 'IN_PROGRESS'), 15_000);
  // IN_PROGRESS can reach the cloud before the program runs (it is delivered once committed, while
  // its fsync is under way): kill once the agent's sleep is there (its pid is recorded in the same turn).
  await waitFor('the program running', () => childrenOf(first.child.pid!).some((c) => c === '/bin/sleep 30'), 15_000);
  await first.stop('SIGKILL');
  await start(dataDir, dev);
  await waitFor('the job reported failed', () => statusOf(dev.uuid, id) === 'FAILED', 15_000);
  const details = env.cloud.admin.job(dev.uuid, id).updates.at(-1)?.details as { error: string; stoppedLeftoverProcess?: number };
  expect(details.error).toBe('the agent restarted while the job ran; it was not run again');
  // The sleep the killed agent left behind was found by its pid and start time, and stopped.
  expect(details.stoppedLeftoverProcess).toEqual(expect.any(Number));
  await waitFor('the leftover sleep gone', () => processStartTicks(details.stoppedLeftoverProcess as number) === null, 10_000);
});

it('restarts a service of the target on a restart-service job, and rejects one that is not there, naming those that are', async () => {
  const dev = device();
  env.cloud.admin.setTarget(dev.uuid, { version: 2, apps: { edge: { services: { ticker: { runtime: 'process', command: ['/bin/sleep', '3600'], restart: 'always' } } } } });
  const agent = await start(dirs.make(), dev);
  type Svc = { status: string; startedAt: number | null };
  const ticker = async (): Promise<Svc | undefined> =>
    ((await agent.get('/v2/state')).body as { current: { apps: Record<string, { services: Record<string, Svc> }> } }).current.apps.edge?.services.ticker;
  const before = await waitFor('the service running', async () => {
    const t = await ticker();
    return t?.status === 'running' ? t : undefined;
  }, 20_000);
  const restart = env.cloud.admin.createJob(dev.uuid, { type: 'restart-service', params: { app: 'edge', service: 'ticker' } }).id;
  const wrong = env.cloud.admin.createJob(dev.uuid, { type: 'restart-service', params: { app: 'edge', service: 'tocker' } }).id;
  await waitFor('both answered', () => ['SUCCEEDED', 'REJECTED'].includes(statusOf(dev.uuid, restart)) && statusOf(dev.uuid, wrong) === 'REJECTED', 30_000);
  expect(env.cloud.admin.job(dev.uuid, restart)).toMatchObject({ status: 'SUCCEEDED' });
  expect(env.cloud.admin.job(dev.uuid, restart).updates.at(-1)?.details).toEqual({ instances: 1 });
  expect(JSON.stringify(env.cloud.admin.job(dev.uuid, wrong).updates.at(-1)?.details)).toContain('no service edge/tocker in the target in force (services: edge/ticker)');
  // Running again, started anew.
  await waitFor('running with a later start', async () => {
    const t = await ticker();
    return t?.status === 'running' && (t.startedAt ?? 0) > (before.startedAt ?? 0);
  }, 20_000);
});
