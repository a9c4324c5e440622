import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// The built agent as a child process, the devcloud, real processes. The reboot is a real command too:
// `actions.rebootCommand` points at a script that records its call in a file.
const env = agentsWithDevCloud();
const { dirs, agents } = env;

let n = 0;
function device(target: Record<string, unknown> = { version: 1, apps: {} }): { uuid: string; apiKey: string } {
  const dev = { uuid: `actions-${process.pid}-${++n}`, apiKey: `actions-key-${n}-0123456789` };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, target);
  return dev;
}

/** A reboot command that records each call (its arguments) in `record`. */
function recorder(dir: string): { command: string; record: string } {
  const command = join(dir, 'fake-reboot.sh');
  const record = join(dir, 'reboot-calls.txt');
  writeFileSync(command, `#!/bin/sh\necho "called $*" >> '${record}'\n`);
  chmodSync(command, 0o755);
  return { command, record };
}

async function start(dataDir: string, dev: { uuid: string; apiKey: string }, actions: Record<string, unknown> = {}, workloads: Record<string, unknown> = {}): Promise<AgentProcess> {
  const agent = await spawnAgent({
    dataDir,
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      jobs: { pollIntervalMs: 1_000 },
      actions,
      workloads,
      settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2 } },
    },
  });
  agents.push(agent);
  return agent;
}

const events = (uuid: string, action: string): Record<string, unknown>[] =>
  env.cloud.admin
    .messages(uuid, { limit: 1000 })
    .messages.filter((m) => m.channel === 'events' && (m.payload as { type?: string; action?: string }).type === 'device-action' && (m.payload as { action?: string }).action === action)
    .map((m) => m.payload as Record<string, unknown>);

it('refuses reboot and shutdown unless the device allows them (403, REJECTED), naming the key; nothing runs', async () => {
  const dev = device();
  const dir = dirs.make();
  const power = recorder(dirs.make());
  const agent = await start(dir, dev, { rebootCommand: [power.command], shutdownCommand: [power.command] });
  const local = await agent.send('POST', '/v2/device/reboot');
  expect(local.status).toBe(403);
  expect(JSON.stringify(local.body)).toContain('set actions.allowReboot to true');
  expect((await agent.send('POST', '/v2/device/shutdown')).status).toBe(403);
  const job = env.cloud.admin.createJob(dev.uuid, { type: 'reboot' }).id;
  await waitFor('the job answered', () => env.cloud.admin.job(dev.uuid, job).status === 'REJECTED', 30_000);
  expect(JSON.stringify(env.cloud.admin.job(dev.uuid, job).updates.at(-1)?.details)).toContain('actions.allowReboot');
  await waitFor('the refusals reported as events', () => events(dev.uuid, 'reboot').length === 2, 20_000);
  expect(events(dev.uuid, 'reboot').map((e) => [e.by, e.outcome])).toEqual(expect.arrayContaining([['local-api', 'refused'], ['job', 'refused']]));
  expect(existsSync(power.record)).toBe(false);
  expect(agent.child.exitCode).toBeNull();
});

it('allowed: the job result and the event are queued first, the agent stops, the reboot command runs once; both reach the cloud', async () => {
  const dev = device();
  const dir = dirs.make();
  const power = recorder(dirs.make());
  const agent = await start(dir, dev, { allowReboot: true, rebootCommand: [power.command, 'now'] });
  const job = env.cloud.admin.createJob(dev.uuid, { type: 'reboot' }).id;
  const exit = await waitFor('the agent stopped', () => (agent.child.exitCode !== null ? { code: agent.child.exitCode } : undefined), 30_000);
  expect(exit.code).toBe(0);
  expect(readFileSync(power.record, 'utf8')).toBe('called now\n');
  expect(agent.records().some((r) => r.msg === 'agent stopped')).toBe(true);
  // "After the reboot": the next start delivers what was queued, and does not reboot again.
  await start(dir, dev, { allowReboot: true, rebootCommand: [power.command, 'now'] });
  await waitFor('the job SUCCEEDED in the cloud', () => env.cloud.admin.job(dev.uuid, job).status === 'SUCCEEDED', 30_000);
  expect(env.cloud.admin.job(dev.uuid, job).updates.at(-1)?.details).toEqual({ outcome: 'reboot requested' });
  await waitFor('the event in the cloud', () => events(dev.uuid, 'reboot').length === 1, 20_000);
  expect(events(dev.uuid, 'reboot')[0]).toMatchObject({ by: 'job', jobId: job, outcome: 'done' });
  expect(readFileSync(power.record, 'utf8')).toBe('called now\n');
});

it('restarts an app, previews a target without changing anything, and purges an app\'s data only with its name typed again', async () => {
  const dir = dirs.make();
  // The service's own dir under the runtime's (a service run as another user starts in "/": it names the dir).
  const own = join(dir, 'services', 'apps', 'edge', 'one');
  const keep = `cd '${own}' && { [ -f state.txt ] || cat /proc/sys/kernel/random/uuid > state.txt; }; exec /bin/sleep 3600`;
  const target = {
    version: 2,
    apps: { edge: { services: { one: { runtime: 'process', command: ['/bin/sh', '-c', keep], restart: 'always' }, two: { runtime: 'process', command: ['/bin/sleep', '3600'], restart: 'always' } } } },
  };
  const dev = device(target);
  // As root the agent runs processes as `nobody`, who cannot enter the data dir: root here.
  const agent = await start(dir, dev, {}, process.getuid?.() === 0 ? { processUser: 'root' } : {});
  const state = join(own, 'state.txt');
  const first = await waitFor('the service wrote its state', () => (existsSync(state) ? readFileSync(state, 'utf8') : undefined), 30_000).catch(async (err: unknown) => {
    throw new Error(`${String(err)}; state: ${JSON.stringify((await agent.get('/v2/state')).body)}`);
  });

  const viaCli = await runCli(['restart', 'edge/two', '--api', agent.apiUrl, '--key', agent.key, '--json']);
  expect(viaCli.code).toBe(0);
  expect(JSON.parse(viaCli.stdout)).toEqual({ instances: 1 });
  const restarted = await agent.send('POST', '/v2/apps/edge/restart');
  expect(restarted).toMatchObject({ status: 200, body: { services: { one: { instances: 1 }, two: { instances: 1 } } } });
  expect((await agent.send('POST', '/v2/apps/nope/restart')).status).toBe(404);

  const candidate = { ...target, version: 3, apps: { ...target.apps, web: { services: { s: { runtime: 'process', command: ['/bin/sleep', '5'] } } } } };
  const plan = await agent.send('POST', '/v2/target/plan', candidate);
  expect(plan.status).toBe(200);
  const services = (plan.body as { services: { app: string; service: string; action: string }[] }).services;
  expect(services.map((s) => `${s.app}/${s.service}:${s.action}`).sort()).toEqual(['edge/one:unchanged', 'edge/two:unchanged', 'web/s:create']);
  expect((await agent.send('POST', '/v2/target/plan', { version: 'x' })).status).toBe(400);
  expect(existsSync(join(dir, 'services', 'apps', 'web'))).toBe(false);

  const extra = join(own, 'cache.bin');
  writeFileSync(extra, 'x');
  for (const body of [undefined, {}, { confirm: 'Edge' }]) {
    const refused = await agent.send('POST', '/v2/apps/edge/purge', body);
    expect(refused.status).toBe(400);
    expect(JSON.stringify(refused.body)).toContain('confirm: expected the app\'s name \\"edge\\" typed again');
  }
  expect(readFileSync(state, 'utf8')).toBe(first);
  const purged = await agent.send('POST', '/v2/apps/edge/purge', { confirm: 'edge' });
  expect(purged).toMatchObject({ status: 200, body: { instances: 2 } });
  expect(existsSync(extra)).toBe(false);
  // The services come back on fresh data.
  await waitFor('a new state written', () => existsSync(state) && readFileSync(state, 'utf8') !== first, 30_000);
  await waitFor('the purge reported', () => events(dev.uuid, 'purge-app').some((e) => e.outcome === 'done'), 20_000);
  expect(events(dev.uuid, 'purge-app').map((e) => e.outcome)).toEqual(['refused', 'refused', 'refused', 'done']);
});
