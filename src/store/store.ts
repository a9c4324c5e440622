import type { Database } from 'better-sqlite3';
import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import { WalCheckpointer, type CheckpointerStats } from './checkpointer.js';
import { markClosedCleanly, openDatabase } from './database.js';
import type { Migration } from './migrations.js';

export interface StoredTarget {
  etag: string | null;
  version: number | null;
  document: unknown;
  source: 'cloud' | 'local';
  receivedAt: number;
}

export interface OutageRecord {
  id: number;
  channel: string;
  start: number;
  end: number | null;
  durationMs: number | null;
  cause: string;
}

/**
 * The agent's SQLite database and the small typed accessors the core needs. Larger parts (the
 * outbox, MQTT's in-flight store) take `db` and own their own tables and statements.
 */
export class Store {
  readonly quarantinedTo: string | undefined;
  /** The integrity check ran at open (false: trusted after a clean close, see `markClosedCleanly`). */
  readonly integrityChecked: boolean;
  private closed = false;
  private readonly checkpointer: WalCheckpointer | undefined;

  private constructor(
    readonly db: Database,
    readonly path: string,
    private readonly clock: Pick<Clock, 'now'>,
    quarantinedTo: string | undefined,
    checkpointer: WalCheckpointer | undefined,
    integrityChecked: boolean,
  ) {
    this.quarantinedTo = quarantinedTo;
    this.integrityChecked = integrityChecked;
    this.checkpointer = checkpointer;
  }

  /**
   * `checkpoint`: `background` moves WAL checkpoints to a worker thread (see `WalCheckpointer`),
   * as the agent does (`store.checkpoint`); `inline` (the default here) leaves them to SQLite, in
   * the COMMIT that crosses 1000 WAL pages.
   */
  static open(opts: {
    path: string;
    logger: Logger;
    clock: Pick<Clock, 'now'>;
    synchronous?: 'full' | 'normal';
    checkpoint?: 'background' | 'inline';
    migrations?: readonly Migration[];
    /** See `OpenStoreOptions.exclusive`; checkpoints are then inline (the worker's connection could not share the file). */
    exclusive?: boolean;
  }): Store {
    const { db, quarantinedTo, checked } = openDatabase(opts);
    const checkpointer = opts.checkpoint === 'background' && !opts.exclusive ? new WalCheckpointer(db, { path: opts.path, logger: opts.logger }) : undefined;
    return new Store(db, opts.path, opts.clock, quarantinedTo, checkpointer, checked);
  }

  /** WAL pages a checkpoint is due at: what the WAL grows to in normal operation. */
  get walCheckpointPages(): number {
    return this.checkpointer?.thresholdPages ?? Math.max(1, this.db.pragma('wal_autocheckpoint', { simple: true }) as number);
  }

  /** The background checkpointer's counters; undefined when checkpoints are inline. */
  checkpointStats(): CheckpointerStats | undefined {
    return this.checkpointer?.stats();
  }

  getKv<T>(key: string): T | undefined {
    const row = this.db.prepare('SELECT value FROM kv WHERE key = ?').get(key) as { value: string } | undefined;
    return row ? (JSON.parse(row.value) as T) : undefined;
  }

  setKv(key: string, value: unknown): void {
    this.db
      .prepare('INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at')
      .run(key, JSON.stringify(value), Math.round(this.clock.now()));
  }

  getTarget(): StoredTarget | undefined {
    const row = this.db.prepare('SELECT etag, version, document, source, received_at FROM target_state WHERE id = 1').get() as
      | { etag: string | null; version: number | null; document: string; source: 'cloud' | 'local'; received_at: number }
      | undefined;
    if (!row) return undefined;
    return { etag: row.etag, version: row.version, document: JSON.parse(row.document) as unknown, source: row.source, receivedAt: row.received_at };
  }

  /** Replaces the target in one transaction, so a crash leaves the old one or the new one, never half. */
  setTarget(target: Omit<StoredTarget, 'receivedAt'>): void {
    this.db
      .prepare(
        `INSERT INTO target_state (id, etag, version, document, source, received_at) VALUES (1, ?, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET etag = excluded.etag, version = excluded.version, document = excluded.document,
           source = excluded.source, received_at = excluded.received_at`,
      )
      .run(target.etag, target.version, JSON.stringify(target.document), target.source, Math.round(this.clock.now()));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.checkpointer?.close();
    // Fold the WAL back into the main file so a copied or backed-up database is whole.
    let folded = false;
    try {
      const [r] = this.db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
      folded = r?.busy === 0;
    } catch {
      // A full disk cannot take the fold: the WAL stays, whole, and the next open replays it.
    } finally {
      this.db.close();
    }
    // Only a file that is whole and closed may vouch for itself at the next open.
    if (folded) markClosedCleanly(this.path);
  }
}
