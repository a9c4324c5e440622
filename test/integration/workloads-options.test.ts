import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { fileEngine } from '../helpers/docker.js';
import { workloadRig, type WorkloadRig } from '../helpers/workload-rig.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/** Container options in force on a real engine (issue #18), and the Compose subset through the CLI and the local API. */

const eng = fileEngine();
let IMG: string;
const dirs = tempDirs();

beforeAll(async () => {
  requireBuilt();
  IMG = await eng.buildImage('local/opts:1', 'opts');
}, 120_000);
const cleanup = cleanupsAfterEach();
afterAll(() => dirs.cleanup());

function target(version: number, apps: Record<string, unknown>): TargetState {
  const r = validateTarget({ version, apps });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

let rigs = 0;
/** A reconciler on the engine; every target it applies is checked against its plan preview (PlanApplyCheck). */
function reconciler(t: TargetState): WorkloadRig {
  const rig = workloadRig(eng, t, {
    agentId: `${eng.runId}-opts${rigs++}`,
    dataDir: dirs.make(),
    intervalMs: 2_000,
    crashBackoff: { minMs: 1_000, maxMs: 8_000 },
    pullBackoff: { minMs: 500, maxMs: 2_000 },
  });
  cleanup(() => rig.stop());
  return rig;
}

async function containerOf(agentId: string): Promise<string[]> {
  const list = await eng.docker.listContainers({ all: true, filters: { label: [`io.iotistic.agent=${agentId}`] } });
  return list.map((c) => c.Id);
}

// Exits (and so is never left running) unless writing to the root fails as read-only and the tmpfs takes a file.
const CHECKS = ['trap "exit 0" TERM; case "$(touch /probe 2>&1)" in *Read-only*) ;; *) exit 9 ;; esac; touch /scratch/ok || exit 8; sleep 1000 & wait'];

describe('container options on a real engine', () => {
  it('are in force (inspect shows them); a changed memory limit recreates the container', async () => {
    const svc = (memory: string) => ({
      image: IMG,
      cpus: 0.5,
      memory,
      readOnly: true,
      tmpfs: ['/scratch:size=8m,mode=1777'],
      user: '1000:1000',
      workingDir: '/tmp',
      entrypoint: ['/bin/sh', '-c'],
      command: CHECKS,
    });
    const a = reconciler(target(1, { opts: { services: { limited: svc('64m') } } }));
    const running = () => a.rec.currentState().apps.opts?.services.limited;
    await waitFor('running', () => running()?.status === 'running' && a.rec.currentState().status === 'applied', 60_000);
    const [id] = await containerOf(a.id);
    const info = await eng.docker.getContainer(id as string).inspect();
    expect(info.HostConfig).toMatchObject({ NanoCpus: 500_000_000, Memory: 64 * 1024 ** 2, ReadonlyRootfs: true, Tmpfs: { '/scratch': 'size=8m,mode=1777' } });
    expect(info.Config).toMatchObject({ User: '1000:1000', WorkingDir: '/tmp', Entrypoint: ['/bin/sh', '-c'], Cmd: CHECKS });
    const logs = String(await eng.docker.getContainer(id as string).logs({ stdout: true, stderr: true })).replace(/[^\x20-\x7e\n]/g, '');
    expect(info.State, `${JSON.stringify(info.State)} ${logs}`).toMatchObject({ Running: true });
    expect(running()?.restarts).toBe(0);

    await a.apply(target(2, { opts: { services: { limited: svc('96m') } } }));
    await waitFor('v2 applied', () => a.rec.currentState().targetVersion === 2 && a.rec.currentState().status === 'applied', 60_000);
    const after = await containerOf(a.id);
    expect(after).toHaveLength(1);
    expect(after[0]).not.toBe(id);
    expect((await eng.docker.getContainer(after[0] as string).inspect()).HostConfig.Memory).toBe(96 * 1024 ** 2);
  });
});

const COMPOSE = (img: string) => `
name: edge
services:
  sensor:
    image: ${img}
    entrypoint: ["/bin/sh", "-c"]
    command:
      - trap "exit 0" TERM; sleep 1000 & wait
    environment: ["MODE=compose"]
    working_dir: /tmp
    read_only: true
    deploy: { resources: { limits: { cpus: "0.25", memory: 32m } } }
`;

describe('the Compose subset', () => {
  it('`compose convert FILE` prints the target, and refuses what is outside the subset by name', async () => {
    const dir = dirs.make();
    const file = join(dir, 'compose.yaml');
    writeFileSync(file, COMPOSE('local/opts:1'));
    const ok = await runCli(['compose', 'convert', file, '--version', '5']);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual({
      version: 5,
      apps: { edge: { services: { sensor: { image: 'local/opts:1', entrypoint: ['/bin/sh', '-c'], command: ['trap "exit 0" TERM; sleep 1000 & wait'], environment: { MODE: 'compose' }, workingDir: '/tmp', readOnly: true, cpus: 0.25, memory: '32m' } } } },
    });
    writeFileSync(file, `${COMPOSE('local/opts:1')}    build: .\n    cap_add: [SYS_ADMIN]\n`);
    const bad = await runCli(['compose', 'convert', file]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toContain('services.sensor.build: not supported');
    expect(bad.stderr).toContain('build the image and push it to a registry');
    expect(bad.stderr).toContain('services.sensor.cap_add: not supported');
  });

  let agent: AgentProcess | undefined;
  afterEach(async () => {
    await agent?.stop('SIGTERM');
    agent = undefined;
  });

  it('the local API takes a Compose body and runs it with its limits; a refused key is named', async () => {
    agent = await spawnAgent({ dataDir: dirs.make(), env: { DOCKER_HOST: eng.host }, config: {} });
    const a = agent;
    const post = (body: unknown) =>
      fetch(`${a.apiUrl}/v2/local/target-state`, { method: 'POST', headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const refused = await post({ compose: `${COMPOSE(IMG)}    privileged: true\n`, version: 1 });
    expect(refused.status).toBe(400);
    const why = (await refused.json()) as { message: string; issues: { path: string }[] };
    expect(why.message).toContain('compose: services.sensor.privileged: not supported');
    expect(why.issues.map((i) => i.path)).toEqual(['compose.services.sensor.privileged']);

    const ok = await post({ compose: COMPOSE(IMG), version: 2 });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ version: 2, mode: 'local' });
    type State = { current: { apps: Record<string, { services: Record<string, { status: string }> }> } };
    await waitFor('the Compose service running', async () => ((await a.get('/v2/state')).body as State).current.apps.edge?.services.sensor?.status === 'running', 60_000);
    const [c] = await eng.docker.listContainers({ filters: { label: ['io.iotistic.app=edge', 'io.iotistic.service=sensor'] } });
    const info = await eng.docker.getContainer(c?.Id as string).inspect();
    expect(info.HostConfig).toMatchObject({ NanoCpus: 250_000_000, Memory: 32 * 1024 ** 2, ReadonlyRootfs: true });
    expect(info.Config.Env).toContain('MODE=compose');
  });
});
