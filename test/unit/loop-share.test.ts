import { describe, expect, it } from 'vitest';
import { LoopShare } from '../../src/outbox/loop-share.js';
import { FakeClock } from '../helpers/fake-clock.js';

/** A share on fake time; `drain.on` says whether the outbox has messages leased to a sink. */
function setup(opts: { enabled?: boolean; maxPauseMs?: number } = {}) {
  const clock = new FakeClock();
  const drain = { on: true };
  const share = new LoopShare({ clock, draining: () => drain.on, ...opts });
  /** A turn of `ms` measured by begin/end, the fake clock moving through it. */
  const turn = async (ms: number): Promise<void> => {
    const end = share.begin();
    await clock.advance(ms);
    end();
  };
  return { clock, drain, share, turn };
}

describe('LoopShare', () => {
  it('while a drain runs, a turn is followed by a pause 1.5 times as long as the turn', async () => {
    const { clock, share, turn } = setup();
    await turn(8);
    expect(share.paused).toBe(true);
    let resumed = false;
    void share.ready()?.then(() => (resumed = true));
    await clock.advance(11);
    expect(resumed).toBe(false);
    await clock.advance(1);
    expect(resumed).toBe(true);
    expect(share.paused).toBe(false);
    expect(share.ready()).toBeUndefined();
  });

  it('with nothing draining, ingest never pauses (a producer alone loses nothing)', async () => {
    const { share, turn, drain } = setup();
    drain.on = false;
    await turn(50);
    share.spent(50);
    expect(share.paused).toBe(false);
    expect(share.ready()).toBeUndefined();
  });

  it('a turn run during a pause (a commit of what was read before it) extends it by twice its own pause: the time it took from the pause, and its own', async () => {
    const { clock, share } = setup();
    share.spent(10); // paused until 15
    await clock.advance(4);
    share.spent(6); // + 2 x 9: until 33
    const order: string[] = [];
    share.whenReady(() => order.push('ready'));
    await clock.advance(28);
    expect(order).toEqual([]);
    await clock.advance(1);
    expect(order).toEqual(['ready']);
  });

  it('a turn that begins inside another is part of it, counted once', async () => {
    const { clock, share } = setup();
    const outer = share.begin();
    await clock.advance(2);
    const inner = share.begin();
    share.spent(100); // a commit inside the turn: already in its time
    await clock.advance(3);
    inner();
    expect(share.paused).toBe(false);
    outer();
    expect(share.paused).toBe(true);
    await clock.advance(7);
    expect(share.paused).toBe(true);
    await clock.advance(1);
    expect(share.paused).toBe(false);
  });

  it('one pause owes at most maxPauseMs', async () => {
    const { clock, share } = setup({ maxPauseMs: 50 });
    share.spent(5_000);
    await clock.advance(49);
    expect(share.paused).toBe(true);
    await clock.advance(1);
    expect(share.paused).toBe(false);
  });

  it('disabled (settings.offline.shareLoopWithDrain false), it never pauses', async () => {
    const { share, turn } = setup({ enabled: false });
    await turn(20);
    share.spent(20);
    expect(share.paused).toBe(false);
  });

  it('stop ends the pause under way, lets its waiters go and leaves no timer behind', async () => {
    const { clock, share } = setup();
    share.spent(1_000);
    let resumed = 0;
    share.whenReady(() => resumed++);
    const ready = share.ready();
    share.stop();
    await ready;
    await clock.advance(0);
    expect(resumed).toBe(1);
    expect(share.paused).toBe(false);
    expect(clock.pendingSleepers).toBe(0);
    share.spent(10);
    share.begin()();
    expect(share.paused).toBe(false);
  });

  it('whenReady runs at once while ingest may go on', () => {
    const { share } = setup();
    let ran = false;
    share.whenReady(() => (ran = true));
    expect(ran).toBe(true);
  });
});
