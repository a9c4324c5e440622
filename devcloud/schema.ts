/** The devcloud's tables: the schema a new file gets, and the upgrades of older files. */

export const SCHEMA_VERSION = 7;

/**
 * Device logs (docs/protocol.md, "Logs"): one row per log message (an outbox message of channel `logs`,
 * unique per device by id) and one per line of a message stored, in arrival order (`arrival`).
 * Lines are not deduplicated by `seq`: a device that sends one seq under two message ids shows it twice.
 */
const LOG_TABLES = `
  CREATE TABLE log_messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    id          TEXT NOT NULL,
    service     TEXT NOT NULL,
    ts          REAL NOT NULL,
    backfill    INTEGER NOT NULL DEFAULT 0,
    received_at INTEGER NOT NULL,
    UNIQUE (device, id)
  ) STRICT;
  CREATE TABLE log_lines (
    arrival    INTEGER PRIMARY KEY AUTOINCREMENT,
    device     TEXT NOT NULL,
    service    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts         REAL NOT NULL,
    stream     TEXT NOT NULL,
    line       TEXT NOT NULL,
    dropped    INTEGER,
    reason     TEXT,
    message_id TEXT NOT NULL
  ) STRICT;
  CREATE INDEX log_lines_by_seq ON log_lines (device, service, seq);
  CREATE INDEX log_lines_by_ts ON log_lines (device, ts);
`;

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
  // Device logs: their messages (deduplicated by id) and lines.
  5: LOG_TABLES,
  // Registration (provisioning.ts): fleet provisioning keys (hashed), and per device the key that
  // registered it and when its device key was revoked (a revoked key is answered 401).
  6: `CREATE TABLE provisioning_keys (
        id          TEXT PRIMARY KEY,
        key_hash    TEXT NOT NULL UNIQUE,
        fleet       TEXT NOT NULL,
        expires_at  INTEGER,
        max_devices INTEGER,
        devices     INTEGER NOT NULL DEFAULT 0,
        revoked     INTEGER NOT NULL DEFAULT 0,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL
      ) STRICT;
      ALTER TABLE devices ADD COLUMN provisioning_key TEXT;
      ALTER TABLE devices ADD COLUMN key_revoked_at INTEGER;`,
  // Device secrets (docs/protocol.md, "Secrets"): values per device, and the version the target carries.
  7: `CREATE TABLE device_secrets (
        device     TEXT NOT NULL,
        name       TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (device, name)
      ) STRICT, WITHOUT ROWID;
      ALTER TABLE devices ADD COLUMN secrets_version INTEGER NOT NULL DEFAULT 0;`,
};

/**
 * The first version of the schema. A new file gets it and then every entry of UPGRADES in order
 * (DevCloudStore.open), so a table an upgrade creates is not repeated here.
 */
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
