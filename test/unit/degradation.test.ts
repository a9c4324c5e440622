import { getEventListeners } from 'node:events';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DegradationController,
  type ConnectionStatus,
  type Degradable,
  type DegradationControllerOptions,
  type ModeEvent,
} from '../../src/resilience/degradation.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { createLogger } from '../../src/util/logger.js';
import { seededRandom } from '../../src/util/random.js';
import { FakeStatus } from '../helpers/fake-status.js';


interface Call {
  op: 'pause' | 'resume';
  name: string;
  at: number;
}

const THRESHOLD = 300_000;

function setup(opts: Partial<DegradationControllerOptions> & { initial?: ConnectionStatus } = {}) {
  const clock = new FakeClock();
  const status = new FakeStatus(opts.initial ?? 'online');
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const controller = new DegradationController({
    status,
    clock,
    random: seededRandom(11),
    logger: createLogger({ level: 'debug', destination }),
    enabled: true,
    thresholdMs: THRESHOLD,
    ...opts,
  });
  const calls: Call[] = [];
  const feature = (
    name: string,
    behaviour: { pauseThrows?: boolean; resumeThrows?: boolean; pauseHangs?: boolean; pauseMs?: number; resumeMs?: number } = {},
  ): Degradable => ({
    name,
    pause() {
      calls.push({ op: 'pause', name, at: clock.monotonic() });
      if (behaviour.pauseThrows) throw new Error(`${name} cannot pause`);
      if (behaviour.pauseHangs) return new Promise<void>(() => undefined);
      return behaviour.pauseMs ? clock.sleep(behaviour.pauseMs) : Promise.resolve();
    },
    async resume() {
      calls.push({ op: 'resume', name, at: clock.monotonic() });
      if (behaviour.resumeThrows) throw new Error(`${name} cannot resume`);
      if (behaviour.resumeMs) await clock.sleep(behaviour.resumeMs);
    },
  });
  const modes: ModeEvent[] = [];
  controller.on('mode', (e) => modes.push(e));
  const ac = new AbortController();
  const run = { done: Promise.resolve() };
  const start = (): void => {
    run.done = controller.start(ac.signal);
  };
  const h = { clock, status, controller, calls, feature, modes, ac, run, start, lines };
  running.push(h);
  return h;
}

const running: Array<{ ac: AbortController; run: { done: Promise<void> } }> = [];
afterEach(async () => {
  for (const h of running.splice(0)) {
    h.ac.abort();
    await h.run.done;
  }
});

const names = (calls: Call[], op: Call['op']): string[] => calls.filter((c) => c.op === op).map((c) => c.name);

describe('DegradationController', () => {
  it('pauses nothing before the threshold, then pauses in order and reports degraded', async () => {
    const h = setup();
    h.controller.register(h.feature('shadow-sync'), { order: 2 });
    h.controller.register(h.feature('cloud-jobs'), { order: 1 });
    h.controller.register(h.feature('metrics-upload'), { order: 2 });
    h.start();
    await h.clock.advance(1000);
    h.status.set('offline');
    await h.clock.advance(THRESHOLD - 1);
    expect(h.calls).toHaveLength(0);
    expect(h.controller.mode()).toBe('normal');

    await h.clock.advance(1);
    expect(names(h.calls, 'pause')).toEqual(['cloud-jobs', 'shadow-sync', 'metrics-upload']);
    expect(h.controller.mode()).toBe('degraded');
    expect(h.controller.since()).toBe(h.clock.now());
    expect(h.modes).toEqual([{ from: 'normal', to: 'degraded', at: h.clock.now(), reason: 'offline for 300 s (threshold 300 s)' }]);
    expect(h.controller.features()).toEqual([
      { name: 'cloud-jobs', order: 1, paused: true },
      { name: 'shadow-sync', order: 2, paused: true },
      { name: 'metrics-upload', order: 2, paused: true },
    ]);
  });

  it('cancels the pending degradation when the status comes back before the threshold', async () => {
    const h = setup();
    h.controller.register(h.feature('cloud-jobs'), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD - 1000);
    h.status.set('degraded'); // anything but offline counts as back
    await h.clock.advance(2 * THRESHOLD);
    expect(h.calls).toHaveLength(0);
    expect(h.controller.mode()).toBe('normal');

    // The next outage counts from its own start.
    h.status.set('offline');
    await h.clock.advance(THRESHOLD - 1);
    expect(h.calls).toHaveLength(0);
    await h.clock.advance(1);
    expect(names(h.calls, 'pause')).toEqual(['cloud-jobs']);
  });

  it('is not reset by a repeated offline event', async () => {
    const h = setup();
    h.controller.register(h.feature('cloud-jobs'), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD / 2);
    h.status.emit('status', { from: 'offline', to: 'offline', at: 0 });
    await h.clock.advance(THRESHOLD / 2);
    expect(names(h.calls, 'pause')).toEqual(['cloud-jobs']);
  });

  it('counts from start() when the status is already offline', async () => {
    const h = setup({ initial: 'offline' });
    h.controller.register(h.feature('cloud-jobs'), { order: 1 });
    // The agent has been up (and offline) a while before the controller starts: that time does not count.
    await h.clock.advance(2 * THRESHOLD);
    h.start();
    await h.clock.advance(THRESHOLD - 1);
    expect(h.calls).toHaveLength(0);
    await h.clock.advance(1);
    expect(h.controller.mode()).toBe('degraded');
  });

  it('resumes in reverse order, each within the stagger, then reports normal', async () => {
    const h = setup({ resumeStaggerMaxMs: 10_000 });
    for (const [i, name] of ['a', 'b', 'c', 'd', 'e'].entries()) h.controller.register(h.feature(name), { order: i });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD + 5000);
    expect(h.controller.mode()).toBe('degraded');

    h.status.set('online');
    const back = h.clock.monotonic();
    await h.clock.advance(10_000);
    const resumes = h.calls.filter((c) => c.op === 'resume');
    expect(resumes.map((c) => c.name)).toEqual(['e', 'd', 'c', 'b', 'a']);
    for (const r of resumes) {
      expect(r.at).toBeGreaterThanOrEqual(back);
      expect(r.at).toBeLessThanOrEqual(back + 10_000);
    }
    expect(new Set(resumes.map((r) => r.at)).size).toBe(resumes.length);
    expect(h.controller.mode()).toBe('normal');
    expect(h.modes.map((m) => `${m.from}->${m.to}`)).toEqual(['normal->degraded', 'degraded->normal']);
    // Normal only once the last feature has resumed.
    const lastResume = Math.max(...resumes.map((r) => r.at));
    expect(h.modes[1]?.at).toBeCloseTo(new FakeClock().now() + lastResume, 0);
    expect(lastResume).toBeGreaterThan(back + 1000);
    expect(h.modes[1]?.reason).toContain('online');
    expect(h.controller.features().every((f) => !f.paused)).toBe(true);
  });

  it('keeps going when a feature throws, and records the failure', async () => {
    const h = setup();
    h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b', { pauseThrows: true, resumeThrows: true }), { order: 2 });
    h.controller.register(h.feature('c'), { order: 3 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(names(h.calls, 'pause')).toEqual(['a', 'b', 'c']);
    expect(h.controller.mode()).toBe('degraded');
    expect(h.controller.features().find((f) => f.name === 'b')).toEqual({ name: 'b', order: 2, paused: true, error: 'b cannot pause' });

    h.status.set('online');
    await h.clock.advance(10_000);
    // A feature whose pause failed may be half-paused: it is still asked to resume.
    expect(names(h.calls, 'resume')).toEqual(['c', 'b', 'a']);
    expect(h.controller.mode()).toBe('normal');
    expect(h.controller.features().find((f) => f.name === 'b')).toEqual({ name: 'b', order: 2, paused: false, error: 'b cannot resume' });
  });

  it('does not wait forever on a pause that never finishes', async () => {
    const h = setup({ callTimeoutMs: 5000 });
    h.controller.register(h.feature('stuck', { pauseHangs: true }), { order: 1 });
    h.controller.register(h.feature('next'), { order: 2 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD + 4999);
    expect(names(h.calls, 'pause')).toEqual(['stuck']);
    await h.clock.advance(1);
    expect(names(h.calls, 'pause')).toEqual(['stuck', 'next']);
    expect(h.controller.features()[0]?.error).toContain('did not finish within 5 s');
  });

  it('logs one info line per mode change, with the reason and the features, not one per failure', async () => {
    const h = setup();
    h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b', { pauseThrows: true, resumeThrows: true }), { order: 2 });
    h.controller.register(h.feature('c', { pauseThrows: true }), { order: 3 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    h.status.set('online');
    await h.clock.advance(10_000);

    const info = h.lines.filter((l) => (l.level as number) >= 30);
    expect(info).toHaveLength(2);
    expect(info[0]).toMatchObject({
      msg: 'entering degraded mode: cloud-dependent features paused',
      mode: 'degraded',
      from: 'normal',
      reason: expect.stringContaining('offline'),
      paused: ['a'],
      failed: [
        { name: 'b', error: 'b cannot pause' },
        { name: 'c', error: 'c cannot pause' },
      ],
    });
    expect(info[1]).toMatchObject({
      msg: 'leaving degraded mode: features resumed',
      mode: 'normal',
      from: 'degraded',
      reason: expect.stringContaining('online'),
      resumed: ['c', 'b', 'a'],
      failed: [{ name: 'b', error: 'b cannot resume' }],
    });
    // A failure is shown until a later call of that feature works: c resumed fine, b did not.
    expect(h.controller.features()).toStrictEqual([
      { name: 'a', order: 1, paused: false },
      { name: 'b', order: 2, paused: false, error: 'b cannot resume' },
      { name: 'c', order: 3, paused: false },
    ]);
  });

  it('cancels the remaining resumes when offline again, and re-arms the threshold', async () => {
    const values = [0.9, 0.8, 0.1, 0.2]; // stagger draws, then anything
    const h = setup({ resumeStaggerMaxMs: 10_000, random: () => values.shift() ?? 0 });
    h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b'), { order: 2 });
    h.controller.register(h.feature('c'), { order: 3 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    h.calls.length = 0;

    // Delays sorted: 1000 (c), 8000 (b), 9000 (a).
    h.status.set('online');
    await h.clock.advance(2000);
    expect(names(h.calls, 'resume')).toEqual(['c']);
    h.status.set('offline');
    await h.clock.advance(20_000);
    expect(names(h.calls, 'resume')).toEqual(['c']);
    expect(h.controller.mode()).toBe('degraded');
    expect(h.controller.features().map((f) => f.paused)).toEqual([true, true, false]);

    // c is paused again only after a full threshold offline; the mode never left degraded.
    await h.clock.advance(THRESHOLD - 20_001);
    expect(names(h.calls, 'pause')).toEqual([]);
    await h.clock.advance(1);
    expect(names(h.calls, 'pause')).toEqual(['c']);
    expect(h.modes.map((m) => m.to)).toEqual(['degraded']);
    // No second mode change to announce: the re-pause is a debug line naming what was paused again.
    expect(h.lines.filter((l) => l.msg === 'offline again while resuming; features paused again')).toEqual([
      expect.objectContaining({ level: 20, paused: ['c'], failed: [] }),
    ]);

    h.status.set('online');
    await h.clock.advance(10_000);
    expect(names(h.calls, 'resume')).toEqual(['c', 'c', 'b', 'a']);
    expect(h.controller.mode()).toBe('normal');
    expect(h.modes.map((m) => m.to)).toEqual(['degraded', 'normal']);
    expect(h.lines.filter((l) => (l.level as number) >= 30)).toHaveLength(2);
  });

  it('resumes the rest when the connection comes back again before the threshold', async () => {
    const values = [0.9, 0.8, 0.1];
    const h = setup({ resumeStaggerMaxMs: 10_000, random: () => values.shift() ?? 0.5 });
    h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b'), { order: 2 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    h.status.set('online'); // delays 8000 (b), 9000 (a)
    await h.clock.advance(1000);
    h.status.set('offline');
    await h.clock.advance(1000);
    h.status.set('online'); // fresh stagger: 1000 (b), 5000 (a)
    await h.clock.advance(5000);
    expect(names(h.calls, 'resume')).toEqual(['b', 'a']);
    expect(h.controller.mode()).toBe('normal');
  });

  it('stops pausing when the connection comes back during the pauses, and resumes what was paused', async () => {
    const h = setup();
    h.controller.register(h.feature('slow', { pauseMs: 2000 }), { order: 1 });
    h.controller.register(h.feature('next'), { order: 2 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD + 1000);
    h.status.set('online');
    await h.clock.advance(20_000);
    expect(names(h.calls, 'pause')).toEqual(['slow']);
    expect(names(h.calls, 'resume')).toEqual(['slow']);
    expect(h.modes.map((m) => m.to)).toEqual(['degraded', 'normal']);
    expect(h.controller.mode()).toBe('normal');
  });

  it('pauses a feature registered while degraded and offline at once', async () => {
    const h = setup();
    h.controller.register(h.feature('a'), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD + 1000);
    h.controller.register(h.feature('late'), { order: 5 });
    await h.clock.advance(0);
    expect(names(h.calls, 'pause')).toEqual(['a', 'late']);
  });

  it('rejects a second feature with the same name', () => {
    const h = setup();
    h.controller.register(h.feature('a'), { order: 1 });
    expect(() => h.controller.register(h.feature('a'), { order: 2 })).toThrow(expect.objectContaining({ code: 'DEGRADABLE_DUPLICATE' }));
    expect(() => h.controller.register(h.feature('a'), { order: 2 })).toThrow('a degradable feature named "a" is already registered');
  });

  it('pauses features of equal order in the order they registered', async () => {
    const h = setup();
    for (const name of ['e1', 'e2', 'e3', 'e4', 'e5']) h.controller.register(h.feature(name), { order: 3 });
    h.controller.register(h.feature('first'), { order: 1 });
    h.controller.register(h.feature('e6'), { order: 3 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(names(h.calls, 'pause')).toEqual(['first', 'e1', 'e2', 'e3', 'e4', 'e5', 'e6']);
  });

  it('forgets an unregistered feature: not listed, never paused; unregistering twice removes nothing else', async () => {
    const h = setup();
    const unregisterA = h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b'), { order: 2 });
    h.controller.register(h.feature('c'), { order: 3 });
    unregisterA();
    unregisterA();
    expect(h.controller.features().map((f) => f.name)).toEqual(['b', 'c']);
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(names(h.calls, 'pause')).toEqual(['b', 'c']);
  });

  it('pauses nothing when disabled, and still reports normal', async () => {
    const h = setup({ enabled: false });
    h.controller.register(h.feature('a'), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(10 * THRESHOLD);
    expect(h.calls).toHaveLength(0);
    expect(h.controller.mode()).toBe('normal');
    // No error field on a feature whose calls never failed.
    expect(h.controller.features()).toStrictEqual([{ name: 'a', order: 1, paused: false }]);
    expect(h.status.listenerCount('status')).toBe(0);
  });

  it('with no feature registered still reports degraded after the threshold and normal once back', async () => {
    const h = setup();
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(h.controller.mode()).toBe('degraded');
    h.status.set('online');
    await h.clock.advance(0);
    expect(h.controller.mode()).toBe('normal');
    expect(h.modes.map((m) => m.to)).toEqual(['degraded', 'normal']);
  });

  it('does not resume a feature unregistered while paused, before or during the resumes', async () => {
    const values = [0.1, 0.9, 0.1, 0.9]; // stagger draws: b after 1 s, a after 9 s
    const h = setup({ resumeStaggerMaxMs: 10_000, random: () => values.shift() ?? 0 });
    const unregister = h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b'), { order: 2 });
    const unregisterC = h.controller.register(h.feature('c'), { order: 3 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(names(h.calls, 'pause')).toEqual(['a', 'b', 'c']);
    unregisterC();
    h.status.set('online');
    await h.clock.advance(2_000);
    expect(names(h.calls, 'resume')).toEqual(['b']);
    unregister();
    await h.clock.advance(20_000);
    expect(names(h.calls, 'resume')).toEqual(['b']);
    expect(h.controller.mode()).toBe('normal');
  });

  it('stays degraded when the connection drops again during the last resume', async () => {
    const h = setup({ resumeStaggerMaxMs: 0 });
    h.controller.register(h.feature('slow', { resumeMs: 5_000 }), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    h.status.set('online');
    await h.clock.advance(1_000);
    expect(names(h.calls, 'resume')).toEqual(['slow']);
    h.status.set('offline');
    await h.clock.advance(5_000);
    expect(h.controller.mode()).toBe('degraded');
    expect(h.modes.map((m) => m.to)).toEqual(['degraded']);
  });

  it('stays degraded when stopped during the last resume', async () => {
    const h = setup({ resumeStaggerMaxMs: 0 });
    h.controller.register(h.feature('slow', { resumeMs: 5_000 }), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    h.status.set('online');
    await h.clock.advance(1_000);
    h.ac.abort();
    await h.clock.advance(5_000);
    await h.run.done;
    expect(h.controller.mode()).toBe('degraded');
    expect(h.modes.map((m) => m.to)).toEqual(['degraded']);
  });

  it('does not pause a feature unregistered while the ones before it pause', async () => {
    const h = setup();
    h.controller.register(h.feature('slow', { pauseMs: 1_000 }), { order: 1 });
    const unregister = h.controller.register(h.feature('b'), { order: 2 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(names(h.calls, 'pause')).toEqual(['slow']);
    unregister();
    await h.clock.advance(1_000);
    expect(names(h.calls, 'pause')).toEqual(['slow']);
    expect(h.controller.mode()).toBe('degraded');
  });

  it('pauses nothing more once stopped in the middle of the pauses', async () => {
    const h = setup();
    h.controller.register(h.feature('slow', { pauseMs: 1_000 }), { order: 1 });
    h.controller.register(h.feature('b'), { order: 2 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(names(h.calls, 'pause')).toEqual(['slow']);
    h.ac.abort();
    await h.clock.advance(1_000);
    await h.run.done;
    expect(names(h.calls, 'pause')).toEqual(['slow']);
    expect(h.controller.mode()).toBe('normal');
  });

  it('leaves no listener on the shutdown signal behind, however many waits it went through', async () => {
    const h = setup({ thresholdMs: 1_000, resumeStaggerMaxMs: 1_000 });
    h.controller.register(h.feature('a'), { order: 1 });
    h.start();
    for (let i = 0; i < 20; i++) {
      h.status.set('offline');
      await h.clock.advance(1_000);
      h.status.set('online');
      await h.clock.advance(1_000);
    }
    expect(h.modes).toHaveLength(40);
    // The wait in progress holds one; every finished wait took its own away.
    expect(getEventListeners(h.ac.signal, 'abort').length).toBeLessThanOrEqual(1);
  });

  it('clears the deadline of each pause and resume once it has answered', async () => {
    const h = setup();
    h.controller.register(h.feature('a'), { order: 1 });
    h.controller.register(h.feature('b'), { order: 2 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(h.controller.mode()).toBe('degraded');
    // Degraded and offline, the controller waits for the status alone: no timer at all.
    expect(h.clock.pendingSleepers).toBe(0);
  });

  it('logs a mode listener that throws and still changes mode', async () => {
    const h = setup();
    h.controller.on('mode', () => {
      throw new Error('subscriber bug');
    });
    h.start();
    h.status.set('offline');
    await h.clock.advance(THRESHOLD);
    expect(h.controller.mode()).toBe('degraded');
    expect(h.lines.filter((l) => l.msg === 'a mode listener threw')).toEqual([expect.objectContaining({ level: 40, err: 'subscriber bug' })]);
  });

  it('refuses a second start, naming what was started twice', async () => {
    const h = setup();
    h.start();
    const second = h.controller.start(h.ac.signal).then(
      () => 'ran',
      (err: unknown) => err,
    );
    h.ac.abort();
    expect(await second).toMatchObject({ code: 'ALREADY_STARTED', message: 'the degradation controller was already started' });
  });

  it('stops on abort: no timer left, listener removed', async () => {
    const h = setup();
    h.controller.register(h.feature('a'), { order: 1 });
    h.start();
    h.status.set('offline');
    await h.clock.advance(1000);
    expect(h.status.listenerCount('status')).toBe(1);
    expect(h.clock.pendingSleepers).toBe(1);
    h.ac.abort();
    await h.run.done;
    expect(h.status.listenerCount('status')).toBe(0);
    expect(h.clock.pendingSleepers).toBe(0);
    await h.clock.advance(2 * THRESHOLD);
    expect(h.calls).toHaveLength(0);
  });
});
