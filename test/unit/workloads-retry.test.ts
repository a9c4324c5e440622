import { afterEach, describe, expect, it } from 'vitest';
import { FakeClock } from '../helpers/fake-clock.js';
import { seededRandom } from '../../src/util/random.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { CRASH_BACKOFF, RetryTracker } from '../../src/workloads/retry.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import { validateTarget, type TargetState } from '../../src/workloads/target-schema.js';
import type { CurrentState } from '../../src/workloads/types.js';
import { MemoryRuntime } from '../helpers/memory-runtime.js';
import { silentLogger } from '../helpers/logger.js';

const S = 1000;
const MIN = 60 * S;

describe('RetryTracker (CrashLoopBackOff timing)', () => {
  it('waits 10 s, doubling to a 5 min cap, and reports the next retry time and the last error', () => {
    const clock = new FakeClock();
    const t = new RetryTracker(CRASH_BACKOFF, { clock, random: seededRandom(1) });
    const delays = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => t.fail('a/s', `exited with code ${n}`, `exit-${n}`));
    expect(delays).toEqual([10 * S, 20 * S, 40 * S, 80 * S, 160 * S, 300 * S, 300 * S, 300 * S]);
    expect(t.view('a/s')).toEqual({ failures: 8, lastError: 'exited with code 8', nextRetryAt: clock.now() + 300 * S });
    expect(t.waiting('a/s')).toBe(true);
  });

  it('counts one exit once however often it is observed', () => {
    const t = new RetryTracker(CRASH_BACKOFF, { clock: new FakeClock(), random: seededRandom(1) });
    expect(t.fail('k', 'x', 'c1:t1')).toBe(10 * S);
    expect(t.fail('k', 'x', 'c1:t1')).toBeUndefined();
    expect(t.fail('k', 'x', 'c1:t2')).toBe(20 * S);
  });

  it('resets the escalation only after the service ran 10 minutes', async () => {
    const clock = new FakeClock();
    const t = new RetryTracker(CRASH_BACKOFF, { clock, random: seededRandom(1) });
    t.fail('k', 'x');
    t.fail('k', 'x');
    t.succeed('k');
    await clock.advance(9 * MIN);
    expect(t.fail('k', 'x')).toBe(40 * S); // ran 9 minutes: the loop goes on
    t.succeed('k');
    await clock.advance(10 * MIN);
    expect(t.view('k').failures).toBe(0);
    expect(t.fail('k', 'x')).toBe(10 * S); // ran 10 minutes: afresh
  });

  it('is due at the computed time, and forgets a key', async () => {
    const clock = new FakeClock();
    const t = new RetryTracker({ ...CRASH_BACKOFF, minMs: 1_000 }, { clock, random: seededRandom(1) });
    t.fail('k', 'x');
    expect(t.nextDue()).toBe(1_000);
    await clock.advance(999);
    expect(t.waiting('k')).toBe(true);
    await clock.advance(1);
    expect(t.waiting('k')).toBe(false);
    expect(t.pending('k')).toBe(true);
    t.forget('k');
    expect(t.nextDue()).toBeUndefined();
    expect(t.known('k')).toBe(false);
  });
});

function target(version: number, apps: Record<string, unknown>): TargetState {
  const r = validateTarget({ version, apps });
  if (!r.ok) throw new Error(r.message);
  return r.target;
}

const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

function setup(t: TargetState, opts: { pullBackoff?: object } = {}) {
  const clock = new FakeClock();
  const docker = new MemoryRuntime('docker', clock);
  const proc = new MemoryRuntime('process', clock);
  const source = new MemoryTargetSource(t);
  const rec = new Reconciler({
    source,
    docker,
    process: proc,
    clock,
    random: seededRandom(3),
    logger: silentLogger(),
    reconciliationIntervalMs: 30 * S,
    ...(opts.pullBackoff ? { pullBackoff: opts.pullBackoff } : {}),
  });
  const states: CurrentState[] = [];
  rec.on('changed', (s) => states.push(s));
  const ctl = new AbortController();
  const done = rec.run(ctl.signal);
  stops.push(async () => {
    ctl.abort();
    await clock.advance(0);
    await done;
  });
  return { clock, docker, proc, source, rec, states };
}

describe('Reconciler on fake time', () => {
  it('restarts a crashing service at 10 s, 20 s, 40 s ... capped at 5 min, while its neighbour keeps running', async () => {
    const { clock, docker, rec } = setup(target(1, { a: { services: { crash: { image: 'x:1' }, calm: { image: 'x:1' } } } }));
    docker.images.add('x:1');
    docker.crashAfterMs.set('crash', 100);
    await clock.advance(0);
    for (let i = 0; i < 40; i++) await clock.advance(30 * S);
    const starts = docker.starts.filter((s) => s.service === 'crash').map((s) => s.at);
    const gaps = starts.slice(1).map((t, i) => t - (starts[i] as number) - 100); // minus the 100 ms it ran
    expect(gaps.slice(0, 7).map((g) => Math.round(g / S))).toEqual([10, 20, 40, 80, 160, 300, 300]);
    expect(docker.starts.filter((s) => s.service === 'calm')).toHaveLength(1);
    const st = rec.currentState();
    expect(st.apps.a?.services.calm).toMatchObject({ status: 'running', restarts: 0 });
    expect(st.apps.a?.services.crash?.restarts).toBe(starts.length - 1);
  });

  it('shows backoff with the next retry time and the last error between restarts', async () => {
    const { clock, docker, rec } = setup(target(1, { a: { services: { crash: { image: 'x:1' } } } }));
    docker.images.add('x:1');
    docker.crashAfterMs.set('crash', 100);
    await clock.advance(0);
    await clock.advance(200);
    const s = rec.currentState();
    expect(s.status).toBe('failed');
    expect(s.apps.a?.services.crash).toMatchObject({ status: 'backoff', lastError: 'exited with code 1', exitCode: 1, nextRetryAt: clock.now() - 100 + 10 * S });
  });

  it('backs a failing pull off per image with jitter and a cap, without holding up the other services', async () => {
    const { clock, docker, rec } = setup(target(1, { a: { services: { missing: { image: 'reg/missing:1' }, ok: { image: 'x:1' } } } }), {
      pullBackoff: { minMs: 10 * S, maxMs: 80 * S },
    });
    docker.images.add('x:1');
    await clock.advance(0);
    for (let i = 0; i < 20; i++) await clock.advance(30 * S);
    expect(rec.currentState().apps.a?.services.ok?.status).toBe('running');
    const at = docker.pulls.map((p) => p.at);
    const gaps = at.slice(1).map((t, i) => t - (at[i] as number));
    // Equal jitter: each wait is between half and all of 10, 20, 40, 80, 80 ... seconds.
    const bases = [10, 20, 40, 80, 80, 80, 80].map((b) => b * S);
    gaps.slice(0, bases.length).forEach((g, i) => {
      expect(g).toBeGreaterThanOrEqual((bases[i] as number) / 2);
      expect(g).toBeLessThanOrEqual((bases[i] as number) + 100);
    });
    const missing = rec.currentState().apps.a?.services.missing;
    expect(missing).toMatchObject({ status: 'backoff', lastError: 'pull of reg/missing:1 failed: registry unreachable' });
    expect(missing?.nextRetryAt).toBeGreaterThan(clock.now());
    // The registry comes back: the next retry pulls, and the service runs.
    docker.pullBehaviour = () => Promise.resolve();
    await clock.advance(90 * S);
    expect(rec.currentState().apps.a?.services.missing?.status).toBe('running');
  });

  it('a newer target aborts the apply in flight, and a download no service wants any more', async () => {
    const { clock, docker, source, rec } = setup(target(1, { a: { services: { slow: { image: 'x:1' }, big: { image: 'reg/big:1' } } } }));
    docker.images.add('x:1');
    let pullAborted = false;
    docker.pullBehaviour = (_image, signal) =>
      new Promise((_, reject) =>
        signal?.addEventListener('abort', () => {
          pullAborted = true;
          reject(new Error('aborted'));
        }),
      );
    let createAborted = false;
    docker.createBehaviour = (d, signal) =>
      d.spec.environment.V === undefined
        ? new Promise((_, reject) =>
            signal?.addEventListener('abort', () => {
              createAborted = true;
              reject(new Error('aborted'));
            }),
          )
        : Promise.resolve();
    await clock.advance(0);
    expect(rec.currentState()).toMatchObject({ status: 'applying', targetVersion: 1 });
    source.set(target(2, { a: { services: { slow: { image: 'x:1', environment: { V: '2' } } } } }));
    await clock.advance(0);
    await clock.advance(0);
    expect(createAborted).toBe(true);
    expect(pullAborted).toBe(true);
    const s = rec.currentState();
    expect(s).toMatchObject({ status: 'applied', targetVersion: 2 });
    expect(Object.keys(s.apps.a?.services ?? {})).toEqual(['slow']);
    expect([...docker.instances.values()].map((i) => i.service)).toEqual(['slow']);
  });

  it('emits "changed" with the state, and nothing when nothing changed', async () => {
    const { clock, docker, states } = setup(target(3, { a: { services: { web: { image: 'x:1' } } } }));
    docker.images.add('x:1');
    await clock.advance(0);
    const n = states.length;
    expect(states.at(-1)).toMatchObject({ status: 'applied', targetVersion: 3, apps: { a: { services: { web: { status: 'running', runtime: 'docker', image: 'x:1' } } } } });
    await clock.advance(5 * MIN);
    expect(states.length).toBe(n);
  });
});
