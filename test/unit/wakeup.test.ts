import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { Wakeup, type SleepOutcome } from '../../src/resilience/wakeup.js';
import { isAbortError } from '../../src/util/clock.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { seededRandom } from '../../src/util/random.js';

function track(clock: FakeClock, p: Promise<SleepOutcome>): { outcome?: SleepOutcome; at?: number; error?: unknown } {
  const result: { outcome?: SleepOutcome; at?: number; error?: unknown } = {};
  p.then(
    (outcome) => {
      result.outcome = outcome;
      result.at = clock.monotonic();
    },
    (error: unknown) => {
      result.error = error;
      result.at = clock.monotonic();
    },
  );
  return result;
}

describe('Wakeup', () => {
  it('resolves "elapsed" when the time has passed, not before', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: seededRandom(1) });
    const r = track(clock, wakeup.sleep(1000));
    expect(wakeup.sleeping).toBe(1);
    await clock.advance(999);
    expect(r.outcome).toBeUndefined();
    await clock.advance(1);
    expect(r).toEqual({ outcome: 'elapsed', at: 1000 });
    expect(wakeup.sleeping).toBe(0);
    expect(clock.pendingSleepers).toBe(0);
  });

  it('wakes every sleeper, each within the stagger and not all at the same instant', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: seededRandom(42), staggerMaxMs: 5000 });
    const sleeps = Array.from({ length: 6 }, () => track(clock, wakeup.sleep(60_000)));
    await clock.advance(100);
    expect(wakeup.wake('cloud reachable')).toBe(6);
    expect(wakeup.lastWake()).toEqual({ reason: 'cloud reachable', at: clock.now(), woken: 6 });
    expect(wakeup.sleeping).toBe(0);

    await clock.advance(5000);
    for (const s of sleeps) {
      expect(s.outcome).toBe('woken');
      expect(s.at).toBeGreaterThanOrEqual(100);
      expect(s.at).toBeLessThanOrEqual(5100);
    }
    const times = new Set(sleeps.map((s) => s.at));
    expect(times.size).toBe(sleeps.length);
    expect(clock.pendingSleepers).toBe(0);
  });

  it('follows the injected random source for each delay', async () => {
    const clock = new FakeClock();
    const values = [0.5, 0.1];
    const wakeup = new Wakeup({ clock, random: () => values.shift() ?? 0, staggerMaxMs: 4000 });
    const a = track(clock, wakeup.sleep(60_000));
    const b = track(clock, wakeup.sleep(60_000));
    wakeup.wake('test');
    await clock.advance(10_000);
    expect(a).toEqual({ outcome: 'woken', at: 2000 });
    expect(b).toEqual({ outcome: 'woken', at: 400 });
  });

  it('never resolves later than the original deadline', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: () => 0.99, staggerMaxMs: 5000 });
    const r = track(clock, wakeup.sleep(1000));
    await clock.advance(500);
    wakeup.wake('test');
    await clock.advance(600);
    expect(r).toEqual({ outcome: 'woken', at: 1000 });
    expect(clock.pendingSleepers).toBe(0);
  });

  it('does not push a woken sleeper further out on a second wake, and only wakes current sleepers', async () => {
    const clock = new FakeClock();
    const values = [0.5, 0.9];
    const wakeup = new Wakeup({ clock, random: () => values.shift() ?? 0, staggerMaxMs: 1000 });
    const first = track(clock, wakeup.sleep(60_000));
    wakeup.wake('one');
    await clock.advance(100);
    const later = track(clock, wakeup.sleep(3000));
    expect(wakeup.wake('two')).toBe(1);
    await clock.advance(400);
    expect(first).toEqual({ outcome: 'woken', at: 500 });
    expect(later.outcome).toBeUndefined();
    await clock.advance(500);
    expect(later).toEqual({ outcome: 'woken', at: 1000 });
  });

  it('rejects with the AbortError on abort and leaves no sleeper or timer behind', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: seededRandom(3) });
    const ac = new AbortController();
    const r = track(clock, wakeup.sleep(10_000, ac.signal));
    await clock.advance(10);
    ac.abort();
    await clock.advance(0);
    expect(isAbortError(r.error)).toBe(true);
    expect(wakeup.sleeping).toBe(0);
    expect(clock.pendingSleepers).toBe(0);
    expect(wakeup.wake('nobody')).toBe(0);
  });

  it('rejects when aborted while staggering after a wake', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 5000 });
    const ac = new AbortController();
    const r = track(clock, wakeup.sleep(10_000, ac.signal));
    wakeup.wake('test');
    await clock.advance(1000);
    ac.abort();
    await clock.advance(10_000);
    expect(isAbortError(r.error)).toBe(true);
    expect(r.outcome).toBeUndefined();
    expect(clock.pendingSleepers).toBe(0);
  });

  it('removes its abort listener however the sleep ends', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 1000 });
    const ac = new AbortController();
    const elapsed = wakeup.sleep(100, ac.signal);
    const woken = wakeup.sleep(60_000, ac.signal);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(2);
    await clock.advance(100);
    await expect(elapsed).resolves.toBe('elapsed');
    wakeup.wake('test');
    await clock.advance(500);
    await expect(woken).resolves.toBe('woken');
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    expect(clock.pendingSleepers).toBe(0);
  });

  it('waits only for a wake when ms is Infinity', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 1000 });
    const r = track(clock, wakeup.sleep(Infinity));
    expect(clock.pendingSleepers).toBe(0);
    await clock.advance(30 * 86_400_000);
    expect(r.outcome).toBeUndefined();
    wakeup.wake('test');
    await clock.advance(500);
    expect(r.outcome).toBe('woken');
  });

  it('rejects at once for an already aborted signal', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: seededRandom(3) });
    const reason = new Error('shutdown');
    reason.name = 'AbortError';
    await expect(wakeup.sleep(1000, AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(wakeup.sleeping).toBe(0);
    expect(clock.pendingSleepers).toBe(0);
  });

  it('a sleep given an earlier wakeCount is woken (after its stagger) by a wake it was not there for, and only by one', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 2000 });
    const seen = wakeup.wakeCount;
    expect(wakeup.wake('probe')).toBe(0);
    expect(wakeup.wakeCount).toBe(seen + 1);
    const missed = track(clock, wakeup.sleep(60_000, undefined, { wokenSince: seen }));
    expect(wakeup.sleeping).toBe(0);
    await clock.advance(1000);
    expect(missed).toEqual({ outcome: 'woken', at: 1000 });
    const current = track(clock, wakeup.sleep(5_000, undefined, { wokenSince: wakeup.wakeCount }));
    await clock.advance(5000);
    expect(current).toEqual({ outcome: 'elapsed', at: 6000 });
    expect(clock.pendingSleepers).toBe(0);
  });

  it('a wake that gives its own stagger uses it, for current sleepers and for one that learns of the wake late', async () => {
    const clock = new FakeClock();
    const wakeup = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 2000 });
    const seen = wakeup.wakeCount;
    const a = track(clock, wakeup.sleep(60_000));
    expect(wakeup.wake('probe', { staggerMaxMs: 30_000 })).toBe(1);
    const late = track(clock, wakeup.sleep(60_000, undefined, { wokenSince: seen }));
    await clock.advance(14_999);
    expect(a.outcome).toBeUndefined();
    expect(late.outcome).toBeUndefined();
    await clock.advance(1);
    expect(a).toEqual({ outcome: 'woken', at: 15_000 });
    expect(late).toEqual({ outcome: 'woken', at: 15_000 });
    // A wake without one: the constructor's.
    const b = track(clock, wakeup.sleep(60_000));
    wakeup.wake('clock synced');
    await clock.advance(1000);
    expect(b).toEqual({ outcome: 'woken', at: 16_000 });
    // No stagger at all, and nonsense treated as the constructor's.
    const c = track(clock, wakeup.sleep(60_000));
    wakeup.wake('now', { staggerMaxMs: 0 });
    await clock.advance(0);
    expect(c).toEqual({ outcome: 'woken', at: 16_000 });
    const d = track(clock, wakeup.sleep(60_000));
    wakeup.wake('odd', { staggerMaxMs: Number.NaN });
    await clock.advance(1000);
    expect(d).toEqual({ outcome: 'woken', at: 17_000 });
  });

  it('a wake ends a paced sleep at its paced time while that is ahead, without the stagger; after it, with the stagger', async () => {
    const clock = new FakeClock();
    const w = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 10_000 });
    const ahead = track(clock, w.sleep(300_000, undefined, { pacedMs: 20_000 }));
    const behind = track(clock, w.sleep(300_000, undefined, { pacedMs: 1_000 }));
    await clock.advance(5_000);
    w.wake('probe');
    await clock.advance(20_000);
    expect(ahead).toMatchObject({ outcome: 'woken', at: 20_000 });
    // Its paced time had passed: the stagger's draw (half of 10 s) from the wake.
    expect(behind).toMatchObject({ outcome: 'woken', at: 10_000 });
  });
});
