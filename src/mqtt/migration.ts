import type { Migration } from '../store/migrations.js';

/**
 * The MQTT session's in-flight packets (mqtt.js `outgoingStore` / `incomingStore`), so a QoS 1
 * PUBLISH written to the broker but not yet acknowledged survives a kill -9 and is sent again after
 * the restart. `seq` keeps the order packets were stored in, which is the order they are re-sent in.
 * `fields` is the JSON of every other packet field (MQTT 5 properties; Buffers as base64). `app_id`
 * is the caller's message id (the outbox id) when the session knows it, so that after a restart a
 * re-publish of the same id joins the stored packet instead of sending a second copy.
 */
export const MQTT_MIGRATION: Migration = {
  version: 3,
  // Stryker disable next-line StringLiteral: the name is for people reading the code; migrate() goes by version and nothing reads it
  name: 'mqtt in-flight packets',
  up(db) {
    db.exec(`
      CREATE TABLE mqtt_inflight (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        store      TEXT NOT NULL CHECK (store IN ('outgoing', 'incoming')),
        message_id INTEGER NOT NULL CHECK (message_id BETWEEN 1 AND 65535),
        cmd        TEXT NOT NULL,
        topic      TEXT,
        payload    BLOB,
        qos        INTEGER NOT NULL DEFAULT 0,
        retain     INTEGER NOT NULL DEFAULT 0,
        dup        INTEGER NOT NULL DEFAULT 0,
        fields     TEXT,
        app_id     TEXT,
        stored_at  INTEGER NOT NULL
      ) STRICT;
      CREATE UNIQUE INDEX mqtt_inflight_by_message ON mqtt_inflight (store, message_id);
    `);
  },
};
