import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startEngine, startRegistry, type TestEngine, type TestRegistry } from '../helpers/docker.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Image pulls from a registry that wants a login (Debian's docker-registry with an htpasswd user on
 * loopback), through the whole agent: the target's credentials, the device's own, wrong and
 * missing ones; and the password never shows anywhere the agent shows or sends things.
 */

const USER = 'fleet';
const PASSWORD = `Right-pw-${process.pid}-x7`;
const WRONG = `Wrong-pw-${process.pid}-q3`;
/** A long-running command that stops at once on SIGTERM (busybox sh as pid 1 would ignore it). */
const RUN = ['/bin/sh', '-c', 'trap "exit 0" TERM; sleep 1000 & wait'];

const dirs = tempDirs();
let cloud: DevCloud;
let engine: TestEngine;
let reg: TestRegistry;
let SEC: string;
let V1: string;
let V2: string;
/** Pulled only by the device-credentials test (images are shared on the engine). */
let DEV: string;
const agents: AgentProcess[] = [];

beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
  engine = await startEngine();
  reg = await startRegistry({ login: { username: USER, password: PASSWORD } });
  await engine.buildImage('local/auth-app:1', 'auth-v1');
  await engine.buildImage('local/auth-app:2', 'auth-v2');
  V1 = await reg.push(engine.docker, 'local/auth-app:1', 'auth-app:1');
  V2 = await reg.push(engine.docker, 'local/auth-app:2', 'auth-app:2');
  await engine.buildImage('local/auth-dev:1', 'auth-dev');
  DEV = await reg.push(engine.docker, 'local/auth-dev:1', 'auth-dev:1');
  await engine.buildImage('local/auth-sec:1', 'auth-sec');
  SEC = await reg.push(engine.docker, 'local/auth-sec:1', 'auth-sec:1');
}, 180_000);
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGTERM');
});
afterAll(async () => {
  await cloud?.close();
  await reg?.destroy();
  await engine?.stop();
  dirs.cleanup();
}, 120_000);

interface Svc {
  status: string;
  lastError: string | null;
  image: string | null;
}
interface StateView {
  target: { document: { version: number; registries?: Record<string, Record<string, unknown>> } } | null;
  current: { targetVersion: number | null; apps: Record<string, { services: Record<string, Svc> }> };
}

async function agentFor(uuid: string, workloads: Record<string, unknown> = {}): Promise<AgentProcess> {
  const dev = { uuid, apiKey: `${uuid}-key-0123456789` };
  cloud.admin.createDevice(dev);
  const a = await spawnAgent({
    dataDir: dirs.make(),
    env: { DOCKER_HOST: engine.host },
    config: {
      device: dev,
      cloud: { apiUrl: cloud.url },
      workloads,
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 200, reconciliationIntervalMs: 2_000 },
    },
  });
  agents.push(a);
  return a;
}

/** Gives the device a new target and has it poll now (not after its 60 s interval). */
async function deploy(a: AgentProcess, uuid: string, target: Record<string, unknown>): Promise<void> {
  cloud.admin.setTarget(uuid, target);
  expect((await a.send('POST', '/v1/update', {})).status).toBe(202);
}

async function service(a: AgentProcess, app: string): Promise<{ view: StateView; svc: Svc | undefined }> {
  const view = (await a.get('/v2/state')).body as StateView;
  return { view, svc: view.current.apps[app]?.services.web };
}

async function container(app: string): Promise<{ id: string; state: string; image: string }[]> {
  const list = await engine.docker.listContainers({ all: true, filters: { label: [`io.iotistic.app=${app}`] } });
  return list.map((c) => ({ id: c.Id, state: c.State, image: c.Image }));
}

/** Everything the agent shows or sends, as text: the local API, status --json, its log, what the devcloud received. */
async function everythingShown(a: AgentProcess, uuid: string): Promise<Record<string, string>> {
  const status = await runCli(['status', '--api', a.apiUrl, '--key', a.key, '--json']);
  expect(status.code).toBe(0);
  return {
    '/v2/state': JSON.stringify((await a.get('/v2/state')).body),
    '/v2/config': JSON.stringify((await a.get('/v2/config')).body),
    '/v2/jobs': JSON.stringify((await a.get('/v2/jobs')).body),
    '/metrics': JSON.stringify((await a.get('/metrics')).body),
    'status --json': status.stdout + status.stderr,
    'agent log (debug)': JSON.stringify(a.records()) + a.stderr(),
    'state reports': JSON.stringify(cloud.admin.reports(uuid, { limit: 1000 })),
    'health reports': JSON.stringify(cloud.admin.health(uuid, { limit: 1000 })),
    'logs channel': JSON.stringify(cloud.admin.logs(uuid)),
    'other messages': JSON.stringify(cloud.admin.messages(uuid)),
  };
}

function expectNowhere(shown: Record<string, string>, secrets: string[]): void {
  for (const [where, text] of Object.entries(shown)) {
    for (const secret of secrets) expect(text.includes(secret), `${where} shows a password`).toBe(false);
  }
}

describe('registry credentials for image pulls (docker-registry with htpasswd)', () => {
  it('right credentials pull; wrong ones keep the old version running with a clear error; missing ones say authentication is required; a corrected password is tried at once', async () => {
    const uuid = `reg-auth-${process.pid}`;
    const app = `authapp${process.pid}`;
    const a = await agentFor(uuid);
    const login = (password: string) => ({ [reg.address]: { username: USER, password } });

    // (1) Right credentials in the target: the image comes from the registry that wants a login.
    await deploy(a, uuid, { version: 1, registries: login(PASSWORD), apps: { [app]: { services: { web: { image: V1, command: RUN } } } } });
    await waitFor('v1 running', async () => (await service(a, app)).svc?.status === 'running', 90_000);
    const [first] = await container(app);
    expect(first).toMatchObject({ state: 'running', image: V1 });
    const { view } = await service(a, app);
    expect(view.target?.document.registries).toEqual({ [reg.address]: { username: USER, password: '[redacted]' } });

    // (2) An update to v2 with a wrong password: a clear pull error, and v1 keeps running.
    await deploy(a, uuid, { version: 2, registries: login(WRONG), apps: { [app]: { services: { web: { image: V2, command: RUN } } } } });
    const wrong = await waitFor('the pull refused', async () => {
      const s = (await service(a, app)).svc;
      return s?.lastError?.includes('refused') ? s : undefined;
    }, 60_000);
    expect(wrong.lastError).toContain(`pull of ${V2} was refused by the registry: wrong credentials for ${reg.address} (user "${USER}", from the target)`);
    expect(await container(app)).toEqual([first]);

    // (3) No credentials at all: "authentication required", at once (the credentials changed), v1 still running.
    await deploy(a, uuid, { version: 3, apps: { [app]: { services: { web: { image: V2, command: RUN } } } } });
    const missing = await waitFor('the anonymous pull refused', async () => {
      const s = await service(a, app);
      return s.view.current.targetVersion === 3 && s.svc?.lastError?.includes('authentication required') ? s.svc : undefined;
    }, 30_000);
    expect(missing.lastError).toContain(`pull of ${V2} was refused by the registry: authentication required: no credentials for ${reg.address}`);
    expect(missing.status).toBe('backoff');
    expect(await container(app)).toEqual([first]);

    // The corrected password is tried now, not after the backoff: v2 replaces v1.
    await deploy(a, uuid, { version: 4, registries: login(PASSWORD), apps: { [app]: { services: { web: { image: V2, command: RUN } } } } });
    await waitFor('v2 running', async () => {
      const cs = await container(app);
      return cs.length === 1 && cs[0]?.image === V2 && cs[0].state === 'running';
    }, 60_000);
    await waitFor('the state reports to reach version 4', () => JSON.stringify(cloud.admin.reports(uuid, { limit: 1000 })).includes('"targetVersion":4'));

    // (5) Neither password anywhere the agent shows or sends things (the user and the registry are there).
    const shown = await everythingShown(a, uuid);
    expect(shown['/v2/state']).toContain(`{"${reg.address}":{"username":"${USER}","password":"[redacted]"}}`);
    expectNowhere(shown, [PASSWORD, WRONG]);
  }, 240_000);

  it('{ "device": true } uses the device\'s own credentials from workloads.registries, never shown', async () => {
    const uuid = `reg-dev-${process.pid}`;
    const app = `devapp${process.pid}`;
    const a = await agentFor(uuid, { registries: { [reg.address]: { username: USER, password: PASSWORD } } });
    await deploy(a, uuid, { version: 1, registries: { [reg.address]: { device: true } }, apps: { [app]: { services: { web: { image: DEV, command: RUN } } } } });
    await waitFor('it running', async () => (await service(a, app)).svc?.status === 'running', 90_000);
    expect(await container(app)).toMatchObject([{ state: 'running', image: DEV }]);
    const pulled = a.records().find((r) => String(r.msg) === `pulling ${DEV}`);
    expect(pulled).toMatchObject({ registry: reg.address, user: USER, credentials: 'device' });
    expectNowhere(await everythingShown(a, uuid), [PASSWORD]);
  }, 180_000);

  it('{ "username", "passwordSecret" } takes the password from a secret the cloud delivers: the pull waits for it, then runs', async () => {
    const uuid = `reg-sec-${process.pid}`;
    const app = `secapp${process.pid}`;
    const a = await agentFor(uuid);
    const registries = { [reg.address]: { username: USER, passwordSecret: 'registry-pw' } };
    await deploy(a, uuid, { version: 1, registries, apps: { [app]: { services: { web: { image: SEC, command: RUN } } } } });
    const waiting = await waitFor('the pull waiting for the secret', async () => {
      const s = (await service(a, app)).svc;
      return s?.lastError?.includes('waiting for secret registry-pw') ? s : undefined;
    }, 60_000);
    expect(waiting.status).not.toBe('running');
    expect(await container(app)).toEqual([]);

    // The secret set in the cloud: the target's secretsVersion changes, the device fetches it, the pull goes through.
    cloud.admin.setSecret(uuid, 'registry-pw', { value: PASSWORD });
    expect((await a.send('POST', '/v1/update', {})).status).toBe(202);
    await waitFor('it running', async () => (await service(a, app)).svc?.status === 'running', 90_000);
    expect(await container(app)).toMatchObject([{ state: 'running', image: SEC }]);
    expect(((await a.get('/v2/state')).body as StateView).target?.document.registries).toEqual(registries);
    expectNowhere(await everythingShown(a, uuid), [PASSWORD]);
  }, 180_000);
});
