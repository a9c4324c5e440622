import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { toPublish } from '../../src/mqtt/sink.js';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';
import { IdGenerator } from '../../src/util/ids.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { MIGRATIONS, Store } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Time you can trust (docs/outbox.md, "Time"): TTLs on the queue clock across wall-clock steps and
 * (faked) reboots, and wall timestamps corrected when the clock is first synced. Real SQLite files,
 * the fake clock.
 */

const MIN = 60_000;
const HOUR = 60 * MIN;
const YEARS_56 = 56 * 365.25 * 24 * HOUR;
const EPOCH = Date.UTC(1970, 0, 1);
const TODAY = Date.UTC(2026, 5, 1, 12);

const dirs = tempDirs();
const open: { store: Store; outbox: Outbox }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) await shut(o);
  dirs.cleanup();
});

async function shut(o: { store: Store; outbox: Outbox }): Promise<void> {
  await o.outbox.close();
  o.store.close();
}

/** An outbox on `path`; `sync.synced` is what the clock-sync source says. */
function make(clock: FakeClock, path: string, sync: { synced: boolean }) {
  const store = Store.open({ path, logger: silentLogger(), clock });
  const outbox = new Outbox({
    store,
    clock,
    ids: new IdGenerator(() => clock.now()),
    logger: silentLogger(),
    limits: { maxCount: 10_000, maxBytes: 1 << 30 },
    groupCommit: { windowMs: 0 },
    clockSynced: () => sync.synced,
  });
  const o = { store, outbox };
  open.push(o);
  return o;
}

function setup(startWall = TODAY, synced = false) {
  const clock = new FakeClock(startWall);
  const path = join(dirs.make(), 'agent.db');
  const sync = { synced };
  const first = make(clock, path, sync);
  /** Closes the outbox and the store, then opens them again (a restart of the agent). */
  const reopen = async (before?: () => unknown) => {
    const o = open.pop();
    if (o) await shut(o);
    await before?.();
    return make(clock, path, sync);
  };
  return { clock, path, sync, first, reopen };
}

const depth = (outbox: Outbox): number => {
  outbox.expire();
  return outbox.stats().depth;
};
const peekAll = (outbox: Outbox): OutboxMessage[] => outbox.peekBatch({ maxCount: 1_000, lease: false });

describe('TTL on the queue clock', () => {
  it('a wall step of +56 years (NTP at an RTC-less 1970 boot) expires nothing', async () => {
    const { clock, first } = setup(EPOCH);
    await first.outbox.enqueueMany(Array.from({ length: 100 }, (_, i) => ({ channel: 'telemetry', payload: i, ttlMs: 10 * MIN })));
    await clock.advance(1_000);
    clock.jumpWall(YEARS_56);
    expect(depth(first.outbox)).toBe(100);
    expect(peekAll(first.outbox)).toHaveLength(100);
    expect(first.outbox.stats().oldestAgeMs).toBe(1_000); // an age, not 56 years
    await clock.advance(10 * MIN - 1_001);
    expect(depth(first.outbox)).toBe(100);
    await clock.advance(1);
    expect(depth(first.outbox)).toBe(0);
    expect(first.outbox.stats().expired).toBe(100);
  });

  it('a message queued after a +56 year step expires after its TTL, not 56 years later', async () => {
    const { clock, first } = setup(EPOCH);
    clock.jumpWall(YEARS_56);
    await first.outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: MIN });
    await clock.advance(MIN - 1);
    expect(depth(first.outbox)).toBe(1);
    await clock.advance(1);
    expect(depth(first.outbox)).toBe(0);
  });

  it('a wall step of -1 hour extends nothing', async () => {
    const { clock, first } = setup();
    await first.outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: 10 * MIN });
    clock.jumpWall(-HOUR);
    // Shown as the wall clock reads now: the step moves the figure, not the expiry.
    expect(peekAll(first.outbox)[0]!.expiresAt).toBe(clock.now() + 10 * MIN);
    await first.outbox.enqueue({ channel: 'telemetry', payload: 2, ttlMs: 20 * MIN });
    await clock.advance(10 * MIN - 1);
    expect(depth(first.outbox)).toBe(2);
    await clock.advance(1);
    expect(peekAll(first.outbox).map((m) => m.payload)).toEqual([2]);
    await clock.advance(10 * MIN - 1);
    expect(depth(first.outbox)).toBe(1);
    await clock.advance(1);
    expect(depth(first.outbox)).toBe(0);
  });

  it('a restart of the agent in the same boot carries ages on exactly (the machine kept counting)', async () => {
    const { clock, reopen } = setup();
    const { outbox } = open[0]!;
    await outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: 10 * MIN });
    await clock.advance(3 * MIN);
    // Down for 6 minutes while the machine runs on; the wall clock steps back an hour meanwhile.
    const again = await reopen(async () => {
      clock.jumpWall(-HOUR);
      await clock.advance(6 * MIN);
    });
    await clock.advance(MIN - 1);
    expect(depth(again.outbox)).toBe(1);
    await clock.advance(1);
    expect(depth(again.outbox)).toBe(0);
  });

  it('across a reboot without a synced clock: the age reached in the last boot plus this boot only, never the wall-clock difference', async () => {
    const { clock, reopen } = setup(TODAY);
    const { outbox } = open[0]!;
    await outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: 10 * MIN });
    await clock.advance(4 * MIN);
    outbox.expire(); // the periodic expiry writes where the queue clock was last seen
    await clock.advance(20_000); // not written before the power cut: lost, so the message lives longer
    // An RTC-less board: back at 1970, up for 30 s before the agent starts.
    const again = await reopen(() => clock.reboot({ uptimeMs: 30_000, wallMs: EPOCH }));
    expect(depth(again.outbox)).toBe(1);
    await clock.advance(5 * MIN + 30_000 - 1); // 4 min + 30 s + 5.5 min - 1 ms
    expect(depth(again.outbox)).toBe(1);
    clock.jumpWall(YEARS_56); // NTP at last
    await clock.advance(1);
    expect(depth(again.outbox)).toBe(0);
  });

  it('across a reboot with the wall clock synced before and after: the downtime counts', async () => {
    const { clock, reopen } = setup(TODAY, true);
    const { outbox } = open[0]!;
    await outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: 10 * MIN });
    await outbox.enqueue({ channel: 'telemetry', payload: 2, ttlMs: 2 * HOUR });
    await clock.advance(2 * MIN);
    outbox.expire();
    const again = await reopen(() => clock.reboot({ uptimeMs: 10_000, wallDeltaMs: HOUR }));
    expect(peekAll(again.outbox).map((m) => m.payload)).toEqual([2]);
    await clock.advance(2 * HOUR - 2 * MIN - HOUR - 1);
    expect(depth(again.outbox)).toBe(1);
    await clock.advance(1);
    expect(depth(again.outbox)).toBe(0);
  });

  it('across a reboot synced before but not (yet) after: the downtime is not counted', async () => {
    const { clock, sync, reopen } = setup(TODAY, true);
    await open[0]!.outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: 10 * MIN });
    await clock.advance(2 * MIN);
    open[0]!.outbox.expire();
    const again = await reopen(() => {
      clock.reboot({ uptimeMs: 10_000, wallDeltaMs: HOUR });
      sync.synced = false;
    });
    expect(depth(again.outbox)).toBe(1);
    await clock.advance(8 * MIN - 10_000);
    expect(depth(again.outbox)).toBe(0);
  });

  it('across a reboot synced after but not before: the downtime is not counted (the last wall time seen was not trusted)', async () => {
    const { clock, sync, reopen } = setup(TODAY, false);
    await open[0]!.outbox.enqueue({ channel: 'telemetry', payload: 1, ttlMs: 10 * MIN });
    await clock.advance(2 * MIN);
    open[0]!.outbox.expire();
    const again = await reopen(() => {
      clock.reboot({ uptimeMs: 10_000, wallDeltaMs: HOUR });
      sync.synced = true;
    });
    expect(depth(again.outbox)).toBe(1);
    await clock.advance(8 * MIN - 10_000);
    expect(depth(again.outbox)).toBe(0);
  });
});

describe('rows queued before migration 9', () => {
  it('keep their expiry (the first queue clock starts at the wall clock) and their timestamp', async () => {
    const clock = new FakeClock(TODAY);
    const path = join(dirs.make(), 'agent.db');
    const old = Store.open({ path, logger: silentLogger(), clock, migrations: MIGRATIONS.filter((m) => m.version < 9) });
    old.db
      .prepare("INSERT INTO outbox (id, channel, priority, created_at, expires_at, encoding, bytes, payload) VALUES ('old', 'telemetry', 20, ?, ?, 0, 1, '1')")
      .run(TODAY - 5_000, TODAY + MIN);
    old.db.exec("INSERT INTO outbox_lane_totals (channel, priority, count, bytes) VALUES ('telemetry', 20, 1, 1)");
    old.close();
    await clock.advance(2_000);
    const { outbox } = make(clock, path, { synced: true });
    expect(peekAll(outbox)).toEqual([expect.objectContaining({ id: 'old', createdAt: TODAY - 5_000 })]);
    await clock.advance(MIN - 2_001);
    expect(depth(outbox)).toBe(1);
    await clock.advance(1);
    expect(depth(outbox)).toBe(0);
  });
});

describe('wall timestamps corrected when the clock is first synced', () => {
  const body = (m: OutboxMessage) => toPublish({ topics: deviceTopics('dev-1') }, m).body as { ts: number };

  it('what a sink sends for messages queued before the sync in the same boot: wall_now − (mono_now − mono)', async () => {
    const { clock, sync, first } = setup(EPOCH);
    await first.outbox.enqueue({ channel: 'telemetry', payload: { stream: 's', payload: 'a' } });
    await clock.advance(10_000);
    await first.outbox.enqueue({ channel: 'telemetry', payload: { stream: 's', payload: 'b' } });
    await clock.advance(5_000);
    expect(peekAll(first.outbox).map((m) => body(m).ts)).toEqual([EPOCH, EPOCH + 10_000]);
    clock.jumpWall(TODAY - clock.now()); // NTP steps the clock to today
    sync.synced = true;
    expect(peekAll(first.outbox).map((m) => body(m).ts)).toEqual([TODAY - 15_000, TODAY - 5_000]);
    // Queued after the sync: its own stamp, even if the wall clock is stepped again later.
    await first.outbox.enqueue({ channel: 'telemetry', payload: { stream: 's', payload: 'c' } });
    clock.jumpWall(-HOUR);
    expect(peekAll(first.outbox).map((m) => body(m).ts)).toEqual([TODAY - 15_000, TODAY - 5_000, TODAY]);
  });

  it('the correction survives a restart of the agent in the same boot', async () => {
    const { clock, sync, first, reopen } = setup(EPOCH);
    await first.outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await clock.advance(20_000);
    clock.jumpWall(TODAY - clock.now());
    sync.synced = true;
    expect(peekAll(first.outbox)[0]!.createdAt).toBe(TODAY - 20_000);
    const again = await reopen(() => clock.advance(1_000));
    expect(peekAll(again.outbox)[0]!.createdAt).toBe(TODAY - 20_000);
    expect(again.outbox.parked()).toEqual([]);
  });

  it('messages of an earlier boot keep their stamp: that boot never knew the time', async () => {
    const { clock, sync, first, reopen } = setup(EPOCH);
    await first.outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await clock.advance(20_000);
    const again = await reopen(() => clock.reboot({ wallMs: EPOCH + 5 }));
    clock.jumpWall(TODAY - clock.now());
    sync.synced = true;
    expect(peekAll(again.outbox)[0]!.createdAt).toBe(EPOCH);
  });

  it('a parked message shows the corrected time too', async () => {
    const { clock, sync, first } = setup(EPOCH);
    const { id } = await first.outbox.enqueue({ channel: 'events', payload: { type: 'x' } });
    await clock.advance(7_000);
    clock.jumpWall(TODAY - clock.now());
    sync.synced = true;
    first.outbox.park([id], 'refused');
    expect(first.outbox.parked()[0]!.createdAt).toBe(TODAY - 7_000);
  });
});
