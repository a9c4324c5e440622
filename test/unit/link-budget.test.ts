import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LinkBudget, periodAt, type BudgetRecord, type BudgetStore, type CounterBaseline } from '../../src/resilience/link-budget.js';
import { SqliteBudgetStore } from '../../src/resilience/link-budget-store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

/** Keeps what a SQLite store would, in memory. */
class MemoryBudgetStore implements BudgetStore {
  rows = new Map<string, BudgetRecord>();
  counter: CounterBaseline | null = null;
  writes = 0;
  latest(kind: string): BudgetRecord | undefined {
    return [...this.rows.values()].filter((r) => r.period.startsWith(`${kind}:`)).sort((a, b) => b.startsAt - a.startsAt)[0];
  }
  baseline(): CounterBaseline | null {
    return this.counter;
  }
  write(r: BudgetRecord, b: CounterBaseline | null): void {
    this.rows.set(r.period, { ...r });
    this.counter = b;
    this.writes++;
  }
  pruneOld(): void {}
}

const sample = (bytes: number, ifindex = 3, iface = 'wwan0') => ({ iface, ifindex, bytes });

describe('budget periods', () => {
  it('are UTC calendar days and months', () => {
    const t = Date.UTC(2026, 11, 31, 23, 59, 59);
    expect(periodAt(t, 'day')).toEqual({ period: 'day:2026-12-31', startsAt: Date.UTC(2026, 11, 31), endsAt: Date.UTC(2027, 0, 1), usedBytes: 0 });
    expect(periodAt(t, 'month')).toEqual({ period: 'month:2026-12', startsAt: Date.UTC(2026, 11, 1), endsAt: Date.UTC(2027, 0, 1), usedBytes: 0 });
    expect(periodAt(Date.UTC(2028, 1, 29, 12), 'month').endsAt).toBe(Date.UTC(2028, 2, 1));
  });
});

describe('link budget', () => {
  it('counts the counters\' growth from the first reading, and starts again at the next period', async () => {
    const clock = new FakeClock(Date.UTC(2026, 11, 31, 23, 0));
    const store = new MemoryBudgetStore();
    const b = new LinkBudget({ store, clock, kind: 'day', limitBytes: 10_000 });
    expect(b.observe(sample(50_000))).toBe(0); // where counting starts: what went before is not ours to count
    expect(b.observe(sample(53_000))).toBe(3_000);
    expect(b.view()).toMatchObject({ period: 'day', usedBytes: 3_000, remainingBytes: 7_000, resetsAt: Date.UTC(2027, 0, 1) });
    expect(b.roll()).toBe(false);
    clock.jumpWall(Date.UTC(2027, 0, 1, 0, 0, 1) - clock.now());
    expect(b.roll()).toBe(true);
    expect(b.view()).toMatchObject({ usedBytes: 0, remainingBytes: 10_000, resetsAt: Date.UTC(2027, 0, 2) });
    expect(b.observe(sample(54_000))).toBe(1_000);
    expect(store.rows.get('day:2026-12-31')?.usedBytes).toBe(3_000);
  });

  it('keeps its period when the clock steps back (a budget is never handed out twice)', () => {
    const clock = new FakeClock(Date.UTC(2026, 5, 10));
    const store = new MemoryBudgetStore();
    const b = new LinkBudget({ store, clock, kind: 'month', limitBytes: 1_000 });
    b.observe(sample(0));
    b.observe(sample(900));
    b.save(true);
    clock.jumpWall(Date.UTC(2026, 4, 30) - clock.now());
    expect(b.roll()).toBe(false);
    expect(b.view().usedBytes).toBe(900);
    // A restart with the clock still behind takes up the newer period it had.
    const again = new LinkBudget({ store, clock, kind: 'month', limitBytes: 1_000 });
    expect(again.view()).toMatchObject({ usedBytes: 900, resetsAt: Date.UTC(2026, 6, 1) });
  });

  it('counts all of a reading after a counter reset, an interface made again, or a reboot', () => {
    const clock = new FakeClock();
    const b = new LinkBudget({ store: new MemoryBudgetStore(), clock, kind: 'month', limitBytes: 0 });
    b.observe(sample(10_000));
    expect(b.observe(sample(400))).toBe(400); // counters went back: reset
    expect(b.observe(sample(900, 4))).toBe(900); // new ifindex: the modem re-enumerated
    clock.reboot();
    expect(b.observe(sample(950, 4))).toBe(950); // same numbers after a reboot are new bytes
    // Another interface, or none metered: a new start of counting.
    expect(b.observe(sample(5_000, 9, 'ppp0'))).toBe(0);
    expect(b.observe(undefined)).toBe(0);
    expect(b.observe(sample(6_000, 9, 'ppp0'))).toBe(0);
    expect(b.view()).toMatchObject({ usedBytes: 2_250, limitBytes: 0, remainingBytes: null });
    expect(b.remaining()).toBe(Number.POSITIVE_INFINITY);
  });

  it('reserves a batch\'s share so two batches never both start on the last bytes', () => {
    const b = new LinkBudget({ store: new MemoryBudgetStore(), clock: new FakeClock(), kind: 'month', limitBytes: 1_000 });
    b.observe(sample(0));
    b.observe(sample(300));
    expect(b.reserve(600)).toBe(true);
    expect(b.remaining()).toBe(100);
    expect(b.reserve(200)).toBe(false);
    b.observe(sample(850));
    b.release(600);
    expect(b.remaining()).toBe(150);
    expect(b.view().remainingBytes).toBe(150);
  });

  it('survives a restart in a real SQLite file, counting the bytes since the last write once', async () => {
    const clock = new FakeClock(Date.UTC(2026, 11, 6, 12));
    const path = join(dirs.make(), 'agent.db');
    const open = () => Store.open({ path, logger: silentLogger(), clock });
    const s1 = open();
    const b1 = new LinkBudget({ store: new SqliteBudgetStore(s1.db), clock, kind: 'month', limitBytes: 100_000, saveEveryMs: 60_000 });
    b1.observe(sample(1_000));
    b1.observe(sample(21_000));
    b1.save(true);
    b1.observe(sample(26_000)); // not written yet (throttled): the baseline written with 20 000 still says 21 000
    s1.close();
    const s2 = open();
    const b2 = new LinkBudget({ store: new SqliteBudgetStore(s2.db), clock, kind: 'month', limitBytes: 100_000 });
    expect(b2.view().usedBytes).toBe(20_000);
    expect(b2.observe(sample(30_000))).toBe(9_000);
    expect(b2.view()).toMatchObject({ usedBytes: 29_000, remainingBytes: 71_000, resetsAt: Date.UTC(2027, 0, 1) });
    // Twenty-six months later only the newest periods are kept.
    const st = new SqliteBudgetStore(s2.db);
    for (let m = 0; m < 26; m++) {
      clock.jumpWall(Date.UTC(2027, m, 2) - clock.now());
      b2.roll();
    }
    expect(s2.db.prepare('SELECT COUNT(*) AS n FROM link_budget').get()).toEqual({ n: 25 });
    expect(st.latest('month')?.period).toBe('month:2029-02');
    s2.close();
  });
});
