import type { Database } from 'better-sqlite3';

/**
 * Numbered schema migrations. `PRAGMA user_version` holds the number of the last one applied;
 * each runs in its own transaction. Never edit a migration that has shipped: add the next one.
 * Each part with tables of its own keeps its migration with its code; the store runs the list it is
 * given (src/database-schema.ts assembles the agent's) and knows none of the parts above it.
 */
export interface Migration {
  version: number;
  name: string;
  /**
   * Agents that know only the versions before this one can still read and write the database after it
   * (an added table, an added nullable column). Unset: not known, so a rollback past it is refused
   * (STORE_TOO_NEW) and the copy taken before a self-update is put back instead (docs/lifecycle.md).
   */
  olderAgentsCompatible?: boolean;
  up(db: Database): void;
}

/**
 * The store's own tables: settings, the target state, the outage log. The SQL text is kept byte for
 * byte as shipped (SQLite keeps it in sqlite_master of every database in the field), hence its indent.
 */
export const STORE_MIGRATION: Migration = {
  version: 1,
  name: 'key-value settings, target state, outages',
  up(db) {
    db.exec(`
        CREATE TABLE kv (
          key        TEXT PRIMARY KEY,
          value      TEXT NOT NULL,
          updated_at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE target_state (
          id          INTEGER PRIMARY KEY CHECK (id = 1),
          etag        TEXT,
          version     INTEGER,
          document    TEXT NOT NULL,
          source      TEXT NOT NULL,
          received_at INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE outages (
          id          INTEGER PRIMARY KEY AUTOINCREMENT,
          channel     TEXT NOT NULL,
          started_at  INTEGER NOT NULL,
          ended_at    INTEGER,
          duration_ms INTEGER,
          cause       TEXT NOT NULL
        ) STRICT;
        CREATE INDEX outages_by_start ON outages (started_at);
      `);
  },
};

/** The highest version in `migrations` (gaps are allowed: versions are never reused). */
export function latestVersion(migrations: readonly Migration[]): number {
  return migrations.reduce((max, m) => Math.max(max, m.version), 0);
}

/**
 * The table beside `user_version` holding the oldest schema version that can still read and write the
 * database (see `migrate`); written by each open, so a salvage does not copy it.
 */
export const COMPAT_TABLE = 'schema_compat';

/**
 * The oldest schema version whose agents can still use a database migrated up to `version`: the
 * newest migration up to it that older agents cannot live with (everything before it counts too).
 */
export function oldestCompatibleReader(migrations: readonly Migration[], version: number): number {
  return migrations.reduce((min, m) => (m.version <= version && !m.olderAgentsCompatible ? Math.max(min, m.version) : min), 0);
}
