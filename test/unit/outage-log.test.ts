import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteOutageLog } from '../../src/resilience/outage-log.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';

const T0 = Date.UTC(2026, 0, 1);

describe('SqliteOutageLog', () => {
  let dir: string;
  let path: string;
  let store: Store;
  const open = (): Store => Store.open({ path, logger: pino({ level: 'silent' }), clock: new FakeClock() });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'outage-log-'));
    path = join(dir, 'agent.db');
    store = open();
  });

  afterEach(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('records an outage open, then closed with the duration given', () => {
    const log = new SqliteOutageLog(store);
    const id = log.open('api', T0, 'poll: ECONNREFUSED');
    expect(log.openOutages()).toEqual([{ id, channel: 'api', start: T0, end: null, durationMs: null, cause: 'poll: ECONNREFUSED' }]);
    // A duration from performance.now() is fractional; the STRICT table takes it rounded.
    log.close(id, T0 + 60_000, 59_999.6);
    expect(log.openOutages()).toEqual([]);
    expect(log.recent(10)).toEqual([{ id, channel: 'api', start: T0, end: T0 + 60_000, durationMs: 60_000, cause: 'poll: ECONNREFUSED' }]);
  });

  it('derives the duration from the times when none is given, never negative', () => {
    const log = new SqliteOutageLog(store);
    const a = log.open('api', T0, 'x');
    const b = log.open('mqtt', T0, 'y');
    log.close(a, T0 + 5000);
    log.close(b, T0 - 5000); // the wall clock stepped back during the outage
    const byId = new Map(log.recent(10).map((r) => [r.id, r]));
    expect(byId.get(a)?.durationMs).toBe(5000);
    expect(byId.get(b)?.durationMs).toBe(0);
  });

  it('does not reopen or move a closed outage when closed again', () => {
    const log = new SqliteOutageLog(store);
    const id = log.open('api', T0, 'x');
    log.close(id, T0 + 1000, 1000);
    log.close(id, T0 + 9000, 9000);
    log.close(12345, T0, 0); // unknown id: nothing happens
    expect(log.recent(10)).toEqual([{ id, channel: 'api', start: T0, end: T0 + 1000, durationMs: 1000, cause: 'x' }]);
  });

  it('lists recent outages most recent start first, up to the limit', () => {
    const log = new SqliteOutageLog(store);
    log.open('api', T0 + 2000, 'b');
    log.open('api', T0 + 3000, 'c');
    log.open('mqtt', T0 + 1000, 'a');
    expect(log.recent(10).map((r) => r.cause)).toEqual(['c', 'b', 'a']);
    expect(log.recent(2).map((r) => r.cause)).toEqual(['c', 'b']);
    expect(log.openOutages().map((r) => r.cause)).toEqual(['a', 'b', 'c']);
  });

  it('keeps at most maxRows closed outages, and never deletes an open one', () => {
    const log = new SqliteOutageLog(store, { maxRows: 5 });
    const first = log.open('mqtt', T0, 'still open');
    for (let i = 1; i <= 20; i++) log.close(log.open('api', T0 + i * 1000, `closed ${i}`), T0 + i * 1000 + 500);
    const rows = store.db.prepare('SELECT COUNT(*) AS n FROM outages').get() as { n: number };
    expect(rows.n).toBeLessThanOrEqual(6);
    expect(log.openOutages().map((r) => r.id)).toEqual([first]);
    expect(log.recent(5).map((r) => r.cause)).toEqual(['closed 20', 'closed 19', 'closed 18', 'closed 17', 'closed 16']);
  });

  it('survives closing and reopening the database', () => {
    const id = new SqliteOutageLog(store).open('api', T0, 'report: 503');
    store.close();
    store = open();
    const log = new SqliteOutageLog(store);
    expect(log.openOutages()).toEqual([{ id, channel: 'api', start: T0, end: null, durationMs: null, cause: 'report: 503' }]);
  });
});
