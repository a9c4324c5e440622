import { afterEach, describe, expect, it } from 'vitest';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';
import { seededRandom } from '../../src/util/random.js';
import { ImagePulls } from '../../src/workloads/image-pulls.js';
import { resolveTarget } from '../../src/workloads/planner.js';
import { RestartRequests } from '../../src/workloads/restart-requests.js';
import { PULL_BACKOFF, CRASH_BACKOFF, RetryTracker } from '../../src/workloads/retry.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';

// The reconciler's two side parts on their own: background image downloads, and restarts on
// request. MemoryRuntime is an in-memory fake of a runtime (the integration tests use Docker).
const ctls: AbortController[] = [];
afterEach(() => {
  for (const c of ctls.splice(0)) c.abort();
});

function target(apps: Record<string, unknown>, policy?: { allowPrivileged: boolean }): TargetState {
  const r = validateTarget({ version: 1, apps }, { policy });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

/** Resolves once `done()` holds (the background work is real promises, not timers). */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 1_000 && !done(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(done()).toBe(true);
}

/** A deferred: a pull that finishes (or fails) when the test says. */
function gate() {
  let open!: () => void;
  let fail!: (e: Error) => void;
  const p = new Promise<void>((res, rej) => ((open = res), (fail = rej)));
  return { p, open, fail };
}

function pulls(timeoutMs = 60_000) {
  const clock = new FakeClock();
  const docker = new MemoryRuntime('docker', clock);
  const backoff = new RetryTracker(PULL_BACKOFF, { clock, random: seededRandom(1) });
  const lifetime = new AbortController();
  ctls.push(lifetime);
  let settled = 0;
  const cap = captureLogger();
  const p = new ImagePulls({ docker, backoff, clock, logger: cap.logger, lifetime: lifetime.signal, timeoutMs, settled: () => settled++ });
  return { p, docker, backoff, lifetime, settled: () => settled, logs: cap.records };
}

describe('ImagePulls', () => {
  it('downloads one image once at a time, in the background, and says when it is done', async () => {
    const { p, docker, settled } = pulls();
    const g = gate();
    docker.pullBehaviour = () => g.p;
    p.start('app:1');
    p.start('app:1');
    expect(docker.pulls.map((x) => x.image)).toEqual(['app:1']);
    expect(p.pulling('app:1')).toBe(true);
    expect(p.size).toBe(1);
    g.open();
    await until(() => !p.pulling('app:1'));
    expect(settled()).toBe(1);
    expect(docker.images.has('app:1')).toBe(true);
  });

  it('backs a failed download off: no new attempt until the backoff is due, the error logged with the wait', async () => {
    const { p, docker, backoff, logs } = pulls();
    p.start('gone:1');
    await until(() => !p.pulling('gone:1'));
    expect(backoff.waiting('gone:1')).toBe(true);
    expect(backoff.view('gone:1').lastError).toBe('pull of gone:1 failed: registry unreachable');
    expect(logs().find((l) => l.msg === 'pull of gone:1 failed: registry unreachable')).toMatchObject({ retryInMs: expect.any(Number) });
    p.start('gone:1');
    expect(docker.pulls).toHaveLength(1);
  });

  it('aborts the download of an image no service wants any more, without a backoff', async () => {
    const { p, docker, backoff } = pulls();
    let aborted = false;
    docker.pullBehaviour = (_image, signal) =>
      new Promise((_res, rej) => signal?.addEventListener('abort', () => ((aborted = true), rej(new Error('aborted')))));
    p.start('old:1');
    const resolved = resolveTarget(target({ a: { services: { s: { image: 'new:1' } } } }), { ok: true }, DEFAULT_WORKLOAD_POLICY);
    p.abortUnwanted(resolved);
    await until(() => !p.pulling('old:1'));
    expect(aborted).toBe(true);
    expect(backoff.known('old:1')).toBe(false);
  });

  it('on close, aborts every download and waits for each to end', async () => {
    const { p, docker, backoff } = pulls();
    const ended: string[] = [];
    docker.pullBehaviour = (image, signal) =>
      new Promise((_res, rej) => signal?.addEventListener('abort', () => setTimeout(() => (ended.push(image), rej(new Error('aborted'))), 20)));
    p.start('a:1');
    p.start('b:1');
    await p.close();
    expect(ended.sort()).toEqual(['a:1', 'b:1']);
    expect(p.size).toBe(0);
    expect(backoff.known('a:1')).toBe(false);
  });

  it('gives up on a download that outlives its timeout, and backs off', async () => {
    const { p, docker, backoff } = pulls(50);
    docker.pullBehaviour = (_image, signal) => new Promise((_res, rej) => signal?.addEventListener('abort', () => rej(new Error('timed out'))));
    p.start('slow:1');
    await until(() => !p.pulling('slow:1'));
    expect(backoff.waiting('slow:1')).toBe(true);
  });

  it('reports which wanted images are present; an inspect that fails counts as absent; blocked services are not looked at', async () => {
    const { p, docker } = pulls();
    docker.images.add('here:1');
    const real = docker.hasImage.bind(docker);
    const asked: string[] = [];
    docker.hasImage = (image: string) => (asked.push(image), image === 'broken:1' ? Promise.reject(new Error('engine hiccup')) : real(image));
    const resolved = resolveTarget(
      target({ a: { services: { h: { image: 'here:1' }, m: { image: 'missing:1' }, b: { image: 'broken:1' }, x: { image: 'priv:1', privileged: true } } } }, { allowPrivileged: true }),
      { ok: true },
      DEFAULT_WORKLOAD_POLICY,
    );
    const present = await p.present(resolved, new AbortController().signal);
    expect(Object.fromEntries(present)).toEqual({ 'here:1': true, 'missing:1': false, 'broken:1': false });
    expect(asked).not.toContain('priv:1');
  });
});

function restarts() {
  const clock = new FakeClock();
  const proc = new MemoryRuntime('process', clock);
  const source = new MemoryTargetSource(target({ a: { services: { s: { runtime: 'process', command: ['/bin/true'] }, t: { runtime: 'process', command: ['/bin/true'] } } } }));
  const crash = new RetryTracker(CRASH_BACKOFF, { clock, random: seededRandom(1) });
  const lifetime = new AbortController();
  ctls.push(lifetime);
  let queued = 0;
  const r = new RestartRequests({ source, process: proc, crash, logger: silentLogger(), lifetime: lifetime.signal, queued: () => queued++ });
  return { r, proc, crash, lifetime, queued: () => queued };
}

describe('RestartRequests', () => {
  it('refuses a service the target does not have, naming the ones it has', async () => {
    const { r } = restarts();
    await expect(r.request('a', 'nope')).rejects.toMatchObject({ code: 'UNKNOWN_SERVICE', message: 'no service a/nope in the target in force (services: a/s, a/t)' });
    await expect(r.request('constructor', 's')).rejects.toMatchObject({ code: 'UNKNOWN_SERVICE' });
  });

  it('queues a request for the loop, which stops a running instance and starts it again, its crash loop afresh', async () => {
    const { r, proc, crash, queued } = restarts();
    const id = await proc.create({ app: 'a', service: 's', configHash: 'h' } as never);
    await proc.start(id);
    crash.fail('a/s', 'exited with code 1');
    const done = r.request('a', 's');
    expect(queued()).toBe(1);
    expect(r.pending).toBe(1);
    await r.run(new AbortController().signal);
    await expect(done).resolves.toEqual({ instances: 1 });
    expect(proc.starts.map((s) => s.service)).toEqual(['s', 's']);
    expect(crash.known('a/s')).toBe(false);
    expect(r.pending).toBe(0);
  });

  it('says NO_INSTANCE when the service has nothing created yet', async () => {
    const { r } = restarts();
    const done = r.request('a', 't');
    await r.run(new AbortController().signal);
    await expect(done).rejects.toMatchObject({ code: 'NO_INSTANCE', message: expect.stringContaining('a/t has no instance yet') });
  });

  it('lets a caller withdraw a request not yet run; refuses the rest when the agent stops, and new ones after', async () => {
    const { r, lifetime } = restarts();
    const ctl = new AbortController();
    const withdrawn = r.request('a', 's', ctl.signal);
    ctl.abort(new Error('job cancelled'));
    await expect(withdrawn).rejects.toThrow('job cancelled');
    expect(r.pending).toBe(0);
    const left = r.request('a', 's');
    r.refuseAll();
    await expect(left).rejects.toMatchObject({ code: 'STOPPING' });
    lifetime.abort();
    await expect(r.request('a', 's')).rejects.toMatchObject({ code: 'STOPPING' });
  });
});
