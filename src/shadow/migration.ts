import type { Migration } from '../store/migrations.js';

/**
 * The local device shadow: one row (id = 1), each part a JSON text column.
 *   cloud_desired     the cloud's last applied desired state (`iot/{uuid}/shadow/desired`)
 *   base              the cloud desired the local overrides were made against: the "base" of the
 *                     3-way merge when a newer cloud desired arrives
 *   desired_version   the version of cloud_desired; null until the cloud has sent one
 *   overrides         local desired edits, a JSON merge patch over cloud_desired (null = none)
 *   reported          what the device reports; reported_version counts its changes
 *   conflicts         the last local overrides the cloud overruled (a JSON array, newest last)
 *   updated_at        epoch ms of the last change; null until the first one
 */
export const SHADOW_MIGRATION: Migration = {
  version: 6,
  name: 'device shadow',
  up(db) {
    db.exec(`
      CREATE TABLE shadow (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        cloud_desired    TEXT NOT NULL,
        base             TEXT NOT NULL,
        desired_version  INTEGER CHECK (desired_version >= 0),
        overrides        TEXT,
        reported         TEXT NOT NULL,
        reported_version INTEGER NOT NULL CHECK (reported_version >= 0),
        conflicts        TEXT NOT NULL,
        updated_at       INTEGER
      ) STRICT;
    `);
  },
};
