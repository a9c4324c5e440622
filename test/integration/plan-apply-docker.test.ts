import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/util/clock.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { PlanPreview, type TargetPlan } from '../../src/workloads/plan-preview.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { DockerRuntime } from '../../src/workloads/runtimes/docker.js';
import { ProcessRuntime } from '../../src/workloads/runtimes/process.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { waitFor } from '../helpers/agent-process.js';
import { fileEngine, fileRegistry } from '../helpers/docker.js';
import { silentLogger } from '../helpers/logger.js';
import { PlanApplyCheck } from '../helpers/plan-check.js';
import { tempDirs } from '../helpers/tmp.js';

// plan == apply on the private Docker engine, with a real registry for the pulls: the plan of each
// target lists exactly the engine calls its apply then makes (test/helpers/plan-check.ts).
const eng = fileEngine();
const reg = fileRegistry();
let IMG: string;
let REMOTE: string;
const dirs = tempDirs();
const RUN = ['/bin/sh', '-c', 'trap "exit 0" TERM; sleep 1000 & wait'];

beforeAll(async () => {
  IMG = await eng.buildImage('local/plan:1', 'plan-v1');
  REMOTE = await reg.push(eng.docker, await eng.buildImage('local/plan:2', 'plan-v2'), 'plan/bb:2');
}, 120_000);

afterAll(() => dirs.cleanup());

function parse(version: number, apps: Record<string, unknown>): TargetState {
  const v = validateTarget({ version, apps }, { policy: { allowHostMounts: true } });
  if (!v.ok) throw new Error(v.message);
  return v.target;
}

let n = 0;
/** Applies `before`, then `after`; each apply's engine calls are checked against its plan (PlanApplyCheck). Returns the plan of `after`. */
async function check(before: TargetState | undefined, after: TargetState): Promise<TargetPlan> {
  const logger = silentLogger();
  const docker = new DockerRuntime({ docker: eng.docker, agentId: `${eng.runId}-plan${++n}`, clock: systemClock, random: Math.random, logger, stopTimeoutSeconds: 1 });
  const proc = new ProcessRuntime({ dataDir: dirs.make(), clock: systemClock, logger, stopTimeoutMs: 1_000 });
  const plans = new PlanApplyCheck({ docker, process: proc, policy: { allowHostMounts: true } });
  const source = new MemoryTargetSource(before);
  const rec = new Reconciler({ source, docker: plans.docker, process: plans.process, clock: systemClock, random: Math.random, logger, reconciliationIntervalMs: 500, pullBackoff: { minMs: 200, maxMs: 1_000 } });
  const ctl = new AbortController();
  const loop = plans.run(rec, source, ctl.signal);
  const applied = (v: number): boolean => rec.currentState().targetVersion === v && rec.currentState().status === 'applied';
  let plan: TargetPlan;
  try {
    if (before) await waitFor('before applied', () => applied(before.version), 60_000);
    const result = await new PlanPreview({ docker, process: proc, policy: { ...DEFAULT_WORKLOAD_POLICY }, stopTimeoutSeconds: 1 }).plan(after);
    if (!result.ok) throw new Error(result.validation.message);
    plan = result.plan;
    for (const p of plan.images.present) expect(p.sizeBytes).toBeGreaterThan(0);
    await plans.apply(after);
    await waitFor('after applied', () => applied(after.version), 60_000);
  } finally {
    ctl.abort();
    await loop;
    await proc.close();
    for (const c of await eng.docker.listContainers({ all: true, filters: { label: [`io.iotistic.agent=${eng.runId}-plan${n}`] } })) {
      await eng.docker.getContainer(c.Id).remove({ force: true });
    }
  }
  expect(plans.verify().targets).toBe(before ? 2 : 1);
  return plan;
}

it('create with the image here; recreate by config; remove', async () => {
  await check(undefined, parse(1, { a: { services: { web: { image: IMG, command: RUN } } } }));
  await check(parse(1, { a: { services: { web: { image: IMG, command: RUN, environment: { V: '1' } } } } }), parse(2, { a: { services: { web: { image: IMG, command: RUN, environment: { V: '2' } } } } }));
  await check(parse(1, { a: { services: { web: { image: IMG, command: RUN } } }, b: { services: { gone: { image: IMG, command: RUN } } } }), parse(2, { a: { services: { web: { image: IMG, command: RUN } } } }));
}, 240_000);

it('recreate by image from the registry under both strategies: the pull is where the plan says', async () => {
  const ktd = { labels: { 'io.iotistic.update-strategy': 'kill-then-download' } };
  const r1 = await check(parse(1, { a: { services: { web: { image: IMG, command: RUN } } } }), parse(2, { a: { services: { web: { image: REMOTE, command: RUN } } } }));
  expect(r1.images.pull.map((i) => i.image)).toEqual([REMOTE]);
  await eng.docker.getImage(REMOTE).remove({ force: true });
  await check(parse(1, { a: { services: { web: { image: IMG, command: RUN, ...ktd } } } }), parse(2, { a: { services: { web: { image: REMOTE, command: RUN, ...ktd } } } }));
}, 240_000);

it('a purge deletes the app\'s named volume on the engine (a file in it is gone) and starts the service again; a bind mount is not touched', async () => {
  const { DeviceActions } = await import('../../src/actions/device-actions.js');
  const logger = silentLogger();
  const agentId = `${eng.runId}-purge`;
  const docker = new DockerRuntime({ docker: eng.docker, agentId, clock: systemClock, random: Math.random, logger, stopTimeoutSeconds: 1 });
  const proc = new ProcessRuntime({ dataDir: dirs.make(), clock: systemClock, logger, stopTimeoutMs: 1_000 });
  const host = dirs.make();
  const writer = ['/bin/sh', '-c', 'trap "exit 0" TERM; [ -f /data/seed ] || cat /proc/sys/kernel/random/uuid > /data/seed; echo kept > /host/mark; sleep 1000 & wait'];
  const t = parse(1, { store: { services: { db: { image: IMG, command: writer, volumes: ['data:/data', `${host}:/host`] } } } });
  const source = new MemoryTargetSource(t);
  const rec = new Reconciler({ source, docker, process: proc, clock: systemClock, random: Math.random, logger, reconciliationIntervalMs: 500, policy: { allowHostMounts: true } });
  const ctl = new AbortController();
  const loop = rec.run(ctl.signal);
  const actions = new DeviceActions({ config: { allowReboot: false, allowShutdown: false }, reconciler: rec, source, runtimes: [proc, docker], record: () => Promise.resolve(), power: () => undefined, logger });
  /** The seed the service wrote in its named volume, read through a container of its own. */
  const seed = async (): Promise<string | undefined> => {
    const running = (await docker.list()).find((i) => i.state === 'running');
    if (!running) return undefined;
    const exec = await eng.docker.getContainer(running.id).exec({ Cmd: ['cat', '/data/seed'], AttachStdout: true, AttachStderr: true });
    const stream = await exec.start({ hijack: true, stdin: false });
    const chunks: Buffer[] = [];
    await new Promise<void>((resolve) => {
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => resolve());
    });
    const text = Buffer.concat(chunks).toString('utf8').replace(/[^0-9a-f-]/g, '');
    return text.length >= 32 ? text : undefined;
  };
  try {
    const first = await waitFor('the seed written', seed, 60_000);
    const out = await actions.purgeApp('store', 'store', { by: 'local-api' });
    expect(out.instances).toBe(1);
    expect(out.removed).toEqual(['store_data']);
    const second = await waitFor('a new seed on a fresh volume', async () => {
      const s = await seed();
      return s !== undefined && s !== first ? s : undefined;
    }, 60_000);
    expect(second).not.toBe(first);
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(`${host}/mark`, 'utf8')).toBe('kept\n');
  } finally {
    ctl.abort();
    await loop;
    await proc.close();
    for (const c of await eng.docker.listContainers({ all: true, filters: { label: [`io.iotistic.agent=${agentId}`] } })) await eng.docker.getContainer(c.Id).remove({ force: true });
    for (const v of (await eng.docker.listVolumes({ filters: { label: [`io.iotistic.agent=${agentId}`] } })).Volumes ?? []) await eng.docker.getVolume(v.Name).remove();
  }
}, 240_000);
