import type { Database } from 'better-sqlite3';
import { JOBS_MIGRATION } from '../jobs/migration.js';
import { MQTT_MIGRATION } from '../mqtt/migration.js';
import { SHADOW_MIGRATION } from '../shadow/migration.js';

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
  {
    version: 2,
    name: 'outbox: the durable queue of cloud-bound messages, its parked messages and counters',
    up(db) {
      // outbox: one row per undelivered message. `seq` (the rowid) is the arrival order; `payload`
      // is last so reading the other columns never touches a payload's overflow pages.
      //   outbox_lane      delivery order (priority, then seq within a channel), drop order (lowest
      //                    priority, oldest first), the oldest message per lane, and the per-lane
      //                    count/bytes at start: it covers (channel, priority, seq, bytes).
      //   outbox_id        ack/nack/park by message id, and duplicate detection of given ids.
      //   outbox_expiry    TTL expiry; partial, so messages without a TTL cost nothing.
      //   outbox_coalesce  at most one undelivered message per (channel, coalesce key).
      db.exec(`
        CREATE TABLE outbox (
          seq          INTEGER PRIMARY KEY,
          id           TEXT NOT NULL,
          channel      TEXT NOT NULL,
          priority     INTEGER NOT NULL,
          created_at   INTEGER NOT NULL,
          expires_at   INTEGER,
          coalesce_key TEXT,
          encoding     INTEGER NOT NULL CHECK (encoding IN (0, 1)),
          bytes        INTEGER NOT NULL,
          payload      ANY NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX outbox_id ON outbox (id);
        CREATE INDEX outbox_lane ON outbox (channel, priority, seq, bytes);
        CREATE INDEX outbox_expiry ON outbox (expires_at) WHERE expires_at IS NOT NULL;
        CREATE UNIQUE INDEX outbox_coalesce ON outbox (channel, coalesce_key) WHERE coalesce_key IS NOT NULL;

        CREATE TABLE outbox_parked (
          parked_seq INTEGER PRIMARY KEY,
          id         TEXT NOT NULL UNIQUE,
          channel    TEXT NOT NULL,
          priority   INTEGER NOT NULL,
          created_at INTEGER NOT NULL,
          expires_at INTEGER,
          encoding   INTEGER NOT NULL CHECK (encoding IN (0, 1)),
          bytes      INTEGER NOT NULL,
          parked_at  INTEGER NOT NULL,
          reason     TEXT NOT NULL,
          payload    ANY NOT NULL
        ) STRICT;

        CREATE TABLE outbox_counters (
          channel TEXT NOT NULL,
          counter TEXT NOT NULL,
          value   INTEGER NOT NULL,
          PRIMARY KEY (channel, counter)
        ) STRICT, WITHOUT ROWID;
      `);
    },
  },
  // Modules with tables of their own keep their migrations with their code.
  MQTT_MIGRATION,
  JOBS_MIGRATION,
  SHADOW_MIGRATION,
];

export function latestVersion(migrations: readonly Migration[] = MIGRATIONS): number {
  return migrations.reduce((max, m) => Math.max(max, m.version), 0);
}
