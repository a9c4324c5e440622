/** The devcloud's tables: the schema a new file gets, and the upgrades of older files. */

export const SCHEMA_VERSION = 4;

/** Changes after the first schema, by the version they bring the file to. */
export const UPGRADES: Record<number, string> = {
  // The device shadow's desired state, for devices that read it over HTTP.
  2: `ALTER TABLE devices ADD COLUMN shadow_desired TEXT;
      ALTER TABLE devices ADD COLUMN shadow_version INTEGER NOT NULL DEFAULT 0;`,
  // A health report's Idempotency-Key (its outbox id): a retry is stored once, and the loss ledger check counts it.
  3: `ALTER TABLE health ADD COLUMN idem_key TEXT;
      CREATE UNIQUE INDEX health_by_key ON health (device, idem_key) WHERE idem_key IS NOT NULL;`,
  // Whether a message arrived marked backfill (a freshness-first drain's history, docs/protocol.md).
  4: `ALTER TABLE messages ADD COLUMN backfill INTEGER NOT NULL DEFAULT 0;`,
};

export const SCHEMA = `
  CREATE TABLE devices (
    uuid          TEXT PRIMARY KEY,
    key_hash      TEXT,
    created_at    INTEGER NOT NULL,
    target        TEXT,
    target_rev    INTEGER NOT NULL DEFAULT 0,
    target_etag   TEXT,
    target_set_at INTEGER
  ) STRICT;
  CREATE TABLE reports (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    report_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (device, report_id)
  ) STRICT;
  CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    id          TEXT NOT NULL,
    channel     TEXT NOT NULL,
    ts          REAL NOT NULL,
    payload     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (device, id)
  ) STRICT;
  CREATE INDEX messages_by_device ON messages (device, seq);
  CREATE TABLE health (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX health_by_device ON health (device, seq);
  CREATE TABLE jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    device          TEXT NOT NULL,
    type            TEXT NOT NULL,
    params          TEXT NOT NULL,
    timeout_seconds INTEGER NOT NULL,
    status          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX jobs_queue ON jobs (device, status, seq);
  CREATE TABLE job_updates (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    update_id   TEXT NOT NULL,
    status      TEXT NOT NULL,
    details     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (job_id, update_id)
  ) STRICT;
  CREATE TABLE counters (
    device TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (device, name)
  ) STRICT, WITHOUT ROWID;
`;
