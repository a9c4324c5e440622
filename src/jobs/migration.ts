import type { Migration } from '../store/migrations.js';

/**
 * Cloud jobs the agent took (`GET jobs/next`), kept from the moment they are received, before they
 * run: after a crash or a power cut the agent knows which job was running and reports it failed
 * instead of leaving the cloud waiting for an answer that will never come.
 */
export const JOBS_MIGRATION: Migration = {
  version: 5,
  name: 'cloud jobs',
  up(db) {
    db.exec(`
      CREATE TABLE jobs (
        id              TEXT PRIMARY KEY,
        type            TEXT NOT NULL,
        params          TEXT NOT NULL,
        timeout_seconds INTEGER NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT')),
        details         TEXT,
        received_at     INTEGER NOT NULL,
        finished_at     INTEGER,
        -- The process group a run-command job started, and its start time (/proc/<pid>/stat field 22),
        -- so that the next start can stop it if the agent died first, and never a recycled pid.
        pid             INTEGER,
        pid_start       INTEGER
      ) STRICT;
      CREATE INDEX jobs_by_received ON jobs (received_at);
    `);
  },
};
