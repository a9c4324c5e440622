import BetterSqlite3 from 'better-sqlite3';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { WalSync } from '../../src/store/wal-sync.js';
import { handFs } from '../helpers/hand-fs.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * WalSync: an fsync of the WAL off the event loop, one at a time, each covering every commit made
 * before it started. The file calls are driven by hand here (the fdatasyncs end when the test says),
 * and on real files at the end.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

describe('WalSync', () => {
  it('answers a caller only after an fdatasync that started after its call', () => {
    const h = handFs();
    const w = new WalSync('/data/agent.db', { fs: h.fs });
    const done: string[] = [];
    w.after(() => done.push('a'));
    expect(w.busy).toBe(true);
    w.after(() => done.push('b')); // during the first sync: its commit may not be in it
    w.after(() => done.push('c'));
    expect(h.running()).toBe(1);
    h.endSync();
    expect(done).toEqual(['a']);
    expect(h.running()).toBe(1); // one sync for both b and c
    expect(w.busy).toBe(true);
    h.endSync();
    expect(done).toEqual(['a', 'b', 'c']);
    expect(w.busy).toBe(false);
    expect(w.count).toBe(2);
    expect(h.log).toEqual(['open wal', 'sync wal', 'sync wal']); // the WAL stays open between syncs
  });

  it('lets a held commit in before the next sync starts, and has that sync cover it', () => {
    const h = handFs();
    const order: string[] = [];
    const w: WalSync = new WalSync('/data/agent.db', {
      fs: h.fs,
      onIdle: () => {
        order.push(`idle, busy ${w.busy}`);
        if (order.length === 1) w.after(() => order.push('held'));
      },
    });
    w.after(() => order.push('first'));
    h.endSync();
    // onIdle ran before the first's callers were answered and started the held commit's sync.
    expect(order).toEqual(['idle, busy false', 'first']);
    expect(h.running()).toBe(1);
    h.endSync();
    expect(order).toEqual(['idle, busy false', 'first', 'idle, busy false', 'held']);
  });

  it("gives every caller of a failed sync the error, naming the file, and opens the WAL afresh for the next", () => {
    const h = handFs();
    const w = new WalSync('/data/agent.db', { fs: h.fs });
    const errors: (string | undefined)[] = [];
    const causes: unknown[] = [];
    w.after((e) => {
      errors.push(e?.message);
      causes.push(e?.cause);
    });
    h.endSync(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    expect(errors).toEqual(['fdatasync of /data/agent.db-wal failed: EIO: i/o error, fdatasync']);
    expect(causes).toEqual([expect.objectContaining({ code: 'EIO' })]);
    expect(h.openFds()).toEqual([]);
    w.after((e) => errors.push(e?.message));
    h.endSync();
    expect(errors[1]).toBeUndefined();
    expect(h.log).toEqual(['open wal', 'sync wal', 'close wal', 'open wal', 'sync wal']);
  });

  it('syncs the database file when there is no WAL, without keeping it open, and says when neither opens', () => {
    const h = handFs({ missing: ['wal'] });
    const w = new WalSync('/data/agent.db', { fs: h.fs });
    let result: Error | undefined | 'pending' = 'pending';
    w.after((e) => (result = e));
    h.endSync();
    expect(result).toBeUndefined();
    expect(h.log).toEqual(['open wal', 'open db', 'sync db', 'close db']);
    expect(h.openFds()).toEqual([]);
    // A failure of that sync names the database file, not the WAL.
    let failed = '';
    w.after((e) => (failed = e?.message ?? ''));
    h.endSync(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    expect(failed).toBe('fdatasync of /data/agent.db failed: EIO: i/o error, fdatasync');
    expect(h.openFds()).toEqual([]);

    const bad = handFs({ failOpen: 'wal' });
    const w2 = new WalSync('/data/agent.db', { fs: bad.fs });
    const got: string[] = [];
    w2.after((e) => got.push(e?.message ?? 'ok'));
    expect(got).toEqual(["fdatasync of /data/agent.db-wal failed: EACCES: permission denied, open '/data/agent.db-wal'"]);
    expect(w2.busy).toBe(false);
  });

  it('closes the WAL at close once the syncs asked for are done, answering their callers', () => {
    const h = handFs();
    const w = new WalSync('/data/agent.db', { fs: h.fs });
    const done: string[] = [];
    w.after(() => done.push('a'));
    w.close();
    expect(h.openFds()).toEqual(['wal']);
    h.endSync();
    expect(done).toEqual(['a']);
    expect(h.openFds()).toEqual([]);
    const idle = handFs();
    const w2 = new WalSync('/data/agent.db', { fs: idle.fs });
    w2.close();
    expect(idle.log).toEqual([]);
    // Closed between syncs: the WAL kept open since the last one is closed at once.
    const w3 = new WalSync('/data/agent.db', { fs: idle.fs });
    w3.after(() => undefined);
    idle.endSync();
    expect(idle.openFds()).toEqual(['wal']);
    w3.close();
    expect(idle.openFds()).toEqual([]);
  });

  it('syncs a real WAL after commits made without their own fsync, and leaves no descriptor open after close', async () => {
    const path = join(dirs.make(), 'agent.db');
    const db = new BetterSqlite3(path);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec('CREATE TABLE t (x)');
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const before = fds();
    const w = new WalSync(path);
    for (let i = 0; i < 3; i++) {
      db.prepare('INSERT INTO t VALUES (?)').run(i);
      await new Promise<void>((resolve, reject) => w.after((e) => (e ? reject(e) : resolve())));
    }
    expect(w.count).toBe(3);
    expect(fds()).toBe(before + 1); // the WAL, kept open
    await new Promise<void>((resolve) => {
      w.after(() => resolve());
      w.close();
    });
    // The close runs on the thread pool: wait for it (bounded), then check.
    for (let i = 0; i < 200 && fds() !== before; i++) await new Promise((r) => setTimeout(r, 5));
    expect(fds()).toBe(before);
    db.close();
  });
});
