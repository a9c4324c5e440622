import type { Database } from 'better-sqlite3';

/**
 * Numbered schema migrations. `PRAGMA user_version` holds the number of the last one applied;
 * each runs in its own transaction. Never edit a migration that has shipped: add the next one.
 */
export interface Migration {
  version: number;
  name: string;
  up(db: Database): void;
}

export const MIGRATIONS: readonly Migration[] = [
  {
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
  },
];

export function latestVersion(migrations: readonly Migration[] = MIGRATIONS): number {
  return migrations.reduce((max, m) => Math.max(max, m.version), 0);
}
