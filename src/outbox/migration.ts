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

/**
 * Per-lane totals kept with the rows (count and stored bytes of each channel at each priority),
 * written by the outbox in the transaction of every change, so a start reads a few rows instead of
 * scanning the `outbox_lane` index (a 30 MB read per million messages with a cold page cache).
 * Filled from the rows once, here. See `LaneTotalsCheck` for when a start may trust them.
 */
export const OUTBOX_LANE_TOTALS_MIGRATION: Migration = {
  version: 7,
  name: 'outbox: per-lane totals written with the rows',
  up(db) {
    db.exec(`
        CREATE TABLE outbox_lane_totals (
          channel  TEXT NOT NULL,
          priority INTEGER NOT NULL,
          count    INTEGER NOT NULL,
          bytes    INTEGER NOT NULL,
          PRIMARY KEY (channel, priority)
        ) STRICT, WITHOUT ROWID;
      `);
    db.exec(LANE_TOTALS_REBUILD_SQL);
  },
};

/** Replaces the per-lane totals with a count of the rows (what a migration, a bench filling a database, or a recount runs). */
export const LANE_TOTALS_REBUILD_SQL = `
  DELETE FROM outbox_lane_totals;
  INSERT INTO outbox_lane_totals (channel, priority, count, bytes)
    SELECT channel, priority, count(*), sum(bytes) FROM outbox GROUP BY channel, priority;
`;

/**
 * One row per lane whose persisted totals differ from its rows (none when they agree). The totals are
 * written in the same transaction as the rows, so within one snapshot they agree unless something
 * other than the outbox wrote the table (a person with `sqlite3`, a tool).
 */
export const LANE_TOTALS_MISMATCH_SQL = `
  SELECT coalesce(r.channel, t.channel) AS channel, coalesce(r.priority, t.priority) AS priority,
         coalesce(r.n, 0) AS rows, coalesce(t.count, 0) AS counted
  FROM (SELECT channel, priority, count(*) AS n, sum(bytes) AS b FROM outbox GROUP BY channel, priority) AS r
  FULL OUTER JOIN outbox_lane_totals AS t ON t.channel = r.channel AND t.priority = r.priority
  WHERE coalesce(r.n, 0) != coalesce(t.count, 0) OR coalesce(r.b, 0) != coalesce(t.bytes, 0)
  LIMIT 1
`;

/**
 * Time you can trust (docs/outbox.md, "Time"): each message is stamped with the boot it was queued
 * in and the queue clock then (`mono`: elapsed time that a wall-clock step never moves), and
 * `expires_at` is counted on that clock from now on. `outbox_boots` holds each boot's origin on the
 * queue clock, where it was last seen, and (once the clock was synced) its wall-clock origin.
 * Rows from before have NULL stamps; the queue clock starts at the wall clock's value, so their
 * `expires_at` needs no rewrite. Columns added, not a table rebuilt: a migration of a large queue is instant.
 */
export const OUTBOX_TIME_MIGRATION: Migration = {
  version: 9,
  name: 'outbox: boot and queue-clock stamps, the boots table',
  up(db) {
    db.exec(`
        ALTER TABLE outbox ADD COLUMN boot INTEGER;
        ALTER TABLE outbox ADD COLUMN mono INTEGER;
        ALTER TABLE outbox_parked ADD COLUMN boot INTEGER;
        ALTER TABLE outbox_parked ADD COLUMN mono INTEGER;
        CREATE TABLE outbox_boots (
          boot        INTEGER PRIMARY KEY,
          boot_id     TEXT NOT NULL UNIQUE,
          base        INTEGER NOT NULL,
          seen_at     INTEGER NOT NULL,
          seen_wall   INTEGER NOT NULL,
          seen_synced INTEGER NOT NULL CHECK (seen_synced IN (0, 1)),
          synced_at   INTEGER,
          wall_origin INTEGER
        ) STRICT;
      `);
  },
};

/**
 * The loss ledger (ledger.ts): `accepted` was counted in memory only before. A database from before
 * starts its ledger balanced: each channel's `accepted` is set to what its other counters and rows
 * account for, so the ledger proves everything from the upgrade on. (The counter names are ledger.ts's
 * ACCOUNTED_COUNTERS, written out: a migration's SQL stays as shipped.)
 */
export const OUTBOX_LEDGER_MIGRATION: Migration = {
  version: 10,
  name: 'outbox: the loss ledger starts balanced (accepted = what is accounted for)',
  up(db) {
    db.exec(`
        INSERT INTO outbox_counters (channel, counter, value)
          SELECT channel, 'accepted', sum(n) FROM (
            SELECT channel, sum(value) AS n FROM outbox_counters
              WHERE counter IN ('delivered', 'overflow', 'count', 'bytes', 'disk', 'expired', 'parkedLimit', 'purged', 'corrupt', 'coalesced', 'downsampled', 'offline')
              GROUP BY channel
            UNION ALL SELECT channel, count(*) FROM outbox GROUP BY channel
            UNION ALL SELECT channel, count(*) FROM outbox_parked GROUP BY channel
          ) GROUP BY channel HAVING sum(n) > 0;
      `);
  },
};

/**
 * Freshness-first drain (docs/outbox.md, "Freshness-first drain"): each message may name its stream
 * (a telemetry stream; NULL: its channel's single stream), and `outbox_stream_heads` holds the seq
 * of the newest message of each stream of the channels that opt in, written at the end of each
 * enqueue transaction for the streams whose head moved, with a mark (channel '', the highest seq whose
 * head is written: stream-heads.ts). Columns added, not a table rebuilt: instant on any queue size.
 * No row is written here (a salvage copies the damaged file's rows into a freshly migrated one, and a
 * row of the migration's would collide): until the first mark, a start reads at most the newest
 * 100,000 rows for heads. Rows queued before have no stream: each opt-in channel's are one stream.
 */
export const OUTBOX_STREAMS_MIGRATION: Migration = {
  version: 11,
  name: 'outbox: stream of each message, the newest message of each stream',
  up(db) {
    db.exec(`
        ALTER TABLE outbox ADD COLUMN stream TEXT;
        ALTER TABLE outbox_parked ADD COLUMN stream TEXT;
        CREATE TABLE outbox_stream_heads (
          channel TEXT NOT NULL,
          stream  TEXT NOT NULL,
          seq     INTEGER NOT NULL,
          PRIMARY KEY (channel, stream)
        ) STRICT, WITHOUT ROWID;
      `);
  },
};

/** Marks every queued row's stream head as known (what a bench that fills the table behind the outbox's back runs, as it rebuilds the lane totals). */
export const STREAM_HEADS_MARK_SQL = `
  INSERT INTO outbox_stream_heads (channel, stream, seq) SELECT '', '', coalesce(max(seq), 0) FROM outbox
    ON CONFLICT (channel, stream) DO UPDATE SET seq = excluded.seq;
`;
