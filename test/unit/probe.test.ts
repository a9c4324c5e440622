import type * as os from 'node:os';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConnectionStatus } from '../../src/resilience/degradation.js';
import {
  ConnectivityProbe,
  probeTargetsFromUrls,
  type ConnectFn,
  type ConnectivityProbeOptions,
  type ProbeTarget,
  type ReachableEvent,
  probeSchedule,
  wakeStaggerMs,
  WAKE_SPREAD_MS,
} from '../../src/resilience/probe.js';
import { Wakeup, type SleepOutcome } from '../../src/resilience/wakeup.js';
import type { AgentError } from '../../src/util/errors.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { createLogger } from '../../src/util/logger.js';
import { seededRandom } from '../../src/util/random.js';
import { FakeStatus } from '../helpers/fake-status.js';
import { defaultConfig } from '../../src/config/schema.js';


type Iface = os.NetworkInterfaceInfo;
function iface(address: string, family: 'IPv4' | 'IPv6', internal = false): Iface {
  const base = { address, netmask: family === 'IPv4' ? '255.255.255.0' : 'ffff:ffff:ffff:ffff::', mac: '02:00:00:00:00:01', internal, cidr: null };
  return family === 'IPv4' ? { ...base, family } : { ...base, family, scopeid: 0 };
}

const TARGET: ProbeTarget = { host: 'api.example.test', port: 443 };

interface Harness {
  clock: FakeClock;
  status: FakeStatus;
  wakeup: Wakeup;
  probe: ConnectivityProbe;
  calls: Array<{ at: number; target: ProbeTarget; timeoutMs: number; signal: AbortSignal }>;
  events: ReachableEvent[];
  ac: AbortController;
  done: Promise<void>;
  /** What the next connects do. */
  outcome: { value: 'fail' | 'ok' | 'hang' };
  ifaces: { value: NodeJS.Dict<Iface[]> };
}

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) {
    h.ac.abort();
    await h.done;
  }
});

function setup(opts: { initial?: ConnectionStatus; seed?: number } & Partial<ConnectivityProbeOptions> = {}): Harness {
  const clock = new FakeClock();
  const status = new FakeStatus(opts.initial ?? 'online');
  const wakeup = new Wakeup({ clock, random: seededRandom(99), staggerMaxMs: 5000 });
  const calls: Harness['calls'] = [];
  const outcome: Harness['outcome'] = { value: 'fail' };
  const ifaces: Harness['ifaces'] = { value: { lo: [iface('127.0.0.1', 'IPv4', true)], eth0: [iface('fe80::1', 'IPv6')] } };
  const connect: ConnectFn = (target, timeoutMs, signal) => {
    calls.push({ at: clock.monotonic(), target, timeoutMs, signal });
    if (outcome.value === 'ok') return Promise.resolve();
    if (outcome.value === 'fail') return Promise.reject(new Error('ECONNREFUSED'));
    return new Promise<void>(() => undefined); // never settles, ignores the signal
  };
  const probe = new ConnectivityProbe({
    status,
    wakeup,
    targets: [TARGET],
    clock,
    random: seededRandom(opts.seed ?? 7),
    logger: createLogger({ level: 'silent', destination: process.stderr }),
    connect,
    interfaces: () => ifaces.value,
    ...opts,
  });
  const events: ReachableEvent[] = [];
  probe.on('reachable', (e) => events.push(e));
  const ac = new AbortController();
  const done = probe.start(ac.signal);
  const h = { clock, status, wakeup, probe, calls, events, ac, done, outcome, ifaces };
  harnesses.push(h);
  return h;
}

/** A Wakeup stand-in that records when the probe woke it and with what stagger. */
function wakeRecorder(now: () => number): { wakes: Array<{ at: number; staggerMaxMs: number | undefined }>; recorder: Wakeup } {
  const wakes: Array<{ at: number; staggerMaxMs: number | undefined }> = [];
  const recorder = {
    wake: (_reason: string, opts?: { staggerMaxMs?: number }): number => {
      wakes.push({ at: now(), staggerMaxMs: opts?.staggerMaxMs });
      return 0;
    },
  };
  return { wakes, recorder: recorder as unknown as Wakeup };
}

function gaps(times: number[]): number[] {
  return times.slice(1).map((t, i) => t - (times[i] ?? 0));
}

describe('ConnectivityProbe', () => {
  it('does not probe while online or degraded', async () => {
    const h = setup({ initial: 'online' });
    await h.clock.advance(120_000);
    h.status.set('degraded');
    await h.clock.advance(120_000);
    expect(h.calls).toHaveLength(0);
    expect(h.probe.probing()).toBe(false);
    expect(h.clock.pendingSleepers).toBe(0);
  });

  it('probes on a schedule that starts near 1 s, grows, and is capped at maxIntervalMs', async () => {
    const h = setup({ initial: 'offline', maxIntervalMs: 8000 });
    await h.clock.advance(120_000);
    const times = h.calls.map((c) => c.at);
    const g = [times[0] ?? 0, ...gaps(times)];
    // The first wait lies in [100 ms, 1 s] (full jitter), and so does the first at the cap, in
    // [100 ms, 8 s] (once, to spread the phases of a fleet that went offline together); each other one
    // in [0.9 x base, base] with base = min(8000, 1000 * 2^n): nearly even intervals, so a fleet keeps
    // its probes' phases apart.
    const bases = g.map((_, n) => Math.min(8000, 1000 * 2 ** n));
    const firstAtCap = bases.indexOf(8000);
    expect(firstAtCap).toBe(3);
    g.forEach((gap, n) => {
      expect(gap).toBeGreaterThanOrEqual(n === 0 || n === firstAtCap ? 100 : 0.9 * (bases[n] ?? 0));
      expect(gap).toBeLessThanOrEqual(bases[n] ?? 0);
    });
    expect(g[0]).toBeLessThanOrEqual(1000);
    expect(Math.max(...g)).toBeLessThanOrEqual(8000);
    expect(Math.max(...g.slice(-5))).toBeGreaterThan(2 * Math.max(...g.slice(0, 2)));
    // About 120 s / (4-8 s) probes, not hundreds.
    expect(h.calls.length).toBeGreaterThan(12);
    expect(h.calls.length).toBeLessThan(35);
    expect(h.calls.every((c) => c.timeoutMs === 3000)).toBe(true);
  });

  it('draws the first wait at the cap over all of it: a fleet that went offline together does not keep probing in step', async () => {
    const atCap: number[] = [];
    const after: number[] = [];
    for (let seed = 1; seed <= 40; seed++) {
      // Every device went offline at the same instant; each one's waits from its own random stream.
      const schedule = probeSchedule(1000, 8000, new FakeClock(), seededRandom(seed));
      const waits = Array.from({ length: 6 }, () => schedule.next());
      atCap.push(waits[3] ?? NaN);
      after.push(...waits.slice(4));
      schedule.reset();
      expect(schedule.next()).toBeLessThanOrEqual(1000);
    }
    // Over the whole cap (the phases spread over about one interval), then nearly even again.
    expect(Math.min(...atCap)).toBeLessThan(2000);
    expect(Math.max(...atCap)).toBeGreaterThan(6000);
    expect(Math.min(...after)).toBeGreaterThanOrEqual(7200);
    expect(Math.max(...after)).toBeLessThanOrEqual(8000);
  });

  it('jitters every wait', async () => {
    const a = setup({ initial: 'offline', seed: 1 });
    const b = setup({ initial: 'offline', seed: 2 });
    await a.clock.advance(600_000);
    await b.clock.advance(600_000);
    const capped = gaps(a.calls.map((c) => c.at)).slice(-10);
    expect(new Set(capped).size).toBeGreaterThan(5);
    expect(a.calls.map((c) => c.at).slice(0, 5)).not.toEqual(b.calls.map((c) => c.at).slice(0, 5));
  });

  it('emits reachable and wakes the sleepers when a probe connects', async () => {
    const h = setup({ initial: 'online', wakeSpreadMs: 5000 });
    const sleeps: Array<{ outcome?: SleepOutcome; at?: number }> = [];
    for (let i = 0; i < 3; i++) {
      const s: { outcome?: SleepOutcome; at?: number } = {};
      void h.wakeup.sleep(900_000).then((o) => Object.assign(s, { outcome: o, at: h.clock.monotonic() }));
      sleeps.push(s);
    }
    h.status.set('offline');
    await h.clock.advance(5000);
    expect(h.calls.length).toBeGreaterThan(0);
    expect(h.events).toHaveLength(0);

    h.outcome.value = 'ok';
    const probesBefore = h.calls.length;
    await h.clock.advance(10_000);
    expect(h.calls.length).toBeGreaterThan(probesBefore);
    expect(h.events).toHaveLength(1);
    const event = h.events[0];
    expect(event?.target).toEqual(TARGET);
    expect(event?.trigger).toBe('schedule');
    const probedAt = h.calls[probesBefore]?.at ?? NaN;
    expect(event?.at).toBe(new FakeClock().now() + probedAt);
    expect(h.wakeup.lastWake()?.woken).toBe(3);

    await h.clock.advance(5000);
    for (const s of sleeps) {
      expect(s.outcome).toBe('woken');
      expect(s.at).toBeGreaterThanOrEqual(probedAt);
      expect(s.at).toBeLessThanOrEqual(probedAt + 5000);
    }
  });

  it('counts the first success after going offline, then wakes again only after a failure', async () => {
    const h = setup({ initial: 'offline' });
    h.outcome.value = 'ok';
    await h.clock.advance(60_000);
    // The way was closed when the status went offline: the first connect is an opening...
    expect(h.events).toHaveLength(1);
    // ...but a cloud that keeps accepting TCP while its API still fails is not answered with a wake per probe.
    expect(h.calls.length).toBeGreaterThan(3);

    h.outcome.value = 'fail';
    await h.clock.advance(60_000);
    expect(h.events).toHaveLength(1);
    h.outcome.value = 'ok';
    await h.clock.advance(60_000);
    expect(h.events).toHaveLength(2);
  });

  it('does not wake anyone when the cloud took the device offline by answering errors, until a probe fails', async () => {
    // Offline because of 503s: the way is open; a handshake is not news and must not reset backoffs.
    const h = setup({ initial: 'offline', wayClosed: () => false });
    h.outcome.value = 'ok';
    await h.clock.advance(60_000);
    expect(h.calls.length).toBeGreaterThan(3);
    expect(h.events).toHaveLength(0);
    // Then the cloud really goes away and comes back: that opening wakes.
    h.outcome.value = 'fail';
    await h.clock.advance(60_000);
    h.outcome.value = 'ok';
    await h.clock.advance(60_000);
    expect(h.events).toHaveLength(1);
  });

  it('does not take interfaces it cannot read for a change of address', async () => {
    let unreadable = false;
    const base = { lo: [iface('127.0.0.1', 'IPv4', true)], eth0: [iface('192.168.1.20', 'IPv4')] };
    const h = setup({
      initial: 'offline',
      interfacesPollMs: 2000,
      maxIntervalMs: 512_000,
      random: () => 0.999,
      interfaces: () => {
        if (unreadable) throw new Error('EMFILE');
        return base;
      },
    });
    await h.clock.advance(64_000);
    const last = h.calls.at(-1)?.at ?? 0;
    unreadable = true;
    await h.clock.advance(4000);
    unreadable = false;
    await h.clock.advance(4000);
    expect(h.calls.filter((c) => c.at > last)).toHaveLength(0);
  });

  it('takes the first addresses it can read, after none at the start, as the ones to compare with', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    let current: NodeJS.Dict<Iface[]> | null = null;
    const h = setup({
      initial: 'offline',
      interfacesPollMs: 2000,
      maxIntervalMs: 512_000,
      random: () => 0.999,
      logger: createLogger({ level: 'debug', destination }),
      interfaces: () => {
        if (current === null) throw new Error('EMFILE');
        return current;
      },
    });
    await h.clock.advance(64_000);
    const last = h.calls.at(-1)?.at ?? 0;
    current = { eth0: [iface('192.168.1.20', 'IPv4')] };
    await h.clock.advance(4000);
    expect(h.calls.filter((c) => c.at > last)).toHaveLength(0);
    current = { eth0: [iface('192.168.1.21', 'IPv4')] };
    await h.clock.advance(2000);
    expect(h.calls.filter((c) => c.at > last)).toHaveLength(1);
    expect(lines.filter((l) => l.msg === 'network interfaces changed: probing now')).toHaveLength(1);
    expect(lines.find((l) => l.msg === 'cannot read network interfaces')).toMatchObject({ level: 20, err: 'EMFILE' });
  });

  it('probes at once when the non-internal addresses change, and restarts the schedule', async () => {
    // Waits of 0.1 s, then exactly base: probes near 0.1, 2.1, 6.1, 14.1, 30.1, 62.1, 126.1 s.
    const h = setup({ initial: 'offline', interfacesPollMs: 2000, maxIntervalMs: 512_000, random: () => 0 });
    await h.clock.advance(64_000);
    const last = h.calls.at(-1)?.at ?? 0;
    expect(last).toBeGreaterThan(60_000);

    // A change of internal addresses (loopback) is not a link coming up.
    h.ifaces.value = { ...h.ifaces.value, lo: [iface('127.0.0.1', 'IPv4', true), iface('::1', 'IPv6', true)] };
    await h.clock.advance(2000);
    expect(h.calls.filter((c) => c.at > last)).toHaveLength(0);

    h.outcome.value = 'ok';
    h.ifaces.value = { ...h.ifaces.value, eth0: [iface('fe80::1', 'IPv6'), iface('192.168.1.20', 'IPv4')] };
    const changedAt = h.clock.monotonic();
    await h.clock.advance(2000);
    const after = h.calls.filter((c) => c.at > last);
    expect(after).toHaveLength(1);
    expect(after[0]?.at).toBeLessThanOrEqual(changedAt + 2000);
    expect(h.events.map((e) => e.trigger)).toEqual(['interfaces']);

    // The schedule starts again near 1 s instead of waiting out the ~64 s it had grown to.
    await h.clock.advance(1000);
    expect(h.calls.filter((c) => c.at > last)).toHaveLength(2);
    expect(h.events).toHaveLength(1);
  });

  it('gives up a probe that does not connect within the timeout, aborting it', async () => {
    // Waits of 0.75 * base: probes at 750 ms, then 1500 ms after the previous round ends.
    const h = setup({ initial: 'offline', connectTimeoutMs: 500, random: () => 0.5 });
    h.outcome.value = 'hang';
    await h.clock.advance(1000);
    expect(h.calls).toHaveLength(1);
    const first = h.calls[0];
    expect(first?.signal.aborted).toBe(false);
    await h.clock.advance(500);
    expect(first?.signal.aborted).toBe(true);
    // The schedule goes on after the timed-out round.
    await h.clock.advance(2000);
    expect(h.calls).toHaveLength(2);
    expect(h.events).toHaveLength(0);
  });

  it('stops when the status leaves offline and starts again when it returns', async () => {
    const h = setup({ initial: 'online' });
    h.status.set('offline');
    expect(h.probe.probing()).toBe(true);
    await h.clock.advance(20_000);
    const n = h.calls.length;
    expect(n).toBeGreaterThan(2);

    h.status.set('degraded');
    expect(h.probe.probing()).toBe(false);
    await h.clock.advance(0);
    expect(h.clock.pendingSleepers).toBe(0);
    await h.clock.advance(300_000);
    expect(h.calls).toHaveLength(n);

    h.status.set('offline');
    await h.clock.advance(1000);
    expect(h.calls).toHaveLength(n + 1);
  });

  it('refuses a second start, naming what was started twice', async () => {
    const h = setup({ initial: 'offline' });
    const second = h.probe.start(h.ac.signal).then(
      () => 'ran',
      (err: unknown) => err,
    );
    h.ac.abort();
    expect(await second).toMatchObject({ code: 'ALREADY_STARTED', message: 'the connectivity probe was already started' });
  });

  it('started with a signal already aborted, returns at once and never probes', async () => {
    const h = setup({ initial: 'offline' });
    h.ac.abort();
    await h.done;
    const late = new ConnectivityProbe({
      status: h.status,
      wakeup: h.wakeup,
      targets: [TARGET],
      clock: h.clock,
      random: seededRandom(1),
      logger: createLogger({ level: 'silent', destination: process.stderr }),
      connect: () => Promise.resolve(),
    });
    let returned = false;
    void late.start(AbortSignal.abort()).then(() => (returned = true));
    await h.clock.advance(60_000);
    expect(returned).toBe(true);
    expect(late.probing()).toBe(false);
    expect(h.status.listenerCount('status')).toBe(0);
  });

  it('stops on abort: timers cleared, status listener removed', async () => {
    const h = setup({ initial: 'offline' });
    h.outcome.value = 'hang';
    await h.clock.advance(1500);
    expect(h.status.listenerCount('status')).toBe(1);
    const inFlight = h.calls.at(-1);
    h.ac.abort();
    await h.done;
    expect(inFlight?.signal.aborted).toBe(true);
    expect(h.status.listenerCount('status')).toBe(0);
    expect(h.probe.probing()).toBe(false);
    expect(h.clock.pendingSleepers).toBe(0);
  });

  it('logs the start of probing, a throwing listener and the way back, with their details', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const h = setup({ initial: 'offline', logger: createLogger({ level: 'debug', destination }) });
    h.probe.on('reachable', () => {
      throw new Error('listener bug');
    });
    void h.wakeup.sleep(900_000);
    h.outcome.value = 'ok';
    await h.clock.advance(7000);
    const pick = (l: Record<string, unknown>) => ({ level: l.level, msg: l.msg, targets: l.targets, err: l.err, target: l.target, trigger: l.trigger, woken: l.woken });
    expect(lines.map(pick)).toEqual([
      { level: 20, msg: 'offline: probing the cloud', targets: [TARGET] },
      { level: 40, msg: 'a reachable listener threw', err: 'listener bug' },
      { level: 30, msg: 'cloud reachable again: waking waiting loops', target: TARGET, trigger: 'schedule', woken: 1 },
    ].map((l) => ({ targets: undefined, err: undefined, target: undefined, trigger: undefined, woken: undefined, ...l })));
  });

  it('logs each failed probe at trace level, with the target and the error', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const h = setup({ initial: 'offline', logger: createLogger({ level: 'trace', destination }) });
    await h.clock.advance(1000);
    expect(h.calls).toHaveLength(1);
    expect(lines.filter((l) => l.level === 10)).toEqual([expect.objectContaining({ msg: 'probe failed', target: TARGET, err: 'ECONNREFUSED' })]);
  });

  it('waits for every target of a round: one refused does not hide another that connects a moment later', async () => {
    const other: ProbeTarget = { host: 'broker.example.test', port: 8883 };
    const ref: { clock?: FakeClock } = {};
    const h = setup({
      initial: 'offline',
      targets: [TARGET, other],
      connect: (target) => (target === other ? (ref.clock as FakeClock).sleep(100) : Promise.reject(new Error('ECONNREFUSED'))),
    });
    ref.clock = h.clock;
    await h.clock.advance(1500);
    expect(h.events.map((e) => e.target)).toEqual([other]);
  });

  it('sees the same addresses listed in another order as no change', async () => {
    let flip = false;
    const a = [iface('192.168.1.20', 'IPv4')];
    const b = [iface('10.0.0.7', 'IPv4')];
    const h = setup({
      initial: 'offline',
      interfacesPollMs: 2000,
      maxIntervalMs: 512_000,
      random: () => 0.999,
      interfaces: () => (flip ? { wlan0: b, eth0: a } : { eth0: a, wlan0: b }),
    });
    await h.clock.advance(64_000);
    const last = h.calls.at(-1)?.at ?? 0;
    flip = true;
    await h.clock.advance(4000);
    expect(h.calls.filter((c) => c.at > last)).toHaveLength(0);
  });

  it('says in the wake-up which target answered and what made it probe', async () => {
    const h = setup({ initial: 'offline' });
    h.outcome.value = 'ok';
    await h.clock.advance(1000);
    expect(h.wakeup.lastWake()?.reason).toBe('cloud reachable at api.example.test:443 (schedule)');
  });

  it('keeps no timer or listener of a finished round: a long outage leaks nothing', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const h = setup({ initial: 'offline', maxIntervalMs: 2000 });
      await h.clock.advance(60_000);
      expect(h.calls.length).toBeGreaterThan(20);
      // Between rounds only the loop's own wait is pending, not the deadline of a round that has ended.
      expect(h.clock.pendingSleepers).toBe(1);
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('logs an episode that fails unexpectedly', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    const h = setup({
      initial: 'offline',
      logger: createLogger({ level: 'error', destination }),
      wakeup: {
        wake: () => {
          throw new Error('wakeup bug');
        },
      },
    });
    h.outcome.value = 'ok';
    await h.clock.advance(7000);
    expect(lines).toEqual([expect.objectContaining({ level: 50, msg: 'connectivity probe stopped on an unexpected error', err: 'wakeup bug' })]);
  });

  it('spreads its wake over what is left of the spread since the way was last seen closed', async () => {
    const { wakes, recorder } = wakeRecorder(() => h.clock.monotonic());
    const h = setup({ initial: 'offline', wakeup: recorder, wakeSpreadMs: 20_000, maxIntervalMs: 8000, random: () => 0 });
    // Probes (random 0: waits of 0.1 s, then 2, 4, 0.1 (the first at the cap), 8 s) at 0.1, 2.1, 6.1,
    // 6.2, 14.2, 22.2 s, all refused.
    await h.clock.advance(20_000);
    const lastFailed = h.calls.at(-1)?.at ?? NaN;
    expect(lastFailed).toBe(14_200);
    h.outcome.value = 'ok';
    await h.clock.advance(10_000);
    // Found at 22.2 s, 8 s after the last refusal: 12 s of the 20 s are left.
    expect(wakes).toEqual([{ at: 22_200, staggerMaxMs: 12_000 }]);
  });

  it('times each round from the start of the previous one: a black-holed round does not push the schedule back', async () => {
    // Random 0: waits of 0.1 s, then 2, 4, 0.1 (the first at the cap, drawn over all of it), 8 s between
    // starts; every round hangs for its 3 s timeout.
    const h = setup({ initial: 'offline', maxIntervalMs: 8000, connectTimeoutMs: 3000, random: () => 0 });
    h.outcome.value = 'hang';
    await h.clock.advance(24_000);
    // The second round is due at 2.1 s, while the first waits until 3.1 s: it starts at once then; so
    // does the fourth, due at 7.2 s while the third waits until 10.1 s.
    expect(h.calls.map((c) => c.at)).toEqual([100, 3_100, 7_100, 10_100, 18_100]);
  });

  it('counts the spread of its wake from the start of the latest failed round, not from its timeout', async () => {
    const { wakes, recorder } = wakeRecorder(() => h.clock.monotonic());
    const h = setup({ initial: 'offline', wakeup: recorder, wakeSpreadMs: 20_000, maxIntervalMs: 8000, connectTimeoutMs: 3000, random: () => 0 });
    h.outcome.value = 'hang';
    await h.clock.advance(1_000);
    h.outcome.value = 'ok';
    await h.clock.advance(10_000);
    // The round started at 0.1 s failed at its timeout, 3.1 s, and the next one (due at 2.1 s) connects
    // then. The way may have opened any time after 0.1 s: 17 s of the 20 s are left, not 20.
    expect(wakes).toEqual([{ at: 3_100, staggerMaxMs: 17_000 }]);
  });

  it('wakes over what is left of the spread after the reach of the round that found the way, not after its own draw', async () => {
    const { wakes, recorder } = wakeRecorder(() => h.clock.monotonic());
    // Waits 0.55 s (over 1 s), 1.9 s, 3.8 s, then the first at the cap drawn over all 8 s: 4.05 s.
    const h = setup({ initial: 'offline', wakeup: recorder, wakeSpreadMs: 20_000, maxIntervalMs: 8000, random: () => 0.5 });
    await h.clock.advance(7_000);
    expect(h.calls.map((c) => c.at)).toEqual([550, 2_450, 6_250]);
    h.outcome.value = 'ok';
    await h.clock.advance(4_000);
    // A fleet that lost the way together finds it spread over the whole cap by that draw: 12 s are
    // left after the 8 s it could have taken, not the 15.95 s after the 4.05 s this device drew.
    expect(wakes).toEqual([{ at: 10_300, staggerMaxMs: 12_000 }]);
  });

  it('counts the way closed at the start of a round that connected only after a resend', async () => {
    const { wakes, recorder } = wakeRecorder(() => h.clock.monotonic());
    // The SYN went unanswered: the connect gets through 1.5 s after the round started at 0.55 s.
    const h = setup({ initial: 'offline', wakeup: recorder, wakeSpreadMs: 20_000, maxIntervalMs: 8000, random: () => 0.5, connect: () => h.clock.sleep(1_500) });
    await h.clock.advance(3_000);
    // The network chose the moment (every device whose round was under way gets through at it): 18.5 s
    // of the spread are left after the round's start, not 17.95 s after the offline stretch's start.
    expect(wakes).toEqual([{ at: 2_050, staggerMaxMs: 18_500 }]);
  });

  it('halves the cap down to the initial interval, so the doubling lands on the cap', () => {
    const schedule = probeSchedule(1_000, 38_000, new FakeClock(), () => 0);
    const reach = Array.from({ length: 8 }, () => {
      schedule.next();
      return schedule.reachMs;
    });
    // No round is timed at 32 s of a 38 s cap: each before the cap is at most half of it.
    expect(reach).toEqual([593.75, 1_187.5, 2_375, 4_750, 9_500, 19_000, 38_000, 38_000]);
  });

  it('wakeStaggerMs: what is left of the spread, at least 1 s (or the spread itself when smaller)', () => {
    expect(WAKE_SPREAD_MS).toBe(38_000);
    // The probe's own default is the setting's (settings.offline.wakeSpreadSeconds).
    expect(defaultConfig().settings.offline.wakeSpreadSeconds * 1000).toBe(WAKE_SPREAD_MS);
    expect(wakeStaggerMs(0)).toBe(38_000);
    expect(wakeStaggerMs(30_000)).toBe(8_000);
    expect(wakeStaggerMs(37_500)).toBe(1_000);
    expect(wakeStaggerMs(600_000)).toBe(1_000);
    expect(wakeStaggerMs(-5)).toBe(38_000);
    expect(wakeStaggerMs(5_000, 0)).toBe(0);
    expect(wakeStaggerMs(100, 500)).toBe(500);
  });

  it('still wakes the sleepers when a reachable listener throws', async () => {
    const h = setup({ initial: 'offline' });
    h.probe.on('reachable', () => {
      throw new Error('listener bug');
    });
    const s: { outcome?: SleepOutcome } = {};
    void h.wakeup.sleep(900_000).then((o) => (s.outcome = o));
    h.outcome.value = 'ok';
    await h.clock.advance(45_000);
    expect(h.events).toHaveLength(1);
    expect(s.outcome).toBe('woken');
  });
});

describe('probeTargetsFromUrls', () => {
  it('maps schemes to their default ports unless a port is given, without duplicates', () => {
    expect(
      probeTargetsFromUrls([
        'https://api.example.com/v1',
        'http://plain.example.com',
        'mqtt://broker.example.com',
        'mqtts://broker.example.com',
        'mqtts://broker.example.com:8884',
        'https://api.example.com:8443',
        'https://api.example.com/other',
        'http://[::1]:8080',
      ]),
    ).toEqual([
      { host: 'api.example.com', port: 443 },
      { host: 'plain.example.com', port: 80 },
      { host: 'broker.example.com', port: 1883 },
      { host: 'broker.example.com', port: 8883 },
      { host: 'broker.example.com', port: 8884 },
      { host: 'api.example.com', port: 8443 },
      { host: '::1', port: 8080 },
    ]);
  });

  it('names the bad URL and what was expected', () => {
    const bad = (url: string): AgentError => {
      try {
        probeTargetsFromUrls([url]);
      } catch (err) {
        return err as AgentError;
      }
      throw new Error('expected a throw');
    };
    expect(bad('not a url').code).toBe('PROBE_TARGET_INVALID');
    expect(bad('not a url').message).toContain('not a url');
    expect(bad('ftp://files.example.com').message).toMatch(/ftp:.*expected http, https/);
    expect(bad('ftp://files.example.com').code).toBe('PROBE_TARGET_INVALID');
    expect(bad('mqtt:///no-host')).toMatchObject({ code: 'PROBE_TARGET_INVALID', message: 'probe target "mqtt:///no-host" has no host' });
  });
});
