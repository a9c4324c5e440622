import BetterSqlite3 from 'better-sqlite3';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { migrate } from '../../src/store/database.js';
import {
  moveAside,
  pendingMarkerPath,
  pruneQuarantined,
  QUARANTINE_KV_KEY,
  quarantineEvent,
  readPendingSalvage,
  salvageQuarantined,
  writePendingSalvage,
  type QuarantineReport,
  type SalvageStep,
} from '../../src/store/quarantine.js';
import { MIGRATIONS, Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { overwrite } from '../helpers/sqlite-pages.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The quarantine's parts one by one: the marker a crash leaves, the files moved aside and their names,
 * how many copies stay, the report and the line an operator reads.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const AT = '2026-12-05T04:00:00.000Z';
const clock = { now: () => Date.parse(AT) };

const openFds = (): number => readdirSync('/proc/self/fd').length;

/** A database as the agent leaves it, closed, with `count` queued messages. */
function populate(path: string, count: number): void {
  const store = Store.open({ path, logger: silentLogger(), clock });
  const insert = store.db.prepare('INSERT INTO outbox (id, channel, priority, created_at, encoding, bytes, payload) VALUES (?, ?, 20, 0, 0, ?, ?)');
  store.db.transaction(() => {
    for (let i = 0; i < count; i++) insert.run(`m-${i}`, 'telemetry', 20, JSON.stringify({ i, pad: 'p'.repeat(300) }));
  })();
  store.close();
}


function leafPages(path: string, table: string): number[] {
  const db = new BetterSqlite3(path, { readonly: true });
  const rows = db.prepare("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path").all(table) as { pageno: number }[];
  db.close();
  return rows.map((r) => r.pageno);
}

/** The steps the store gives the salvage: a migrated database at `path`. */
function steps(path: string, onSalvaged?: SalvageStep['onSalvaged']): SalvageStep {
  return {
    openFresh: () => {
      const db = new BetterSqlite3(path);
      db.pragma('journal_mode = WAL');
      migrate(db, MIGRATIONS);
      return db;
    },
    removeFresh: () => {
      for (const s of ['', '-wal', '-shm']) rmSync(path + s, { force: true });
    },
    ...(onSalvaged ? { onSalvaged } : {}),
  };
}

/** A damaged database moved aside as the store does it; returns the quarantined name. */
function damagedAside(dir: string, count = 400): { path: string; quarantinedTo: string } {
  const path = join(dir, 'agent.db');
  populate(path, count);
  overwrite(path, [leafPages(path, 'outbox')[3]!]);
  return { path, quarantinedTo: moveAside(path, clock.now()) };
}

describe('the salvage marker', () => {
  it('is absent: no salvage is pending', () => {
    expect(readPendingSalvage(join(dirs.make(), 'agent.db'))).toBeUndefined();
  });

  it('is written private, whole, with no temporary file left, and read back as written', () => {
    const path = join(dirs.make(), 'agent.db');
    const before = openFds();
    const pending = { reason: 'integrity check: page 9', at: AT, quarantinedTo: `${path}.corrupt-x` };
    writePendingSalvage(path, pending);
    expect(openFds()).toBe(before); // every descriptor it opened to fsync is closed again
    expect(statSync(pendingMarkerPath(path)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(pendingMarkerPath(path), 'utf8'))).toEqual(pending);
    expect(existsSync(`${pendingMarkerPath(path)}.tmp`)).toBe(false);
    expect(readPendingSalvage(path)).toEqual(pending);
  });

  it('fills in what a marker lacks: a generic reason, the epoch, no quarantined copy', () => {
    const path = join(dirs.make(), 'agent.db');
    writeFileSync(pendingMarkerPath(path), JSON.stringify({ reason: 7, at: 8 }));
    expect(readPendingSalvage(path)).toEqual({ reason: 'a salvage was pending', at: new Date(0).toISOString() });
  });

  it('a torn marker still says a salvage is pending, and that the marker is unreadable', () => {
    const path = join(dirs.make(), 'agent.db');
    writeFileSync(pendingMarkerPath(path), '{"reason": "integ');
    expect(readPendingSalvage(path)).toEqual({ reason: 'a salvage was pending (its marker is unreadable)', at: new Date(0).toISOString() });
  });

  it('names only a quarantined copy of this database beside it, never another file', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    const named = (quarantinedTo: unknown): string | undefined => {
      writeFileSync(pendingMarkerPath(path), JSON.stringify({ reason: 'r', at: AT, quarantinedTo }));
      return readPendingSalvage(path)?.quarantinedTo;
    };
    expect(named(`${path}.corrupt-2026`)).toBe(`${path}.corrupt-2026`);
    expect(named(join(dir, 'other', 'agent.db.corrupt-2026'))).toBeUndefined();
    expect(named(join(dir, 'other.db.corrupt-2026'))).toBeUndefined();
    expect(named(join(dir, 'agent.db'))).toBeUndefined();
    expect(named(`${path}.corrupt-2026\0x`)).toBeUndefined();
    // Not a string: ignored, the rest of the marker still read.
    writeFileSync(pendingMarkerPath(path), JSON.stringify({ reason: 'r', at: AT, quarantinedTo: 5 }));
    expect(readPendingSalvage(path)).toEqual({ reason: 'r', at: AT });
  });
});

describe('moving a database aside', () => {
  it('moves the database, its WAL and shared memory under one time-stamped name, and never over an earlier copy', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    const names: string[] = [];
    for (let i = 0; i < 3; i++) {
      for (const s of ['', '-wal', '-shm']) writeFileSync(path + s, `copy ${i}${s}`);
      names.push(moveAside(path, clock.now()));
    }
    const stamp = `${path}.corrupt-2026-12-05T04-00-00-000Z`;
    expect(names).toEqual([stamp, `${stamp}-2`, `${stamp}-3`]);
    for (const [i, name] of names.entries()) {
      for (const s of ['', '-wal', '-shm']) expect(readFileSync(name + s, 'utf8')).toBe(`copy ${i}${s}`);
    }
    expect(existsSync(path)).toBe(false);
  });
});

describe('pruning quarantined copies', () => {
  it('keeps the newest copies with their WAL and shared memory, deletes the rest and says which', () => {
    // A '-wal' in the database's own name must not hide its copies.
    const dir = dirs.make();
    const path = join(dir, 'data-wal.db');
    const stamps = ['2026-12-05T04', '2026-12-01T04', '2026-12-04T04', '2026-12-02T04', '2026-12-03T04'];
    for (const st of stamps) for (const s of ['', '-wal', '-shm']) writeFileSync(`${path}.corrupt-${st}${s}`, st);
    writeFileSync(join(dir, 'unrelated.db.corrupt-2026-01-01'), 'x');
    const log = captureLogger();
    pruneQuarantined(path, 2, log.logger);
    const kept = readdirSync(dir).sort();
    expect(kept).toEqual([
      'data-wal.db.corrupt-2026-12-04T04', 'data-wal.db.corrupt-2026-12-04T04-shm', 'data-wal.db.corrupt-2026-12-04T04-wal',
      'data-wal.db.corrupt-2026-12-05T04', 'data-wal.db.corrupt-2026-12-05T04-shm', 'data-wal.db.corrupt-2026-12-05T04-wal',
      'unrelated.db.corrupt-2026-01-01',
    ]);
    const deleted = log.records().filter((r) => r.level === 'warn' || r.level === 40);
    expect(deleted.map((r) => r.file)).toEqual(['01', '02', '03'].map((d) => `${path}.corrupt-2026-12-${d}T04`));
    expect(deleted[0]!.msg).toBe(`deleted the quarantined database ${path}.corrupt-2026-12-01T04: only the newest 2 are kept`);
  });

  it('a directory it cannot read: nothing deleted, no error', () => {
    const log = captureLogger();
    expect(() => pruneQuarantined(join(dirs.make(), 'gone', 'agent.db'), 1, log.logger)).not.toThrow();
    expect(log.records()).toEqual([]);
  });
});

describe('salvaging a quarantined copy', () => {
  it('reports recovered and lost as the sum of the tables, keeps the report with its time, clears the marker, says it in one line', () => {
    const { path, quarantinedTo } = damagedAside(dirs.make());
    writePendingSalvage(path, { reason: 'database disk image is malformed', at: AT, quarantinedTo });
    const log = captureLogger();
    const { db, report } = salvageQuarantined(path, { reason: 'database disk image is malformed', at: AT, quarantinedTo }, steps(path), log.logger);
    const tables = Object.values(report.tables);
    expect(report.tables.outbox!.lost).toBeGreaterThan(0);
    expect(report.recovered).toBe(tables.reduce((n, t) => n + t.recovered, 0));
    expect(report.lost).toBe(report.tables.outbox!.lost);
    expect(report.unknownLoss).toEqual([]);
    expect(report.salvageError).toBeNull();
    const row = db.prepare('SELECT value, updated_at FROM kv WHERE key = ?').get(QUARANTINE_KV_KEY) as { value: string; updated_at: number };
    expect(JSON.parse(row.value)).toEqual(report);
    expect(row.updated_at).toBe(Date.parse(AT));
    expect(existsSync(pendingMarkerPath(path))).toBe(false);
    const line = log.records().find((r) => r.level === 'error' || r.level === 50)!;
    expect(line.msg).toBe(
      `database ${path} is corrupt (database disk image is malformed); moved it to ${quarantinedTo} and salvaged ${report.recovered} rows into a fresh one, ${report.lost} lost`,
    );
    expect(line).toMatchObject({ file: path, quarantinedTo, recovered: report.recovered, lost: report.lost, salvageError: null });
    db.close();
  });

  it('without a marker on disk (it could not be written) the salvage still completes', () => {
    const { path, quarantinedTo } = damagedAside(dirs.make());
    const { db, report } = salvageQuarantined(path, { reason: 'r', at: AT, quarantinedTo }, steps(path), silentLogger());
    expect(report.recovered).toBeGreaterThan(0);
    db.close();
  });

  it('lets the owner account for the loss in the fresh database; a hook that throws is logged and the salvage stands', () => {
    const { path, quarantinedTo } = damagedAside(dirs.make());
    const seen: number[] = [];
    const first = salvageQuarantined(path, { reason: 'r', at: AT, quarantinedTo }, steps(path, (_db, s) => seen.push(s.tables.outbox!.lost!)), silentLogger());
    expect(seen).toEqual([first.report.lost]);
    first.db.close();
    const log = captureLogger();
    const second = salvageQuarantined(path, { reason: 'r', at: AT, quarantinedTo }, steps(path, () => {
      throw new Error('counters table missing');
    }), log.logger);
    expect(second.report.recovered).toBe(first.report.recovered);
    expect(second.report.salvageError).toBeNull();
    const warn = log.records().find((r) => r.level === 'warn' || r.level === 40)!;
    expect(warn).toMatchObject({ err: 'counters table missing', msg: 'could not account for the rows the salvage lost: counters table missing' });
    second.db.close();
  });

  it('a report that cannot be kept in the database is still returned and logged, with a warning', () => {
    const { path, quarantinedTo } = damagedAside(dirs.make());
    const log = captureLogger();
    const { db, report } = salvageQuarantined(path, { reason: 'r', at: AT, quarantinedTo }, steps(path, (d) => d.exec('DROP TABLE kv')), log.logger);
    expect(report.recovered).toBeGreaterThan(0);
    const warn = log.records().find((r) => r.level === 'warn' || r.level === 40)!;
    expect(warn.msg).toBe('could not keep the quarantine report in the database; it is reported for this run only');
    expect(String(warn.err)).toMatch(/no such table: kv/);
    db.close();
  });

  it('tables whose loss cannot be counted are named in the line, apart from the counted loss', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    populate(path, 400);
    overwrite(path, [1]); // the header and schema root: SQLite cannot open it, the page scan reads the outbox
    const quarantinedTo = moveAside(path, clock.now());
    const log = captureLogger();
    const { db, report } = salvageQuarantined(path, { reason: 'r', at: AT, quarantinedTo }, steps(path), log.logger);
    expect(report.tables.outbox!.recovered).toBe(400);
    const unknown = Object.entries(report.tables).filter(([, t]) => t.lost === null).map(([n]) => n);
    expect(unknown.length).toBeGreaterThan(1);
    expect(report.unknownLoss).toEqual(unknown);
    const line = log.records().find((r) => r.level === 'error' || r.level === 50)!;
    expect(String(line.msg)).toMatch(new RegExp(`, ${report.lost} lost \\(and an unknown number from ${unknown.join(', ')}\\)$`));
    db.close();
  });

  it('a file with nothing to salvage: the line says why instead of counting', () => {
    const dir = dirs.make();
    const path = join(dir, 'agent.db');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path, 'this is not a database '.repeat(300));
    const quarantinedTo = moveAside(path, clock.now());
    const log = captureLogger();
    const { db, report } = salvageQuarantined(path, { reason: 'file is not a database', at: AT, quarantinedTo }, steps(path), log.logger);
    expect(report.salvageError).toMatch(/^the damaged file cannot be read as a database: /);
    const line = log.records().find((r) => r.level === 'error' || r.level === 50)!;
    expect(line.msg).toBe(`database ${path} is corrupt (file is not a database); moved it to ${quarantinedTo}; ${report.salvageError}`);
    db.close();
  });
});

describe('the database-quarantined event', () => {
  it('carries the report and, per table, only what was recovered and lost', () => {
    const q: QuarantineReport = {
      quarantinedTo: '/d/agent.db.corrupt-x', at: AT, reason: 'r', recovered: 5, lost: 2, unknownLoss: ['outages'],
      salvageError: null, salvageMs: 12, tables: { outbox: { recovered: 5, lost: 2, errors: 3 } },
    };
    expect(quarantineEvent(q)).toEqual({
      quarantinedTo: '/d/agent.db.corrupt-x', at: AT, reason: 'r', recovered: 5, lost: 2, unknownLoss: ['outages'], salvageError: null,
      tables: { outbox: { recovered: 5, lost: 2 } },
    });
  });
});
