import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { waitFor } from '../helpers/agent-process.js';
import { freePort } from '../helpers/mosquitto.js';
import { fileEngine, fileRegistry, TEST_RUN_LABEL } from '../helpers/docker.js';
import { workloadRig, type WorkloadRig } from '../helpers/workload-rig.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/**
 * The reconciler on a real Docker engine (a private dockerd when none runs) with images built from
 * busybox-static and a real registry on loopback for pulls. Every target applied is checked against
 * its plan preview (PlanApplyCheck): the engine calls made are the plan's steps.
 */

const eng = fileEngine();
const reg = fileRegistry();
let IMG: string;
let IMG2: string;
const dirs = tempDirs();

beforeAll(async () => {
  IMG = await eng.buildImage('local/bb:1', 'v1');
  IMG2 = await eng.buildImage('local/bb:2', 'v2');
}, 60_000);

const cleanup = cleanupsAfterEach();

afterAll(() => dirs.cleanup());

/** A long-running command that stops at once on SIGTERM (busybox sh as pid 1 would ignore it). */
const RUN = ['/bin/sh', '-c', 'trap "exit 0" TERM; sleep 1000 & wait'];

function target(version: number, apps: Record<string, unknown>): TargetState {
  const r = validateTarget({ version, apps });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

let agents = 0;

type Agent = WorkloadRig;

function agent(t: TargetState, opts: { agentId?: string; intervalMs?: number; retries?: string[] } = {}): Agent {
  const rig = workloadRig(eng, t, {
    agentId: opts.agentId ?? `${eng.runId}-a${++agents}`,
    dataDir: dirs.make(),
    intervalMs: opts.intervalMs ?? 5_000,
    crashBackoff: { minMs: 1_000, maxMs: 8_000 },
    pullBackoff: { minMs: 500, maxMs: 2_000 },
    fastWatch: true,
    ...(opts.retries ? { retries: opts.retries } : {}),
  });
  // An agent that stops (or is killed) leaves its containers running: nothing to close for docker.
  cleanup(() => rig.stop());
  return rig;
}

interface Seen {
  id: string;
  state: string;
  image: string;
}

/** The containers of one agent, by "app/service". */
async function containers(agentId: string): Promise<Map<string, Seen[]>> {
  const list = await eng.docker.listContainers({ all: true, filters: { label: [`io.iotistic.agent=${agentId}`] } });
  const out = new Map<string, Seen[]>();
  for (const c of list) {
    const key = `${c.Labels['io.iotistic.app']}/${c.Labels['io.iotistic.service']}`;
    out.set(key, [...(out.get(key) ?? []), { id: c.Id, state: c.State, image: c.Image }]);
  }
  return out;
}

function applied(a: Agent, version: number): boolean {
  const s = a.rec.currentState();
  return s.targetVersion === version && s.status === 'applied';
}

describe('workloads on a real Docker engine', () => {
  it('applies two apps; a changed environment recreates only that service', async () => {
    // A port free now: a random one could be held by another test's listener, and the worker would then fail to start over and over.
    const PORT = await freePort();
    const a = agent(
      target(1, {
        front: { services: { web: { image: IMG, command: RUN, environment: { V: '1' } }, worker: { image: IMG, command: RUN, ports: [`127.0.0.1:${PORT}:80`] } } },
        back: { services: { db: { image: IMG, command: RUN, volumes: ['data:/data'] }, either: { runtime: 'auto', image: IMG, command: RUN } } },
      }),
    );
    await waitFor('v1 applied', () => applied(a, 1), 30_000);
    const v1 = await containers(a.id);
    expect([...v1.keys()].sort()).toEqual(['back/db', 'back/either', 'front/web', 'front/worker']);
    for (const [, [c]] of v1) expect(c?.state).toBe('running');
    expect(a.service('back', 'either')).toMatchObject({ status: 'running', runtime: 'docker' });

    const info = await eng.docker.getContainer(v1.get('back/db')?.[0]?.id as string).inspect();
    expect(info.HostConfig.RestartPolicy?.Name).toBe('no');
    expect(info.Config.Labels).toMatchObject({ 'io.iotistic.managed': 'true', 'io.iotistic.app': 'back', 'io.iotistic.service': 'db', 'io.iotistic.agent': a.id });
    expect(info.Config.Labels['io.iotistic.config-hash']).toMatch(/^[0-9a-f]{32}$/);
    const vol = await eng.docker.getVolume('back_data').inspect();
    expect(vol.Labels).toMatchObject({ 'io.iotistic.managed': 'true', 'io.iotistic.app': 'back' });

    const worker = await eng.docker.getContainer(v1.get('front/worker')?.[0]?.id as string).inspect();
    expect(worker.HostConfig.PortBindings).toEqual({ '80/tcp': [{ HostIp: '127.0.0.1', HostPort: String(PORT) }] });

    await a.apply(
      target(2, {
        front: { services: { web: { image: IMG, command: RUN, environment: { V: '2' } }, worker: { image: IMG, command: RUN, ports: [`127.0.0.1:${PORT}:80`] } } },
        back: { services: { db: { image: IMG, command: RUN, volumes: ['data:/data'] }, either: { runtime: 'auto', image: IMG, command: RUN } } },
      }),
    );
    await waitFor('v2 applied', () => applied(a, 2), 30_000);
    const v2 = await containers(a.id);
    expect([...v2.values()].every((cs) => cs.length === 1)).toBe(true);
    expect(v2.get('front/web')?.[0]?.id).not.toBe(v1.get('front/web')?.[0]?.id);
    for (const key of ['front/worker', 'back/db', 'back/either']) expect(v2.get(key)?.[0]?.id).toBe(v1.get(key)?.[0]?.id);
    const env = (await eng.docker.getContainer(v2.get('front/web')?.[0]?.id as string).inspect()).Config.Env;
    expect(env).toContain('V=2');
  });

  it('restarts a service that exits with growing delays; its neighbour keeps running', async () => {
    const a = agent(target(1, { app: { services: { crash: { image: IMG, command: ['/bin/sh', '-c', 'exit 3'] }, calm: { image: IMG, command: RUN } } } }), { retries: ['app/crash'] });
    await waitFor('three restarts', () => (a.service('app', 'crash')?.restarts ?? 0) >= 3, 30_000);
    // When each restart was seen (the state's restart count went up).
    const seen: number[] = [];
    let last = 0;
    for (const { at, state } of a.states) {
      const r = state.apps.app?.services.crash?.restarts ?? 0;
      if (r > last) {
        seen.push(at);
        last = r;
      }
    }
    const gaps = seen.slice(1).map((t, i) => t - (seen[i] as number));
    // 1 s doubling: at least 2 s, then 4 s, between restarts 1-2 and 2-3.
    expect(gaps[0]).toBeGreaterThanOrEqual(2_000 - 50);
    expect(gaps[1]).toBeGreaterThanOrEqual(4_000 - 50);
    const backoff = a.states.map((s) => s.state.apps.app?.services.crash).find((s) => s?.status === 'backoff');
    expect(backoff).toMatchObject({ lastError: 'exited with code 3', exitCode: 3 });
    expect(backoff?.nextRetryAt).toBeGreaterThan(0);
    expect(a.states.some((s) => s.state.status === 'failed')).toBe(true);
    expect(a.service('app', 'calm')).toMatchObject({ status: 'running', restarts: 0 });
    const cs = await containers(a.id);
    expect(cs.get('app/crash')).toHaveLength(1); // restarted in place, not recreated
    expect(cs.get('app/calm')).toHaveLength(1);
  });

  it('a missing image and a bad command back off while the other services run; the image is pulled once the registry has it', async () => {
    const missing = `${reg.address}/missing:1`;
    const a = agent(
      target(1, {
        app: {
          services: {
            ok: { image: IMG, command: RUN },
            missing: { image: missing, command: RUN },
            bad: { image: IMG, command: ['/nonexistent'] },
          },
        },
      }),
      { retries: ['app/missing', 'app/bad'] },
    );
    await waitFor('ok running, the others backing off', () => {
      const s = a.rec.currentState().apps.app?.services;
      return s?.ok?.status === 'running' && s.missing?.status === 'backoff' && s.bad?.status === 'backoff';
    }, 30_000);
    const s = a.rec.currentState().apps.app?.services;
    expect(s?.missing?.lastError).toMatch(new RegExp(`pull of ${missing.replace(/[.]/g, '\\.')} failed: .*(not found|unknown)`, 'i'));
    expect(s?.missing?.nextRetryAt).toBeGreaterThan(Date.now() - 1_000);
    expect(s?.bad?.lastError).toMatch(/start failed: .*nonexistent/);
    expect(a.rec.currentState().status).toBe('failed');

    await reg.push(eng.docker, IMG, 'missing:1');
    await waitFor('missing pulled and running', () => a.service('app', 'missing')?.status === 'running', 30_000);
    expect(a.service('app', 'ok')?.restarts).toBe(0);
  });

  it('registry stopped: download-then-kill keeps the old version running; kill-then-download stops it', async () => {
    const v1 = await reg.push(eng.docker, IMG, 'app:1');
    const v2 = await reg.push(eng.docker, IMG2, 'app:2');
    const kill = { 'io.iotistic.update-strategy': 'kill-then-download' };
    const a = agent(target(1, { app: { services: { keep: { image: v1, command: RUN }, gone: { image: v1, command: RUN, labels: kill } } } }));
    await waitFor('v1 pulled and running', () => applied(a, 1), 30_000);
    const before = await containers(a.id);

    await reg.stop();
    await a.apply(target(2, { app: { services: { keep: { image: v2, command: RUN }, gone: { image: v2, command: RUN, labels: kill } } } }), ['app/keep', 'app/gone']);
    await waitFor('v2 pull failing', () => {
      const s = a.rec.currentState().apps.app?.services;
      return s?.keep?.status === 'backoff' && s.gone?.status === 'backoff';
    }, 30_000);
    expect(a.service('app', 'keep')?.lastError).toMatch(/pull of .*app:2 failed/);
    const during = await containers(a.id);
    expect(during.get('app/keep')).toEqual(before.get('app/keep')); // same container, still running v1
    expect(during.get('app/keep')?.[0]).toMatchObject({ state: 'running', image: v1 });
    expect(during.get('app/gone')).toBeUndefined();

    await reg.start();
    await waitFor('v2 running once the registry is back', () => applied(a, 2), 30_000);
    const after = await containers(a.id);
    expect(after.get('app/keep')).toHaveLength(1);
    expect(after.get('app/keep')?.[0]).toMatchObject({ state: 'running', image: v2 });
    expect(after.get('app/gone')?.[0]).toMatchObject({ state: 'running', image: v2 });
  });

  it('agent killed and restarted: its containers are re-adopted, not duplicated; one found exited is started', async () => {
    const t = target(1, { app: { services: { x: { image: IMG, command: RUN }, y: { image: IMG, command: RUN } } } });
    const first = agent(t);
    await waitFor('applied', () => applied(first, 1), 30_000);
    const before = await containers(first.id);
    await first.stop();
    // While no agent runs, y stops.
    await eng.docker.getContainer(before.get('app/y')?.[0]?.id as string).stop({ t: 1 });

    const second = agent(t, { agentId: first.id });
    await waitFor('applied again', () => applied(second, 1) && second.service('app', 'y')?.status === 'running', 30_000);
    const after = await containers(first.id);
    expect([...after.keys()].sort()).toEqual(['app/x', 'app/y']);
    expect(after.get('app/x')).toEqual(before.get('app/x'));
    expect(after.get('app/y')?.map((c) => c.id)).toEqual(before.get('app/y')?.map((c) => c.id));
    expect(after.get('app/y')?.[0]?.state).toBe('running');
    expect(second.service('app', 'x')).toMatchObject({ status: 'running', restarts: 0 });
  });

  it('leaves alone containers it did not create, even with look-alike labels', async () => {
    const foreign = async (labels: Record<string, string>): Promise<string> => {
      const c = await eng.docker.createContainer({ Image: IMG, Cmd: RUN, Labels: { [TEST_RUN_LABEL]: eng.runId, ...labels }, HostConfig: { NetworkMode: 'none' } });
      await c.start();
      return c.id;
    };
    const plain = await foreign({});
    const lookalike = await foreign({ 'io.iotistic.app': 'app', 'io.iotistic.service': 'web' });
    const otherAgent = await foreign({ 'io.iotistic.managed': 'true', 'io.iotistic.agent': 'someone-else', 'io.iotistic.app': 'app', 'io.iotistic.service': 'web', 'io.iotistic.config-hash': 'x' });
    const a = agent(target(1, { app: { services: { web: { image: IMG, command: RUN } } } }));
    await waitFor('applied', () => applied(a, 1), 30_000);
    await a.apply(target(2, {}));
    await waitFor('everything of the agent removed', async () => applied(a, 2) && (await containers(a.id)).size === 0, 30_000);
    for (const id of [plain, lookalike, otherAgent]) {
      const info = await eng.docker.getContainer(id).inspect();
      expect(info.State.Running).toBe(true);
    }
  });

  it('never hands one app\'s named volume to another whose names join to the same engine volume', async () => {
    const n = `v${Math.floor(Math.random() * 1e9)}`;
    // "<n>_x" + "data" and "<n>" + "x_data" are both the engine's volume "<n>_x_data".
    const a = agent(target(1, { [`${n}_x`]: { services: { s: { image: IMG, command: RUN, volumes: ['data:/data'] } } }, [n]: { services: { s: { image: IMG, command: RUN, volumes: ['x_data:/data'] } } } }), {
      retries: [`${n}_x/s`, `${n}/s`],
    });
    const states = await waitFor('one running, the other refused', () => {
      const s = [a.service(`${n}_x`, 's'), a.service(n, 's')];
      return s.some((x) => x?.status === 'running') && s.some((x) => x?.lastError?.includes('belongs to app')) ? s : undefined;
    }, 30_000);
    const owner = (await eng.docker.getVolume(`${n}_x_data`).inspect()).Labels?.['io.iotistic.app'];
    expect(states[owner === n ? 0 : 1]?.lastError).toContain(`belongs to app "${owner}"`);
    expect(states[owner === n ? 1 : 0]?.status).toBe('running');
  });

  it('sees the engine restart through its event stream and brings the services back', async (ctx) => {
    if (!eng.restart) ctx.skip(); // only a private daemon may be restarted
    const a = agent(target(1, { app: { services: { s: { image: IMG, command: RUN } } } }), { intervalMs: 120_000 });
    await waitFor('applied', () => applied(a, 1), 30_000);
    const [before] = (await containers(a.id)).get('app/s') ?? [];
    const restartedAt = Date.now();
    await eng.restart?.();
    // The engine stopped the container on its way down (restart policy "no": it stays stopped); the
    // agent learns from the re-subscribed event stream, long before its 120 s interval.
    await waitFor('running again', async () => {
      const [c] = (await containers(a.id)).get('app/s') ?? [];
      return c?.state === 'running' && a.service('app', 's')?.status === 'running';
    }, 20_000);
    expect(Date.now() - restartedAt).toBeLessThan(20_000);
    const [after] = (await containers(a.id)).get('app/s') ?? [];
    expect(after?.id).toBe(before?.id);
  });
});
