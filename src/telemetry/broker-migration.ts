import type { Migration } from '../store/migrations.js';

/**
 * The local broker's state (`features.localBroker`, kept by broker-persistence.ts), so that what
 * local apps rely on outlives an agent restart: retained messages, the subscriptions of persistent
 * sessions (clean session false), the QoS 1/2 messages queued for them and those in flight to them
 * (`broker_outgoing`, in `seq` order: the order they are sent in), the QoS 2 messages received and not
 * yet released (`broker_incoming`), and the wills of connected clients.
 * `message_id` is null for a message queued and not yet sent to its client.
 * `broker_subscriptions` is WITHOUT ROWID: its rows (text, text, integer) have the shape of `kv`'s,
 * and a salvage that must find tables by the shape of their pages (a damaged schema) could not tell
 * a page of one from a page of the other; a WITHOUT ROWID table's pages are of another kind.
 */
export const BROKER_MIGRATION: Migration = {
  version: 8,
  // Stryker disable next-line StringLiteral: the name is for people reading the code; migrate() goes by version and nothing reads it
  name: 'local broker persistence',
  up(db) {
    db.exec(`
      CREATE TABLE broker_retained (
        topic      TEXT PRIMARY KEY,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        stored_at  INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE broker_subscriptions (
        client_id  TEXT NOT NULL,
        topic      TEXT NOT NULL,
        qos        INTEGER NOT NULL,
        PRIMARY KEY (client_id, topic)
      ) STRICT, WITHOUT ROWID;
      CREATE TABLE broker_outgoing (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        client_id      TEXT NOT NULL,
        cmd            TEXT NOT NULL,
        broker_id      TEXT,
        broker_counter INTEGER,
        message_id     INTEGER,
        topic          TEXT,
        payload        BLOB,
        qos            INTEGER NOT NULL DEFAULT 0,
        retain         INTEGER NOT NULL DEFAULT 0,
        stored_at      INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX broker_outgoing_by_client ON broker_outgoing (client_id, seq);
      CREATE TABLE broker_incoming (
        client_id  TEXT NOT NULL,
        message_id INTEGER NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL,
        PRIMARY KEY (client_id, message_id)
      ) STRICT;
      CREATE TABLE broker_wills (
        client_id  TEXT PRIMARY KEY,
        broker_id  TEXT NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL,
        retain     INTEGER NOT NULL
      ) STRICT;
    `);
  },
};
