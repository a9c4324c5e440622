import type { Migration } from '../store/migrations.js';

/**
 * The outbox's tables: the durable queue of cloud-bound messages, its parked messages and counters.
 * The SQL text is kept byte for byte as shipped (SQLite keeps it in sqlite_master of every database
 * in the field), hence its indent.
 */
export const OUTBOX_MIGRATION: Migration = {
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
};
