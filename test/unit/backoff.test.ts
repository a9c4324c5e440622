import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../../src/config/schema.js';
import {
  Backoff,
  backoffFromSettings,
  FULL_JITTER_FLOOR_MS,
  MAX_RETRY_AFTER_MS,
  parseRetryAfter,
  seedBackoffDelay,
  type BackoffOptions,
  type BackoffStrategy,
} from '../../src/resilience/backoff.js';
import { AgentError } from '../../src/util/errors.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { seededRandom } from '../../src/util/random.js';

const DAY = 24 * 60 * 60 * 1000;

function make(strategy: BackoffStrategy, over: Partial<BackoffOptions> = {}): { backoff: Backoff; clock: FakeClock } {
  const clock = new FakeClock();
  const backoff = new Backoff({ minMs: 1000, maxMs: 60_000, strategy, clock, random: seededRandom(42), ...over });
  return { backoff, clock };
}

function failures(backoff: Backoff, n: number): number[] {
  return Array.from({ length: n }, () => backoff.failure());
}

/** `n` delays drawn at the cap: once base reaches maxMs it stays there. */
function drawsAtCap(strategy: BackoffStrategy, n: number, seed = 7): { delays: number[]; base: number } {
  const backoff = new Backoff({ minMs: 1000, maxMs: 8000, strategy, clock: new FakeClock(), random: seededRandom(seed) });
  failures(backoff, 4); // 1000, 2000, 4000, 8000: base is at the cap from here on
  return { delays: failures(backoff, n), base: 8000 };
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('Backoff without jitter', () => {
  it('grows by the multiplier from minMs and stops at maxMs', () => {
    const { backoff } = make('none');
    expect(failures(backoff, 9)).toEqual([1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    expect(backoff.attempt).toBe(9);
  });

  it('uses the multiplier it is given', () => {
    const { backoff } = make('none', { multiplier: 3, maxMs: 100_000 });
    expect(failures(backoff, 5)).toEqual([1000, 3000, 9000, 27_000, 81_000]);
  });

  it('stays finite and at the cap after thousands of failures', () => {
    for (const strategy of ['none', 'full', 'equal', 'decorrelated'] as const) {
      const { backoff } = make(strategy);
      const delays = failures(backoff, 5000);
      const last = delays.at(-1) ?? NaN;
      expect(Number.isFinite(last), strategy).toBe(true);
      expect(Math.max(...delays), strategy).toBeLessThanOrEqual(60_000);
    }
    const { backoff } = make('none');
    expect(failures(backoff, 5000).at(-1)).toBe(60_000);
  });

  it('refuses options that cannot work, naming them', () => {
    const clock = new FakeClock();
    const random = seededRandom(1);
    expect(() => new Backoff({ minMs: 0, maxMs: 1000, strategy: 'full', clock, random })).toThrow(/minMs/);
    expect(() => new Backoff({ minMs: 2000, maxMs: 1000, strategy: 'full', clock, random })).toThrow(/maxMs/);
    expect(() => new Backoff({ minMs: 100, maxMs: 1000, multiplier: 0.5, strategy: 'full', clock, random })).toThrow(AgentError);
  });

  it('says which option is wrong, its value and what was expected; the edges of each range are accepted', () => {
    const clock = new FakeClock();
    const random = seededRandom(1);
    const base = { minMs: 100, maxMs: 1000, strategy: 'full' as const, clock, random };
    const refusals: [Partial<BackoffOptions>, string][] = [
      [{ minMs: 0 }, 'backoff option minMs: expected a number of milliseconds above 0, got 0'],
      [{ maxMs: 99 }, 'backoff option maxMs: expected a number of milliseconds >= minMs (100), got 99'],
      [{ multiplier: 0.5 }, 'backoff option multiplier: expected a number >= 1, got 0.5'],
      [{ resetAfterMs: -1 }, 'backoff option resetAfterMs: expected a number of milliseconds >= 0, got -1'],
      [{ resetAfterMs: Number.NaN }, 'backoff option resetAfterMs: expected a number of milliseconds >= 0, got NaN'],
      [{ resetAfterMs: Number.POSITIVE_INFINITY }, 'backoff option resetAfterMs: expected a number of milliseconds >= 0, got Infinity'],
    ];
    for (const [over, message] of refusals) {
      expect(() => new Backoff({ ...base, ...over }), message).toThrow(message);
      try {
        new Backoff({ ...base, ...over });
      } catch (err) {
        expect((err as AgentError).code).toBe('BACKOFF_OPTIONS_INVALID');
      }
    }
    // A fixed delay (maxMs = minMs, multiplier 1) and an immediate reset are fine.
    expect(failures(new Backoff({ ...base, maxMs: 100, multiplier: 1, resetAfterMs: 0, strategy: 'none' }), 3)).toEqual([100, 100, 100]);
  });
});

describe('full jitter', () => {
  it('draws uniformly from [floor, base]: bounds, spread and mean', () => {
    const { delays, base } = drawsAtCap('full', 20_000);
    const floor = FULL_JITTER_FLOOR_MS;
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(floor);
    expect(Math.max(...delays)).toBeLessThanOrEqual(base);
    // It uses the whole range, unlike the seed's +0-30%.
    expect(Math.min(...delays)).toBeLessThan(floor + 0.02 * base);
    expect(Math.max(...delays)).toBeGreaterThan(0.98 * base);
    // Mean of U[floor, base] is (floor + base) / 2 = 4050; standard error ~16 over 20k draws.
    expect(Math.abs(mean(delays) - (floor + base) / 2)).toBeLessThan(100);
    // Uniform: each quarter of the range holds about a quarter of the draws.
    const quarter = (base - floor) / 4;
    for (let q = 0; q < 4; q++) {
      const n = delays.filter((d) => d >= floor + q * quarter && d < floor + (q + 1) * quarter).length;
      expect(n / delays.length).toBeGreaterThan(0.23);
      expect(n / delays.length).toBeLessThan(0.27);
    }
  });

  it('spreads even the first retry, so a fleet that failed together does not retry together', () => {
    const firsts = Array.from({ length: 2000 }, (_, i) => {
      const b = new Backoff({ minMs: 2000, maxMs: 900_000, strategy: 'full', clock: new FakeClock(), random: seededRandom(i) });
      return b.failure();
    });
    expect(Math.min(...firsts)).toBeGreaterThanOrEqual(FULL_JITTER_FLOOR_MS);
    expect(Math.max(...firsts)).toBeLessThanOrEqual(2000);
    expect(new Set(firsts.map((d) => Math.floor(d / 100))).size).toBeGreaterThan(15);
  });

  it('never goes below the floor, so an instantly failing link cannot busy-loop', () => {
    const zero = (): number => 0;
    const big = new Backoff({ minMs: 2000, maxMs: 60_000, strategy: 'full', clock: new FakeClock(), random: zero });
    expect(failures(big, 5)).toEqual([100, 100, 100, 100, 100]);
    // With a small first step the floor is half of it, which still leaves a spread on that step.
    const small = new Backoff({ minMs: 100, maxMs: 60_000, strategy: 'full', clock: new FakeClock(), random: zero });
    expect(small.failure()).toBe(50);
  });
});

describe('spread jitter', () => {
  it('draws the first retry of a run like full jitter, and every later one from [0.9 x step, step]', () => {
    const firsts: number[] = [];
    const laters: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const b = new Backoff({ minMs: 40_000, maxMs: 40_000, strategy: 'spread', clock: new FakeClock(), random: seededRandom(i) });
      firsts.push(b.failure());
      for (let k = 0; k < 3; k++) laters.push(b.failure());
    }
    // The first: over the whole step, so a fleet that failed together spreads over it.
    expect(Math.min(...firsts)).toBeGreaterThanOrEqual(FULL_JITTER_FLOOR_MS);
    expect(Math.max(...firsts)).toBeLessThanOrEqual(40_000);
    expect(new Set(firsts.map((d) => Math.floor(d / 4000))).size).toBe(10);
    // The later ones: within a tenth of the step, so the spread the first gave is kept.
    expect(Math.min(...laters)).toBeGreaterThanOrEqual(36_000);
    expect(Math.max(...laters)).toBeLessThanOrEqual(40_000);
    expect(Math.min(...laters)).toBeLessThan(36_100);
    expect(Math.max(...laters)).toBeGreaterThan(39_900);
  });

  it('draws a phased first retry (a moment of the device alone) like the later ones; other strategies ignore it', () => {
    const firsts: number[] = [];
    for (let i = 0; i < 500; i++) {
      const b = new Backoff({ minMs: 40_000, maxMs: 40_000, strategy: 'spread', clock: new FakeClock(), random: seededRandom(i) });
      firsts.push(b.failure({ phased: true }));
    }
    expect(Math.min(...firsts)).toBeGreaterThanOrEqual(36_000);
    expect(Math.max(...firsts)).toBeLessThanOrEqual(40_000);
    const half = (): number => 0.5;
    expect(new Backoff({ minMs: 40_000, maxMs: 40_000, strategy: 'full', clock: new FakeClock(), random: half }).failure({ phased: true })).toBe(100 + 0.5 * 39_900);
    expect(new Backoff({ minMs: 40_000, maxMs: 40_000, strategy: 'equal', clock: new FakeClock(), random: half }).failure({ phased: true })).toBe(30_000);
  });

  it('draws a shared retry (a moment the fleet shares, mid-run) over the whole step, as the first of a run; phased wins', () => {
    const shared: number[] = [];
    for (let i = 0; i < 500; i++) {
      const b = new Backoff({ minMs: 40_000, maxMs: 40_000, strategy: 'spread', clock: new FakeClock(), random: seededRandom(i) });
      b.failure();
      b.failure();
      shared.push(b.failure({ shared: true }));
    }
    expect(Math.min(...shared)).toBeLessThan(4_000);
    expect(Math.max(...shared)).toBeGreaterThan(36_000);
    expect(Math.max(...shared)).toBeLessThanOrEqual(40_000);
    const half = (): number => 0.5;
    const b = new Backoff({ minMs: 40_000, maxMs: 40_000, strategy: 'spread', clock: new FakeClock(), random: half });
    b.failure();
    expect(b.failure({ shared: true, phased: true })).toBe(38_000);
    expect(b.failure({ shared: true })).toBe(100 + 0.5 * 39_900);
  });

  it('grows by the multiplier to the cap, and starts over with a full-jitter draw after a reset', () => {
    const top = (): number => 0;
    const b = new Backoff({ minMs: 1000, maxMs: 10_000, strategy: 'spread', clock: new FakeClock(), random: top });
    expect(failures(b, 6)).toEqual([100, 2000, 4000, 8000, 10_000, 10_000]);
    b.reset();
    expect(b.failure()).toBe(100);
    expect(b.failure()).toBe(2000);
  });
});

describe('respread', () => {
  it('draws over the latest step as full jitter does, without counting a failure', () => {
    const draws = [0, 0.5, 0.999];
    let i = 0;
    const b = new Backoff({ minMs: 1000, maxMs: 10_000, strategy: 'spread', clock: new FakeClock(), random: () => draws[i++ % 3] as number });
    // Before any failure: over the first step.
    expect(b.respread()).toBe(100);
    b.failure();
    b.failure();
    b.failure();
    // The latest step was 4 s.
    i = 2;
    expect(b.respread()).toBeCloseTo(100 + 0.999 * 3900, 6);
    // Not a failure: the next step is still 8 s (spread: within a tenth of it).
    i = 0;
    expect(b.failure()).toBe(8000);
  });
});

describe('equal jitter', () => {
  it('draws from [base/2, base] with mean 3/4 base', () => {
    const { delays, base } = drawsAtCap('equal', 20_000);
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(base / 2);
    expect(Math.max(...delays)).toBeLessThanOrEqual(base);
    expect(Math.min(...delays)).toBeLessThan(base * 0.52);
    expect(Math.max(...delays)).toBeGreaterThan(base * 0.98);
    expect(Math.abs(mean(delays) - 0.75 * base)).toBeLessThan(60);
  });

  it('grows with the attempt', () => {
    const { backoff } = make('equal');
    const delays = failures(backoff, 5);
    delays.forEach((d, i) => {
      const base = 1000 * 2 ** i;
      expect(d).toBeGreaterThanOrEqual(base / 2);
      expect(d).toBeLessThanOrEqual(base);
    });
  });
});

describe('decorrelated jitter', () => {
  it('draws each delay from [minMs, 3 * previous], capped', () => {
    const { backoff } = make('decorrelated', { random: seededRandom(3) });
    let prev = 1000;
    const delays = failures(backoff, 5000);
    for (const d of delays) {
      expect(d).toBeGreaterThanOrEqual(1000);
      expect(d).toBeLessThanOrEqual(Math.min(60_000, prev * 3));
      prev = d;
    }
    expect(Math.max(...delays)).toBe(60_000);
    // It keeps wandering instead of locking onto the cap.
    expect(new Set(delays.slice(-100)).size).toBeGreaterThan(20);
  });

  it('starts again from minMs after a reset', () => {
    const { backoff } = make('decorrelated', { random: () => 0.999 });
    failures(backoff, 6);
    backoff.reset();
    const first = backoff.failure();
    expect(first).toBeGreaterThanOrEqual(1000);
    expect(first).toBeLessThanOrEqual(3000);
  });
});

describe('Retry-After', () => {
  it('is a lower bound on the delay', () => {
    const { backoff } = make('none');
    expect(backoff.failure({ retryAfterMs: 5000 })).toBe(5000);
    // A shorter Retry-After does not shorten the computed delay.
    expect(backoff.failure({ retryAfterMs: 500 })).toBe(2000);
    // And it does not feed the escalation.
    expect(backoff.failure()).toBe(4000);
  });

  it('is honoured above the cap, up to a day', () => {
    const { backoff } = make('full');
    expect(backoff.failure({ retryAfterMs: 120_000 })).toBe(120_000);
    expect(backoff.failure({ retryAfterMs: 365 * DAY })).toBe(MAX_RETRY_AFTER_MS);
    expect(MAX_RETRY_AFTER_MS).toBe(DAY);
  });

  it('ignores nonsense values', () => {
    for (const retryAfterMs of [Number.NaN, -5000, Number.POSITIVE_INFINITY, 0]) {
      const { backoff } = make('none');
      expect(backoff.failure({ retryAfterMs })).toBe(1000);
    }
  });

  it('works with a header parsed by parseRetryAfter', () => {
    const { backoff, clock } = make('none');
    expect(backoff.failure({ retryAfterMs: parseRetryAfter('30', clock.now()) })).toBe(30_000);
    expect(backoff.failure({ retryAfterMs: parseRetryAfter('Thu, 01 Jan 2026 00:01:00 GMT', clock.now()) })).toBe(60_000);
    expect(backoff.failure({ retryAfterMs: parseRetryAfter('in a while', clock.now()) })).toBe(4000);
  });
});

describe('parseRetryAfter', () => {
  const now = Date.UTC(2026, 0, 1, 0, 0, 0); // a Thursday

  it('reads delay-seconds', () => {
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter(' 5 ', now)).toBe(5000);
    expect(parseRetryAfter('0', now)).toBe(0);
  });

  it('reads the three HTTP-date forms as GMT', () => {
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Thursday, 01-Jan-26 00:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Thu Jan  1 00:00:30 2026', now)).toBe(30_000);
    expect(parseRetryAfter('Fri, 02 Jan 2026 00:00:00 GMT', now)).toBe(DAY);
  });

  it('gives 0 for a date in the past', () => {
    expect(parseRetryAfter('Wed, 31 Dec 2025 23:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('Sunday, 06-Nov-94 08:49:37 GMT', now)).toBe(0);
  });

  it('caps what it returns at a day', () => {
    expect(parseRetryAfter('99999999999', now)).toBe(MAX_RETRY_AFTER_MS);
    expect(parseRetryAfter('Fri, 01 Jan 2100 00:00:00 GMT', now)).toBe(MAX_RETRY_AFTER_MS);
  });

  it('reads every month, a one-digit asctime day, the last second of a day and a leap second', () => {
    const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
    months.forEach((mon, i) => {
      const minuteBefore = Date.UTC(2025, i, 2) - 60_000;
      expect(parseRetryAfter(`Mon, 02 ${mon} 2025 00:00:00 GMT`, minuteBefore), mon).toBe(60_000);
      expect(parseRetryAfter(`Mon, 02 ${mon.toUpperCase()} 2025 00:00:00 GMT`, minuteBefore), mon).toBe(60_000);
    });
    expect(parseRetryAfter('Thu Jan  1 00:00:30 2026', now)).toBe(30_000);
    expect(parseRetryAfter('Thu, 01 Jan 2026 23:59:59 GMT', now)).toBe(DAY - 1000);
    // :60 is read as :59, not as the next minute.
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:10:60 GMT', now)).toBe(10 * 60_000 + 59_000);
  });

  it('refuses an hour, minute or second out of range', () => {
    for (const bad of ['Thu, 01 Jan 2026 24:00:00 GMT', 'Thu, 01 Jan 2026 00:60:00 GMT', 'Thu, 01 Jan 2026 00:00:61 GMT']) {
      expect(parseRetryAfter(bad, now), bad).toBeUndefined();
    }
  });

  it('reads a two-digit year within 50 years ahead as this century, beyond as the last', () => {
    // now is 2026: 76 is 2076 (50 years ahead), 77 is 1977.
    expect(parseRetryAfter('Sunday, 01-Jan-76 00:00:00 GMT', now)).toBe(MAX_RETRY_AFTER_MS);
    expect(parseRetryAfter('Saturday, 01-Jan-77 00:00:00 GMT', now)).toBe(0);
  });

  it('ignores anything else', () => {
    for (const bad of [undefined, '', 'soon', '-5', '1.5', '1e3', 'Thu, 31 Feb 2026 00:00:00 GMT', 'Thu, 01 Foo 2026 00:00:00 GMT', 'Thu, 01 Jan 2026 25:00:00 GMT', '2026-01-01T00:00:30Z']) {
      expect(parseRetryAfter(bad, now), String(bad)).toBeUndefined();
    }
  });
});

describe('reset after a stable link', () => {
  it('keeps escalating when a failure comes within resetAfterMs of a success', async () => {
    const { backoff, clock } = make('none', { resetAfterMs: 30_000 });
    expect(failures(backoff, 3)).toEqual([1000, 2000, 4000]);
    backoff.success();
    expect(backoff.stableSince).toBe(clock.monotonic());
    await clock.advance(10_000);
    expect(backoff.attempt).toBe(3);
    expect(backoff.failure()).toBe(8000);
    expect(backoff.stableSince).toBeUndefined();
  });

  it('starts again at minMs once the link has been good for resetAfterMs', async () => {
    const { backoff, clock } = make('none', { resetAfterMs: 30_000 });
    failures(backoff, 4);
    backoff.success();
    await clock.advance(31_000);
    expect(backoff.attempt).toBe(0);
    expect(backoff.failure()).toBe(1000);
    expect(backoff.failure()).toBe(2000);
  });

  it('resets at exactly resetAfterMs of good link, not a millisecond later', async () => {
    const { backoff, clock } = make('none', { resetAfterMs: 30_000 });
    failures(backoff, 4);
    backoff.success();
    await clock.advance(30_000);
    expect(backoff.failure()).toBe(1000);
    const other = make('none', { resetAfterMs: 30_000 });
    await other.clock.advance(100_000); // stability is measured from the success, not from the clock's start
    failures(other.backoff, 4);
    other.backoff.success();
    await other.clock.advance(29_999);
    expect(other.backoff.failure()).toBe(16_000);
  });

  it('counts stability from the first success, not the latest', async () => {
    const { backoff, clock } = make('none', { resetAfterMs: 30_000 });
    failures(backoff, 3);
    const since = clock.monotonic();
    backoff.success();
    await clock.advance(20_000);
    backoff.success();
    expect(backoff.stableSince).toBe(since);
    await clock.advance(11_000);
    expect(backoff.failure()).toBe(1000);
  });

  it('reset() goes back to the first step at once', () => {
    const { backoff } = make('none');
    failures(backoff, 5);
    backoff.reset();
    expect(backoff.attempt).toBe(0);
    expect(backoff.failure()).toBe(1000);
  });
});

describe('wall-clock jumps', () => {
  async function run(jump: number): Promise<number[]> {
    const clock = new FakeClock();
    const backoff = new Backoff({ minMs: 1000, maxMs: 60_000, strategy: 'full', resetAfterMs: 30_000, clock, random: seededRandom(11) });
    const out = failures(backoff, 3);
    backoff.success();
    clock.jumpWall(jump);
    await clock.advance(10_000);
    out.push(backoff.failure(), backoff.failure());
    backoff.success();
    clock.jumpWall(-jump);
    await clock.advance(31_000);
    out.push(backoff.failure(), backoff.attempt);
    return out;
  }

  it('a jump of a day either way changes nothing', async () => {
    const steady = await run(0);
    expect(await run(DAY)).toEqual(steady);
    expect(await run(-DAY)).toEqual(steady);
    // The scenario itself escalates, then resets after 31 s of stability.
    expect(steady[3]).toBeGreaterThan(FULL_JITTER_FLOOR_MS);
    expect(steady[6]).toBe(1);
    expect(steady[5]).toBeLessThanOrEqual(1000);
  });
});

describe('backoffFromSettings', () => {
  const clock = new FakeClock();

  it('maps settings.offline with the defaults', () => {
    const b = backoffFromSettings(defaultConfig().settings.offline, { clock, random: seededRandom(1) });
    expect({ minMs: b.minMs, maxMs: b.maxMs, strategy: b.strategy, resetAfterMs: b.resetAfterMs, multiplier: b.multiplier }).toEqual({
      minMs: 40_000,
      maxMs: 40_000,
      strategy: 'spread',
      resetAfterMs: 30_000,
      multiplier: 2,
    });
  });

  it('enableJitter: false means no jitter whatever the strategy', () => {
    const offline = { ...defaultConfig().settings.offline, enableJitter: false, jitter: 'decorrelated' as const, minBackoffSeconds: 1, maxBackoffSeconds: 10 };
    const b = backoffFromSettings(offline, { clock, random: seededRandom(1) });
    expect(b.strategy).toBe('none');
    expect(failures(b, 6)).toEqual([1000, 2000, 4000, 8000, 10_000, 10_000]);
  });

  it('uses the jitter strategy and the reset time it is given', () => {
    const offline = { ...defaultConfig().settings.offline, jitter: 'equal' as const, backoffResetAfterSeconds: 5 };
    const b = backoffFromSettings(offline, { clock, random: seededRandom(1) });
    expect(b.strategy).toBe('equal');
    expect(b.resetAfterMs).toBe(5000);
  });

  it('refuses a minimum above the maximum, naming both settings', () => {
    const offline = { ...defaultConfig().settings.offline, minBackoffSeconds: 60, maxBackoffSeconds: 10 };
    expect(() => backoffFromSettings(offline, { clock, random: seededRandom(1) })).toThrow(
      /settings\.offline\.minBackoffSeconds.*settings\.offline\.maxBackoffSeconds/,
    );
    expect(() => backoffFromSettings(offline, { clock, random: seededRandom(1) })).toThrow(expect.objectContaining({ code: 'CONFIG_INVALID' }));
    // Equal is a fixed delay, and fine.
    const fixed = backoffFromSettings({ ...offline, minBackoffSeconds: 10, enableJitter: false }, { clock, random: seededRandom(1) });
    expect(failures(fixed, 3)).toEqual([10_000, 10_000, 10_000]);
  });
});

describe('seedBackoffDelay (for benchmarks only)', () => {
  it('is base * 2^(failures-1) plus 0-30 %, capped', () => {
    expect(seedBackoffDelay(1000, 1, 60_000, () => 0)).toBe(1000);
    expect(seedBackoffDelay(1000, 3, 60_000, () => 0)).toBe(4000);
    expect(seedBackoffDelay(1000, 3, 60_000, () => 0.5)).toBeCloseTo(4600);
    expect(seedBackoffDelay(1000, 10, 60_000, () => 0.5)).toBe(60_000);
  });
});
