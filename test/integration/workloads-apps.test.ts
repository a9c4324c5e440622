import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import type { CurrentState, ServiceState } from '../../src/workloads/types.js';
import { waitFor } from '../helpers/agent-process.js';
import { fileEngine, fileRegistry } from '../helpers/docker.js';
import { workloadRig } from '../helpers/workload-rig.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/**
 * Apps as a unit on a real Docker engine (a private dockerd when none runs): the app's own network
 * (services reach each other by name), dependsOn start order, and updates that wait for healthy.
 * The images come from the loopback registry, as on a device.
 */

const eng = fileEngine();
const reg = fileRegistry();
let IMG: string;
const dirs = tempDirs();

beforeAll(async () => {
  IMG = await reg.push(eng.docker, await eng.buildImage('local/apps:1', 'apps'), 'apps:1');
}, 90_000);

const cleanup = cleanupsAfterEach();

afterAll(() => dirs.cleanup());

/** Runs `script` as the container's main process, stopping at once on SIGTERM. */
function sh(script: string): string[] {
  return ['/bin/sh', '-c', `trap "exit 0" TERM; ${script} & wait`];
}
const RUN = sh('sleep 1000');

function target(version: number, apps: Record<string, unknown>): TargetState {
  const r = validateTarget({ version, apps });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

let agents = 0;

interface Agent {
  id: string;
  source: MemoryTargetSource;
  states: CurrentState[];
  service(app: string, name: string): ServiceState | undefined;
  applied(version: number): boolean;
  /** Sets the next target, its plan taken first; `retries`: "app/service" keys that retry by design. */
  apply(t: TargetState, retries?: string[]): Promise<void>;
}

/** An agent's reconciler on the engine; every target it applies is checked against its plan preview. */
function agent(t: TargetState): Agent {
  const rig = workloadRig(eng, t, { agentId: `${eng.runId}-apps${++agents}`, dataDir: dirs.make(), intervalMs: 2_000, crashBackoff: { minMs: 500, maxMs: 2_000 }, fastWatch: true });
  cleanup(() => rig.stop());
  return {
    id: rig.id,
    source: rig.source,
    apply: rig.apply,
    get states() {
      return rig.states.map((s) => s.state);
    },
    service: rig.service,
    applied: rig.applied,
  };
}

async function containersOf(agentId: string, service: string): Promise<{ id: string; state: string }[]> {
  const list = await eng.docker.listContainers({ all: true, filters: { label: [`io.iotistic.agent=${agentId}`, `io.iotistic.service=${service}`] } });
  return list.map((c) => ({ id: c.Id, state: c.State }));
}

async function networksOf(agentId: string): Promise<{ name: string; app: string | undefined }[]> {
  const list = await eng.docker.listNetworks({ filters: { label: [`io.iotistic.agent=${agentId}`] } });
  return list.map((n) => ({ name: n.Name, app: n.Labels?.['io.iotistic.app'] }));
}

async function logsOf(id: string): Promise<string> {
  const buf = (await eng.docker.getContainer(id).logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
  return buf.toString('utf8');
}

describe('apps as a unit on a real Docker engine', () => {
  it('two services of one app talk by name on the app network, which goes with the app', async () => {
    const a = agent(
      target(1, {
        shop: {
          services: {
            web: { image: IMG, command: sh('mkdir -p /www && echo hello-from-web > /www/index.html && /bin/busybox httpd -f -p 80 -h /www') },
            client: {
              image: IMG,
              dependsOn: ['web'],
              command: sh('until /bin/busybox wget -q -O /tmp/got http://web/index.html; do sleep 0.2; done; echo "got: $(cat /tmp/got)"; sleep 1000'),
            },
          },
        },
      }),
    );
    await waitFor('v1 applied', () => a.applied(1), 60_000);
    expect(await networksOf(a.id)).toEqual([{ name: 'shop_default', app: 'shop' }]);
    const [client] = await containersOf(a.id, 'client');
    const info = await eng.docker.getContainer(client?.id as string).inspect();
    expect(Object.keys(info.NetworkSettings.Networks)).toEqual(['shop_default']);
    expect(info.NetworkSettings.Networks.shop_default?.Aliases).toContain('client');
    expect(info.Config.Labels['io.iotistic.depends-on']).toBe('web');
    await waitFor('the client fetched the page from "web"', async () => (await logsOf(client?.id as string)).includes('got: hello-from-web'), 30_000);

    await a.apply(target(2, {}));
    await waitFor('v2 applied', () => a.applied(2), 30_000);
    await waitFor('the app network removed', async () => (await networksOf(a.id)).length === 0, 30_000);
    expect(await containersOf(a.id, 'web')).toEqual([]);
  }, 120_000);

  it('starts a service only once the service it depends on is healthy', async () => {
    const a = agent(
      target(1, {
        stack: {
          services: {
            api: { image: IMG, command: RUN, dependsOn: { db: { condition: 'healthy' } } },
            db: {
              image: IMG,
              command: sh('sleep 2; touch /tmp/ready; sleep 1000'),
              healthcheck: { test: ['CMD', '/bin/sh', '-c', 'test -f /tmp/ready'], intervalSeconds: 0.5, timeoutSeconds: 2, retries: 10 },
            },
          },
        },
      }),
    );
    await waitFor('v1 applied', () => a.applied(1), 60_000);
    expect(a.service('stack', 'db')?.status).toBe('running');
    expect(a.service('stack', 'api')?.status).toBe('running');
    const waiting = a.states.map((s) => s.apps.stack?.services.api).find((s) => s?.status === 'waiting');
    expect(waiting?.lastError).toBe('waiting for db to be healthy');
    expect(a.states.some((s) => s.apps.stack?.services.db?.status === 'starting')).toBe(true);

    const [db] = await containersOf(a.id, 'db');
    const [api] = await containersOf(a.id, 'api');
    const dbInfo = await eng.docker.getContainer(db?.id as string).inspect();
    const apiInfo = await eng.docker.getContainer(api?.id as string).inspect();
    const healthyAt = Date.parse(dbInfo.State.StartedAt) + 2_000;
    // api started after db's script made it healthy (2 s after db started).
    expect(Date.parse(apiInfo.State.StartedAt)).toBeGreaterThanOrEqual(healthyAt);
  }, 120_000);

  it('a process with an HTTP health check is starting until it answers; its dependent waits for it', async () => {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    const www = dirs.make();
    writeFileSync(join(www, 'index.html'), 'ok\n');
    const a = agent(
      target(1, {
        native: {
          services: {
            api: {
              runtime: 'process',
              command: ['/bin/sh', '-c', `sleep 1; exec /usr/bin/busybox httpd -f -p 127.0.0.1:${port} -h ${www}`],
              healthcheck: { http: `http://127.0.0.1:${port}/`, intervalSeconds: 0.3, timeoutSeconds: 2, retries: 3 },
            },
            worker: { runtime: 'process', command: ['/bin/sh', '-c', 'exec sleep 1000'], dependsOn: { api: { condition: 'healthy' } } },
          },
        },
      }),
    );
    await waitFor('v1 applied', () => a.applied(1), 60_000).catch((err: unknown) => {
      throw new Error(`${String(err)}: ${JSON.stringify(a.states.at(-1))}`);
    });
    expect(a.service('native', 'api')?.status).toBe('running');
    const seen = a.states.map((s) => s.apps.native?.services);
    expect(seen.some((s) => s?.api?.status === 'starting' && s.worker?.status === 'waiting' && s.worker.lastError === 'waiting for api to be healthy')).toBe(true);
  }, 120_000);

  it('an update whose health check fails does not replace the healthy old version', async () => {
    const svc = (version: string, check: string): object => ({
      image: IMG,
      command: RUN,
      environment: { VERSION: version },
      healthcheck: { test: ['CMD', `/bin/${check}`], intervalSeconds: 0.5, timeoutSeconds: 2, retries: 2, startPeriodSeconds: 0 },
    });
    const a = agent(target(1, { app: { services: { web: svc('1', 'true') } } }));
    await waitFor('v1 applied and healthy', () => a.applied(1) && a.service('app', 'web')?.status === 'running', 60_000);
    const [old] = await containersOf(a.id, 'web');

    await a.apply(target(2, { app: { services: { web: svc('2', 'false') } } }), ['app/web']);
    await waitFor('the new version rejected', () => a.service('app', 'web')?.lastError?.startsWith('new version unhealthy') === true, 60_000);
    // It ran beside the old one (start-new-first) before it was judged.
    expect(a.states.some((s) => s.apps.app?.services.web?.status === 'starting')).toBe(true);
    await waitFor('only the old container left', async () => (await containersOf(a.id, 'web')).length === 1, 30_000);
    expect(await containersOf(a.id, 'web')).toEqual([{ id: old?.id, state: 'running' }]);
    expect(a.service('app', 'web')).toMatchObject({ status: 'running' });
    expect(a.service('app', 'web')?.lastError).toMatch(/^new version unhealthy: unhealthy: exit code 1/);

    // A fixed version replaces it once healthy.
    await a.apply(target(3, { app: { services: { web: svc('3', 'true') } } }));
    await waitFor('v3 applied', () => a.applied(3) && a.service('app', 'web')?.status === 'running', 60_000);
    const now = await containersOf(a.id, 'web');
    expect(now).toHaveLength(1);
    expect(now[0]?.id).not.toBe(old?.id);
    expect(a.service('app', 'web')?.lastError).toBeNull();
  }, 180_000);

  it('a service publishing a host port: the old one is stopped for the new, and started again when the new one fails', async () => {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    const svc = (version: string, check: string): object => ({
      image: IMG,
      command: RUN,
      ports: [`127.0.0.1:${port}:80`],
      environment: { VERSION: version },
      healthcheck: { test: ['CMD', `/bin/${check}`], intervalSeconds: 0.5, timeoutSeconds: 2, retries: 2 },
    });
    const a = agent(target(1, { app: { services: { web: svc('1', 'true') } } }));
    await waitFor('v1 applied and healthy', () => a.applied(1) && a.service('app', 'web')?.status === 'running', 60_000);
    const [old] = await containersOf(a.id, 'web');
    const firstStart = (await eng.docker.getContainer(old?.id as string).inspect()).State.StartedAt;

    await a.apply(target(2, { app: { services: { web: svc('2', 'false') } } }), ['app/web']);
    await waitFor('the new version rejected', () => a.service('app', 'web')?.lastError?.startsWith('new version unhealthy') === true, 60_000);
    await waitFor('the old one running again, alone', async () => {
      const now = await containersOf(a.id, 'web');
      return now.length === 1 && now[0]?.id === old?.id && now[0]?.state === 'running';
    }, 30_000);
    const started = (await eng.docker.getContainer(old?.id as string).inspect()).State.StartedAt;
    // It was stopped for the new one (a host port is bound once) and started again.
    expect(Date.parse(started)).toBeGreaterThan(Date.parse(firstStart));
    await waitFor('running', () => a.service('app', 'web')?.status === 'running', 30_000);
  }, 180_000);
});
