import type { Database, Statement } from 'better-sqlite3';
import type { Migration } from '../store/migrations.js';
import type { BudgetRecord, BudgetStore, CounterBaseline } from './link-budget.js';

/**
 * The metered links' use per budget period, and the counter reading it was last brought up to:
 *   link_budget    one row per period ("month:2026-12", "day:2026-12-06"): bytes used, its bounds (epoch ms)
 *   link_counter   one row: the metered interface's rx+tx at the last reading, with what tells a new
 *                  interface (ifindex) or a reboot (boot_id) from the same one, so the bytes since then
 *                  are counted after a restart. No row: no metered interface was being read.
 * Version 12 (10 and 11 belong to other work; gaps are allowed, versions are never reused).
 */
export const LINK_BUDGET_MIGRATION: Migration = {
  version: 12,
  name: 'metered link budget',
  up(db) {
    db.exec(`
      CREATE TABLE link_budget (
        period     TEXT PRIMARY KEY,
        starts_at  INTEGER NOT NULL,
        ends_at    INTEGER NOT NULL,
        used_bytes INTEGER NOT NULL CHECK (used_bytes >= 0),
        updated_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE link_counter (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        iface     TEXT NOT NULL,
        ifindex   INTEGER NOT NULL,
        boot_id   TEXT NOT NULL,
        bytes     INTEGER NOT NULL
      ) STRICT;
    `);
  },
};

/** Periods kept besides the current one (history for people; nothing reads them). */
const KEPT_PERIODS = 24;

interface PeriodRow {
  period: string;
  starts_at: number;
  ends_at: number;
  used_bytes: number;
}

export class SqliteBudgetStore implements BudgetStore {
  private readonly selectLatest: Statement<[string], PeriodRow>;
  private readonly upsert: Statement<[string, number, number, number, number]>;
  private readonly selectCounter: Statement<[], { iface: string; ifindex: number; boot_id: string; bytes: number }>;
  private readonly putCounter: Statement<[string, number, string, number]>;
  private readonly dropCounter: Statement<[]>;
  private readonly prune: Statement<[{ kind: string; keep: number }]>;
  private readonly save: (r: BudgetRecord, baseline: CounterBaseline | null, now: number) => void;

  constructor(db: Database) {
    this.selectLatest = db.prepare<[string], PeriodRow>('SELECT period, starts_at, ends_at, used_bytes FROM link_budget WHERE period LIKE ? ORDER BY starts_at DESC LIMIT 1');
    this.upsert = db.prepare(
      'INSERT INTO link_budget (period, starts_at, ends_at, used_bytes, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (period) DO UPDATE SET used_bytes = excluded.used_bytes, updated_at = excluded.updated_at',
    );
    this.selectCounter = db.prepare('SELECT iface, ifindex, boot_id, bytes FROM link_counter WHERE id = 1');
    this.putCounter = db.prepare('INSERT OR REPLACE INTO link_counter (id, iface, ifindex, boot_id, bytes) VALUES (1, ?, ?, ?, ?)');
    this.dropCounter = db.prepare('DELETE FROM link_counter');
    this.prune = db.prepare('DELETE FROM link_budget WHERE period LIKE @kind AND period NOT IN (SELECT period FROM link_budget WHERE period LIKE @kind ORDER BY starts_at DESC LIMIT @keep)');
    // The use and the reading it was brought up to change together, or a crash between them would count bytes twice.
    this.save = db.transaction((r: BudgetRecord, baseline: CounterBaseline | null, now: number) => {
      this.upsert.run(r.period, r.startsAt, r.endsAt, r.usedBytes, now);
      if (baseline) this.putCounter.run(baseline.iface, baseline.ifindex, baseline.bootId, baseline.bytes);
      else this.dropCounter.run();
    });
  }

  latest(kind: string): BudgetRecord | undefined {
    const row = this.selectLatest.get(`${kind}:%`);
    return row ? { period: row.period, startsAt: row.starts_at, endsAt: row.ends_at, usedBytes: row.used_bytes } : undefined;
  }

  baseline(): CounterBaseline | null {
    const row = this.selectCounter.get();
    return row ? { iface: row.iface, ifindex: row.ifindex, bootId: row.boot_id, bytes: row.bytes } : null;
  }

  write(record: BudgetRecord, baseline: CounterBaseline | null, now: number): void {
    this.save(record, baseline, now);
  }

  /** Keeps the newest periods of `kind`. */
  pruneOld(kind: string): void {
    this.prune.run({ kind: `${kind}:%`, keep: KEPT_PERIODS + 1 });
  }
}
