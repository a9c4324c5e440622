import { describe, expect, it } from 'vitest';
import { ClockSync, TIMESYNCD_DIR, TIMESYNCD_FLAG, type ClockSyncState } from '../../src/resilience/clock-sync.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';

/** clockSynced from each source (timesyncd's files, timedatectl, plausibility) and the build-date rule. Fake clock, fake OS answers. */

const BUILT = Date.UTC(2026, 11, 1);
const TODAY = Date.UTC(2026, 11, 6);

function sync(o: { wall?: number; files?: string[]; timedatectl?: () => Promise<string> } = {}) {
  const clock = new FakeClock(o.wall ?? TODAY);
  const files = new Set(o.files ?? []);
  let asked = 0;
  const s = new ClockSync({
    clock,
    logger: silentLogger(),
    notBefore: BUILT,
    exists: (p) => files.has(p),
    timedatectl: () => {
      asked++;
      return (o.timedatectl ?? (() => Promise.reject(Object.assign(new Error('spawn timedatectl ENOENT'), { code: 'ENOENT' }))))();
    },
  });
  return { s, clock, files, asked: () => asked };
}

describe('clock sync', () => {
  it('is pending, not synced, until the first check', () => {
    expect(sync().s.state).toEqual({ synced: false, source: 'pending', detail: 'not checked yet', since: null });
  });

  it("timesyncd: synced when its flag file exists, not synced while it runs without one; timedatectl is then not asked", async () => {
    const t = sync({ files: [TIMESYNCD_DIR], timedatectl: () => Promise.resolve('yes\n') });
    expect(await t.s.check()).toMatchObject({ synced: false, source: 'timesyncd', since: null });
    t.files.add(TIMESYNCD_FLAG);
    expect(await t.s.check()).toMatchObject({ synced: true, source: 'timesyncd', since: TODAY });
    expect(t.asked()).toBe(0);
  });

  it('timedatectl: its NTPSynchronized answer decides when timesyncd is not there', async () => {
    let answer = 'no\n';
    const t = sync({ timedatectl: () => Promise.resolve(answer) });
    expect(await t.s.check()).toMatchObject({ synced: false, source: 'timedatectl' });
    answer = 'yes\n';
    expect(await t.s.check()).toMatchObject({ synced: true, source: 'timedatectl', detail: 'timedatectl says NTPSynchronized=yes' });
  });

  it('plausibility when no source answers: synced unless the wall clock is before the build date; a missing timedatectl is asked once', async () => {
    const t = sync({ wall: Date.UTC(1970, 0, 1) });
    expect(await t.s.check()).toMatchObject({ synced: false, source: 'plausibility' });
    t.clock.jumpWall(TODAY - t.clock.now());
    expect(await t.s.check()).toMatchObject({ synced: true, source: 'plausibility', since: TODAY });
    expect(t.asked()).toBe(1);
  });

  it('a timedatectl that fails otherwise (timeout, no D-Bus yet) is asked again next time', async () => {
    let fail = true;
    const t = sync({ timedatectl: () => (fail ? Promise.reject(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })) : Promise.resolve('no')) });
    expect(await t.s.check()).toMatchObject({ source: 'plausibility', synced: true });
    fail = false;
    expect(await t.s.check()).toMatchObject({ source: 'timedatectl', synced: false });
  });

  it('a source that says synced with a wall clock before the build date is overruled', async () => {
    const t = sync({ wall: Date.UTC(1970, 0, 1), files: [TIMESYNCD_FLAG] });
    const s = await t.s.check();
    expect(s).toMatchObject({ synced: false, source: 'timesyncd' });
    expect(s.detail).toContain('before this agent was built');
  });

  it('tells listeners and the log when it changes, and checks often until synced', async () => {
    const { logger, text } = captureLogger();
    const files = new Set<string>([TIMESYNCD_DIR]);
    const clock = new FakeClock(TODAY);
    const s = new ClockSync({ clock, logger, notBefore: BUILT, exists: (p) => files.has(p), unsyncedIntervalMs: 1_000, syncedIntervalMs: 60_000 });
    const seen: ClockSyncState[] = [];
    s.onChange((st) => seen.push(st));
    const ac = new AbortController();
    const run = s.run(ac.signal);
    await clock.advance(0);
    expect(s.synced).toBe(false);
    files.add(TIMESYNCD_FLAG);
    await clock.advance(999);
    expect(s.synced).toBe(false);
    await clock.advance(1);
    expect(s.synced).toBe(true);
    expect(seen.map((x) => x.synced)).toEqual([false, true]);
    expect(text()).toContain('clock: synced');
    ac.abort();
    await run;
  });
});
