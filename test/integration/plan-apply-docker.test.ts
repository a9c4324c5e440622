import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/util/clock.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { PlanPreview, type PlanStep } from '../../src/workloads/plan-preview.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { DockerRuntime } from '../../src/workloads/runtimes/docker.js';
import { ProcessRuntime } from '../../src/workloads/runtimes/process.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import type { DesiredService } from '../../src/workloads/types.js';
import { waitFor } from '../helpers/agent-process.js';
import { startEngine, startRegistry, type TestEngine, type TestRegistry } from '../helpers/docker.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

// plan == apply on the private Docker engine, with a real registry for the pulls: the plan of each
// target lists exactly the engine calls its apply then makes.
let eng: TestEngine;
let reg: TestRegistry;
let IMG: string;
let REMOTE: string;
const dirs = tempDirs();
const RUN = ['/bin/sh', '-c', 'trap "exit 0" TERM; sleep 1000 & wait'];

beforeAll(async () => {
  eng = await startEngine();
  IMG = await eng.buildImage('local/plan:1', 'plan-v1');
  reg = await startRegistry();
  REMOTE = await reg.push(eng.docker, await eng.buildImage('local/plan:2', 'plan-v2'), 'plan/bb:2');
}, 120_000);

afterAll(async () => {
  await reg?.destroy();
  await eng?.stop();
  dirs.cleanup();
}, 60_000);

/** The docker runtime, recording per service the calls it gets while `recording`. */
class RecordingDocker extends DockerRuntime {
  recording = false;
  readonly calls = new Map<string, PlanStep[]>();
  readonly pulled: string[] = [];
  readonly keys = new Map<string, string>();
  private readonly made = new Set<string>();
  private log(id: string, kind: PlanStep['kind']): void {
    const key = this.keys.get(id);
    if (!this.recording || key === undefined) return;
    this.calls.set(key, [...(this.calls.get(key) ?? []), this.made.has(id) ? { kind } : { kind, instance: id }]);
  }
  override async list(signal?: AbortSignal) {
    const found = await super.list(signal);
    for (const i of found) this.keys.set(i.id, `${i.app}/${i.service}`);
    return found;
  }
  override async pull(image: string, signal?: AbortSignal): Promise<void> {
    if (this.recording) this.pulled.push(image);
    return super.pull(image, signal);
  }
  override async create(d: DesiredService, signal?: AbortSignal): Promise<string> {
    const id = await super.create(d, signal);
    this.keys.set(id, `${d.app}/${d.service}`);
    if (this.recording) this.made.add(id);
    this.log(id, 'create');
    return id;
  }
  override async start(id: string, signal?: AbortSignal): Promise<void> {
    this.log(id, 'start');
    return super.start(id, signal);
  }
  override async stop(id: string, signal?: AbortSignal): Promise<void> {
    this.log(id, 'stop');
    return super.stop(id, signal);
  }
  override async remove(id: string, signal?: AbortSignal): Promise<void> {
    this.log(id, 'remove');
    return super.remove(id, signal);
  }
}

function parse(version: number, apps: Record<string, unknown>): TargetState {
  const v = validateTarget({ version, apps }, { policy: { allowHostMounts: true } });
  if (!v.ok) throw new Error(v.message);
  return v.target;
}

let n = 0;
async function check(before: TargetState | undefined, after: TargetState): Promise<{ pulls: string[] }> {
  const logger = silentLogger();
  const docker = new RecordingDocker({ docker: eng.docker, agentId: `${eng.runId}-plan${++n}`, clock: systemClock, random: Math.random, logger, stopTimeoutSeconds: 1 });
  const proc = new ProcessRuntime({ dataDir: dirs.make(), clock: systemClock, logger, stopTimeoutMs: 1_000 });
  const source = new MemoryTargetSource(before);
  const rec = new Reconciler({ source, docker, process: proc, clock: systemClock, random: Math.random, logger, reconciliationIntervalMs: 500, pullBackoff: { minMs: 200, maxMs: 1_000 } });
  const ctl = new AbortController();
  const loop = rec.run(ctl.signal);
  const applied = (v: number): boolean => rec.currentState().targetVersion === v && rec.currentState().status === 'applied';
  try {
    if (before) await waitFor('before applied', () => applied(before.version), 60_000);
    const result = await new PlanPreview({ docker, process: proc, policy: { ...DEFAULT_WORKLOAD_POLICY }, stopTimeoutSeconds: 1 }).plan(after);
    if (!result.ok) throw new Error(result.validation.message);
    docker.recording = true;
    source.set(after);
    await waitFor('after applied', () => applied(after.version), 60_000);
    const planned = new Map(result.plan.services.map((s) => [`${s.app}/${s.service}`, s.steps.filter((x) => x.kind !== 'pull')] as const).filter(([, s]) => s.length > 0));
    expect(Object.fromEntries(docker.calls)).toEqual(Object.fromEntries(planned));
    expect([...docker.pulled].sort()).toEqual(result.plan.images.pull.map((i) => i.image).sort());
    for (const p of result.plan.images.present) expect(p.sizeBytes).toBeGreaterThan(0);
    return { pulls: docker.pulled };
  } finally {
    ctl.abort();
    await loop;
    await proc.close();
    for (const c of await eng.docker.listContainers({ all: true, filters: { label: [`io.iotistic.agent=${eng.runId}-plan${n}`] } })) {
      await eng.docker.getContainer(c.Id).remove({ force: true });
    }
  }
}

it('create with the image here; recreate by config; remove', async () => {
  await check(undefined, parse(1, { a: { services: { web: { image: IMG, command: RUN } } } }));
  await check(parse(1, { a: { services: { web: { image: IMG, command: RUN, environment: { V: '1' } } } } }), parse(2, { a: { services: { web: { image: IMG, command: RUN, environment: { V: '2' } } } } }));
  await check(parse(1, { a: { services: { web: { image: IMG, command: RUN } } }, b: { services: { gone: { image: IMG, command: RUN } } } }), parse(2, { a: { services: { web: { image: IMG, command: RUN } } } }));
}, 240_000);

it('recreate by image from the registry under both strategies: the pull is where the plan says', async () => {
  const ktd = { labels: { 'io.iotistic.update-strategy': 'kill-then-download' } };
  const r1 = await check(parse(1, { a: { services: { web: { image: IMG, command: RUN } } } }), parse(2, { a: { services: { web: { image: REMOTE, command: RUN } } } }));
  expect(r1.pulls).toEqual([REMOTE]);
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
