import type { Database, Statement } from 'better-sqlite3';

/**
 * Every statement the outbox runs, prepared once per connection. Schema: migrations 2, 7, 9 and 11 (docs/outbox.md).
 * Rows are read through the `outbox_lane` index (channel, priority, seq, bytes), so a lane's rows
 * come in delivery order and its totals come from the index alone.
 *
 * Every bound LIMIT is written `LIMIT ?+0`. SQLite (3.53 here) reads the value bound to a bare
 * `LIMIT ?` while planning, which marks the statement to be re-prepared whenever that parameter is
 * bound again: each run of a `LIMIT ?` statement recompiled it (a 4-row laneKeys read cost 9 µs of
 * CPU instead of 3.5, and the full-queue enqueue runs one per dropped message). `?+0` is the same
 * number to SQLite but not a bare parameter, so the statement stays prepared.
 */
export function prepareOutboxStatements(db: Database) {
  const p = (sql: string): Statement => db.prepare(sql);
  return {
    insert: p(
      'INSERT INTO outbox (id, channel, priority, created_at, expires_at, coalesce_key, encoding, bytes, payload, boot, mono, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    ),
    idExists: p('SELECT 1 FROM outbox WHERE id = ?'),
    coalesceFind: p('SELECT seq, priority, bytes FROM outbox WHERE channel = ? AND coalesce_key = ?'),
    clearKey: p('UPDATE outbox SET coalesce_key = NULL WHERE seq = ?'),
    deleteSeq: p('DELETE FROM outbox WHERE seq = ?'),
    deleteById: p('DELETE FROM outbox WHERE id = ? RETURNING seq, channel, priority, bytes'),
    // One statement for a whole acked batch: a statement per row costs twice as much CPU. By id,
    // not by the leased seq: an ack can then only ever delete the messages it names.
    deleteIds: p('DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))'),
    findById: p('SELECT seq, channel, priority, bytes FROM outbox WHERE id = ?'),
    laneKeys: p('SELECT seq, bytes FROM outbox WHERE channel = ? AND priority = ? AND seq > ? ORDER BY seq LIMIT ?+0'),
    laneRows: p(
      'SELECT seq, id, channel, priority, created_at, expires_at, coalesce_key, encoding, bytes, payload, boot, mono FROM outbox WHERE channel = ? AND priority = ? AND seq > ? ORDER BY seq LIMIT ?+0',
    ),
    // A lane's rows in (after, upTo]: a freshness-first drain reads what came after the return apart from the history.
    peekRows: p(
      'SELECT seq, id, created_at, expires_at, coalesce_key, encoding, bytes, payload, boot, mono FROM outbox WHERE channel = ? AND priority = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?+0',
    ).raw(),
    // Freshness-first drain: a stream's newest row by its seq (the columns of peekRows, then where it belongs).
    headRow: p('SELECT seq, id, created_at, expires_at, coalesce_key, encoding, bytes, payload, boot, mono, channel, priority, stream FROM outbox WHERE seq = ?').raw(),
    headProbe: p('SELECT channel, priority, stream FROM outbox WHERE seq = ?'),
    maxSeq: p('SELECT max(seq) AS s FROM outbox'),
    headsLoad: p('SELECT channel, stream, seq FROM outbox_stream_heads'),
    // The rows queued since the heads were last written (above their mark), newest first: a start reads them to bring the
    // heads up to date. Bounded: a crash loses at most 250 ms of enqueues; far more is rows written behind the outbox's back.
    headsTail: p('SELECT seq, channel, stream FROM outbox WHERE seq > ? ORDER BY seq DESC LIMIT 100000'),
    headSet: p('INSERT INTO outbox_stream_heads (channel, stream, seq) VALUES (?, ?, ?) ON CONFLICT (channel, stream) DO UPDATE SET seq = excluded.seq'),
    headDelete: p('DELETE FROM outbox_stream_heads WHERE channel = ? AND stream = ?'),
    // On the queue clock (rows from before migration 9: their created_at, which the queue clock started at).
    laneOldest: p('SELECT coalesce(mono, created_at) AS at FROM outbox WHERE channel = ? AND priority = ? ORDER BY seq LIMIT 1'),
    expiredRows: p('SELECT seq, id, channel, priority, bytes FROM outbox WHERE expires_at <= ? ORDER BY expires_at LIMIT ?+0'),
    minExpiry: p('SELECT min(expires_at) AS t FROM outbox WHERE expires_at IS NOT NULL'),
    updatePayload: p('UPDATE outbox SET id = ?, encoding = ?, bytes = ?, payload = ? WHERE seq = ?'),
    loadLanes: p('SELECT channel, priority, count(*) AS n, total(bytes) AS b FROM outbox GROUP BY channel, priority'),
    loadLaneTotals: p('SELECT channel, priority, count AS n, bytes AS b FROM outbox_lane_totals WHERE count > 0'),
    laneTotalSet: p(
      'INSERT INTO outbox_lane_totals (channel, priority, count, bytes) VALUES (?, ?, ?, ?) ON CONFLICT (channel, priority) DO UPDATE SET count = excluded.count, bytes = excluded.bytes',
    ),
    laneTotalDelete: p('DELETE FROM outbox_lane_totals WHERE channel = ? AND priority = ?'),
    laneTotalsClear: p('DELETE FROM outbox_lane_totals'),
    loadCounters: p('SELECT channel, counter, value FROM outbox_counters'),
    loadParked: p('SELECT channel, count(*) AS n FROM outbox_parked GROUP BY channel'),
    counterSet: p('INSERT INTO outbox_counters (channel, counter, value) VALUES (?, ?, ?) ON CONFLICT (channel, counter) DO UPDATE SET value = excluded.value'),
    parkInsert: p(
      `INSERT OR REPLACE INTO outbox_parked (id, channel, priority, created_at, expires_at, encoding, bytes, parked_at, reason, payload, boot, mono, stream)
       SELECT id, channel, priority, created_at, expires_at, encoding, bytes, ?, ?, payload, boot, mono, stream FROM outbox WHERE seq = ?`,
    ),
    parkedOldest: p('SELECT parked_seq, channel FROM outbox_parked ORDER BY parked_seq LIMIT ?+0'),
    parkedDelete: p('DELETE FROM outbox_parked WHERE parked_seq = ?'),
    parkedIds: p('SELECT id FROM outbox_parked ORDER BY parked_seq'),
    parkedGet: p('SELECT parked_seq, id, channel, priority, created_at, expires_at, encoding, bytes, parked_at, reason, boot, mono FROM outbox_parked WHERE id = ?'),
    parkedList: p(
      'SELECT parked_seq, id, channel, priority, created_at, expires_at, encoding, bytes, parked_at, reason, payload, boot, mono FROM outbox_parked ORDER BY parked_seq LIMIT ?+0',
    ),
    parkedListChannel: p(
      'SELECT parked_seq, id, channel, priority, created_at, expires_at, encoding, bytes, parked_at, reason, payload, boot, mono FROM outbox_parked WHERE channel = ? ORDER BY parked_seq LIMIT ?+0',
    ),
    unparkInsert: p(
      `INSERT OR IGNORE INTO outbox (id, channel, priority, created_at, expires_at, coalesce_key, encoding, bytes, payload, boot, mono, stream)
       SELECT id, channel, priority, created_at, expires_at, NULL, encoding, bytes, payload, boot, mono, stream FROM outbox_parked WHERE id = ?`,
    ),
    // The queue clock's boots (queue-clock.ts).
    bootById: p('SELECT boot, boot_id, base, seen_at, seen_wall, seen_synced, synced_at, wall_origin FROM outbox_boots WHERE boot_id = ?'),
    bootLast: p('SELECT boot, boot_id, base, seen_at, seen_wall, seen_synced, synced_at, wall_origin FROM outbox_boots ORDER BY boot DESC LIMIT 1'),
    bootInsert: p('INSERT INTO outbox_boots (boot_id, base, seen_at, seen_wall, seen_synced) VALUES (?, ?, ?, ?, ?)'),
    bootSeen: p('UPDATE outbox_boots SET seen_at = ?, seen_wall = ?, seen_synced = ? WHERE boot = ?'),
    bootSynced: p('UPDATE outbox_boots SET synced_at = ?, wall_origin = ? WHERE boot = ?'),
    bootOrigins: p('SELECT boot, synced_at, wall_origin FROM outbox_boots WHERE wall_origin IS NOT NULL'),
    bootsPrune: p('DELETE FROM outbox_boots WHERE boot <= ?'),
  };
}

export type OutboxStatements = ReturnType<typeof prepareOutboxStatements>;

/** Where a queued message is and what it weighs: what lanes, counters and leases account by. */
export interface RowRef {
  seq: number;
  channel: string;
  priority: number;
  bytes: number;
}

/** A full row of `outbox` (`laneRows`). */
export interface Row {
  seq: number;
  id: string;
  channel: string;
  priority: number;
  created_at: number;
  expires_at: number | null;
  coalesce_key: string | null;
  encoding: number;
  bytes: number;
  payload: string | Buffer;
  /** The boot it was queued in (`outbox_boots`) and the queue clock then; NULL for rows queued before migration 9. */
  boot: number | null;
  mono: number | null;
}

/** A row of `peekRows` (raw): seq, id, created_at, expires_at, coalesce_key, encoding, bytes, payload, boot, mono. */
export type LaneRow = [number, string, number, number | null, string | null, number, number, string | Buffer, number | null, number | null];

/** A row of `headRow` (raw): the columns of LaneRow, then channel, priority, stream. */
export type HeadRow = [...LaneRow, string, number, string | null];

/** A row of `outbox_boots` (queue-clock.ts). */
export interface BootRow {
  boot: number;
  boot_id: string;
  base: number;
  seen_at: number;
  seen_wall: number;
  seen_synced: number;
  synced_at: number | null;
  wall_origin: number | null;
}

/** A row of `outbox_parked`. */
export interface ParkedRow extends Omit<Row, 'seq' | 'coalesce_key'> {
  parked_seq: number;
  parked_at: number;
  reason: string;
}
