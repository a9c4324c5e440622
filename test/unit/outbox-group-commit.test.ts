import { describe, expect, it } from 'vitest';
import { GroupCommit, realTimers, type GroupCommitTimers, type PendingCall } from '../../src/outbox/group-commit.js';

/** Group commit alone, on hand-driven timers: when a batch is committed, and with which calls. */

function manualTimers() {
  const idle = new Set<() => void>();
  const window = new Set<() => void>();
  const windows: number[] = [];
  const timers: GroupCommitTimers = {
    idle: (fn) => {
      idle.add(fn);
      return () => idle.delete(fn);
    },
    window: (ms) => (fn) => {
      windows.push(ms);
      window.add(fn);
      return () => window.delete(fn);
    },
  };
  const fire = (set: Set<() => void>) => {
    const fns = [...set];
    set.clear();
    for (const fn of fns) fn();
  };
  return { timers, windows, turnEnds: () => fire(idle), windowEnds: () => fire(window), armed: () => ({ idle: idle.size, window: window.size }) };
}

function group(o: { windowMs?: number; maxBatch?: number; inTransaction?: () => boolean; hold?: () => boolean } = {}) {
  const t = manualTimers();
  const commits: string[][] = [];
  const g = new GroupCommit<string>({
    windowMs: o.windowMs ?? 10,
    maxBatch: o.maxBatch ?? 100,
    inTransaction: o.inTransaction ?? (() => false),
    commit: (batch, messages) => {
      commits.push(batch.flatMap((c) => c.messages));
      expect(messages).toBe(batch.reduce((n, c) => n + c.messages.length, 0));
      for (const c of batch) c.resolve(c.messages.map((id) => ({ id })));
    },
    hold: o.hold,
    timers: t.timers,
  });
  const settled: string[] = [];
  const call = (...messages: string[]): PendingCall<string> => ({ messages, resolve: (r) => void settled.push(...r.map((x) => x.id)), reject: () => undefined });
  return { g, t, commits, settled, call };
}

describe('group commit', () => {
  it('holds a batch while an fsync is under way, growing, and commits it all at release', () => {
    let syncing = true;
    const { g, t, commits, call } = group({ windowMs: 7, hold: () => syncing });
    g.add(call('a'));
    t.turnEnds();
    g.add(call('b', 'c'));
    t.turnEnds();
    expect(commits).toEqual([]);
    expect(g.messages).toBe(3);
    expect([...g.queued()]).toEqual(['a', 'b', 'c']);
    expect(t.armed()).toEqual({ idle: 0, window: 1 });
    syncing = false;
    g.release();
    expect(commits).toEqual([['a', 'b', 'c']]);
    expect(t.armed()).toEqual({ idle: 0, window: 0 });
    g.release();
    expect(commits).toHaveLength(1); // nothing held: nothing to commit
  });

  it('commits a held batch once it has been held for the window (a slow disk)', () => {
    const { g, t, commits, call } = group({ windowMs: 7, hold: () => true });
    g.add(call('a'));
    t.turnEnds();
    t.turnEnds();
    expect(commits).toEqual([]);
    t.windowEnds();
    expect(commits).toEqual([['a']]);
    expect(t.windows).toEqual([7]);
    expect(g.messages).toBe(0);
  });

  it('commits at the end of every turn when nothing holds it, a lone producer included, without arming the window', () => {
    for (const hold of [undefined, () => false]) {
      const { g, t, commits, call } = group({ windowMs: 7, hold });
      g.add(call('a'));
      g.add(call('b'));
      t.turnEnds();
      g.add(call('c'));
      t.turnEnds();
      g.add(call('d'));
      t.turnEnds();
      expect(commits).toEqual([['a', 'b'], ['c'], ['d']]);
      expect(t.windows).toEqual([]);
      expect(t.armed()).toEqual({ idle: 0, window: 0 });
    }
  });

  it('commits a full batch at once, and only after the caller leaves its transaction', async () => {
    let inTx = true;
    const { g, commits, call } = group({ maxBatch: 3, inTransaction: () => inTx });
    g.add(call('a', 'b'));
    g.add(call('c'));
    g.add(call('d'));
    expect(commits).toEqual([]);
    inTx = false;
    await Promise.resolve();
    expect(commits).toEqual([['a', 'b', 'c', 'd']]);
    g.add(call('e', 'f', 'g'));
    expect(commits).toEqual([['a', 'b', 'c', 'd'], ['e', 'f', 'g']]);
  });

  it('flush commits now, and nothing when nothing waits', () => {
    const { g, t, commits, settled, call } = group({ windowMs: 0 });
    g.add(call('a'));
    t.turnEnds();
    expect(commits).toEqual([['a']]);
    g.add(call('b', 'c'));
    g.flush();
    g.flush();
    expect(commits).toEqual([['a'], ['b', 'c']]);
    expect(settled).toEqual(['a', 'b', 'c']);
  });

  it('runs on real timers by default', async () => {
    const commits: number[] = [];
    const g = new GroupCommit<number>({ windowMs: 5, maxBatch: 10, inTransaction: () => false, commit: (batch) => void commits.push(batch.length) });
    g.add({ messages: [1], resolve: () => undefined, reject: () => undefined });
    await new Promise((r) => setTimeout(r, 30));
    expect(commits).toEqual([1]);
    const cancel = realTimers.idle(() => commits.push(99));
    cancel();
    await new Promise((r) => setImmediate(r));
    expect(commits).toEqual([1]);
  });
});
