import type { Database } from 'better-sqlite3';
import { existsSync, rmSync } from 'node:fs';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { WalCheckpointer, type CheckpointerStats } from './checkpointer.js';
import { markClosedCleanly, openDatabase } from './database.js';
import { BackgroundIntegrityCheck, type ConsistencyQuery, type IntegrityStatus, type Mismatch } from './integrity.js';
import type { Migration } from './migrations.js';
import { readTargetMirror, writeTargetMirror } from './target-mirror.js';
import { QUARANTINE_KV_KEY, readPendingSalvage, writePendingSalvage, type QuarantineReport, type SalvageHook } from './quarantine.js';

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

/** `GET /v2/state`'s `database`: the last quarantine, the integrity check of this run, a salvage due. */
export interface DatabaseHealth {
  quarantine: QuarantineReport | null;
  /** The quarantine happened at this start (not an earlier one). */
  quarantinedThisStart: boolean;
  integrity: IntegrityStatus;
  /** Set when damage was found while running: the next start quarantines and salvages. */
  salvagePending: string | null;
}

/**
 * The agent's SQLite database and the small typed accessors the core needs. Larger parts (the
 * outbox, MQTT's in-flight store) take `db` and own their own tables and statements.
 */
export class Store {
  /** Set when this start found the database corrupt: where it went and what was salvaged. */
  readonly quarantine: QuarantineReport | undefined;
  /** The file needed an integrity check (false: trusted after a clean close, see `markClosedCleanly`). */
  readonly integrityChecked: boolean;
  private closed = false;
  private readonly checkpointer: WalCheckpointer | undefined;
  private background: BackgroundIntegrityCheck | undefined;
  /** The full check was deferred at open and is still owed. */
  // Stryker disable next-line BooleanLiteral: Store.open sets both before the store is handed out.
  private checkOwed = false;
  // Stryker disable next-line BooleanLiteral: as above.
  private exclusive = false;
  private targetMirror: string | undefined;
  private logger: Logger | undefined;
  private integrityFailed: ((status: IntegrityStatus) => void) | undefined;
  private readonly consistency: { query: ConsistencyQuery; repair: (row: unknown) => boolean }[] = [];
  /** Something kept in the file is known to disagree with its rows: the next start must not trust it. */
  private distrusted = false;

  private constructor(
    readonly db: Database,
    readonly path: string,
    private readonly clock: Pick<Clock, 'now'>,
    quarantine: QuarantineReport | undefined,
    checkpointer: WalCheckpointer | undefined,
    integrityChecked: boolean,
  ) {
    this.quarantine = quarantine;
    this.integrityChecked = integrityChecked;
    this.checkpointer = checkpointer;
  }

  get quarantinedTo(): string | undefined {
    return this.quarantine?.quarantinedTo;
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
    /** See `OpenStoreOptions.migrations`. */
    migrations: readonly Migration[];
    /** See `OpenStoreOptions.exclusive`; checkpoints are then inline (the worker's connection could not share the file). */
    exclusive?: boolean;
    /** `background`: a fast check at open, the full one in a child process after (see integrity.ts). */
    integrityCheck?: 'background' | 'inline';
    /** See `OpenStoreOptions.onSalvaged`. */
    onSalvaged?: SalvageHook;
    /** Where a copy of the target is kept outside the database (target-mirror.ts); none when unset. */
    targetMirror?: string;
  }): Store {
    const background = opts.integrityCheck === 'background';
    const { db, quarantine, checked } = openDatabase({ ...opts, integrityCheck: background ? 'deferred' : 'inline' });
    const checkpointer = opts.checkpoint === 'background' && !opts.exclusive ? new WalCheckpointer(db, { path: opts.path, logger: opts.logger }) : undefined;
    const store = new Store(db, opts.path, opts.clock, quarantine, checkpointer, checked);
    store.logger = opts.logger;
    store.checkOwed = background && checked && !quarantine;
    // An exclusive open (full disk) admits no second connection: the check stays owed until the next start.
    store.exclusive = opts.exclusive === true;
    if (opts.targetMirror) store.adoptTargetMirror(opts.targetMirror);
    return store;
  }

  /**
   * Starts the full integrity check deferred at open (`integrityCheck: 'background'`), once the agent
   * is up. Damage it finds leaves the salvage marker, so the next start quarantines and salvages.
   */
  startIntegrityCheck(): void {
    if (this.checkOwed && !this.background && !this.exclusive) this.runCheck();
  }

  /**
   * A read failed with SQLITE_CORRUPT in use: checks the whole file in the background (also when the
   * last clean close vouched for it, as silent media decay changes neither size nor mtime).
   */
  suspectCorruption(why: string): void {
    const state = this.background?.current.state;
    if (this.closed || this.exclusive || state === 'running' || state === 'failed') return;
    this.logger?.warn({ file: this.path, why }, `database error in use (${why}): checking the database`);
    this.runCheck();
  }

  /**
   * Data a part keeps beside its rows (the outbox's per-lane totals) may be loaded at open without
   * being checked against them when either the file vouched for itself (closed cleanly, unchanged
   * since: `integrityChecked` false) or the background check will run `query` after it; `repair`
   * is then called with the first disagreeing row, and returns whether the part put it right.
   * Returns false when no background check is owed: the part must check (or rebuild) it itself.
   */
  verifyLater(query: ConsistencyQuery, repair: (row: unknown) => boolean): boolean {
    if (!this.checkOwed || this.exclusive || this.background) return false;
    this.consistency.push({ query, repair });
    return true;
  }

  /** A part could not keep its derived data in step with the rows: the file must not vouch for itself at the next start. */
  distrust(): void {
    this.distrusted = true;
  }

  /** Called when a background check finds damage (the salvage marker is then on disk). */
  onIntegrityFailure(handler: (status: IntegrityStatus) => void): void {
    this.integrityFailed = handler;
  }

  private runCheck(): void {
    const logger = this.logger!;
    const check: BackgroundIntegrityCheck = new BackgroundIntegrityCheck({
      path: this.path,
      logger,
      clock: this.clock,
      onCorrupt: (detail) => {
        try {
          writePendingSalvage(this.path, { reason: `integrity check: ${detail}`, at: new Date(this.clock.now()).toISOString() });
        } catch (err) {
          logger.error({ err: errorMessage(err) }, `could not leave the salvage marker (${errorMessage(err)}): the damage is found again at the next start`);
        }
        if (!this.closed) this.integrityFailed?.(check.current);
      },
      queries: this.consistency.map((c) => c.query),
      onMismatch: (found) => this.repair(found),
    });
    this.background = check;
  }

  private repair(found: Mismatch[]): void {
    if (this.closed) return;
    for (const m of found) {
      const c = this.consistency.find((x) => x.query.name === m.name);
      let ok = false;
      try {
        ok = c?.repair(m.row) ?? false;
      } catch (err) {
        this.logger?.error({ check: m.name, err: errorMessage(err) }, `${m.name}: could not be put right: ${errorMessage(err)}`);
      }
      if (!ok) this.distrust();
    }
  }

  /** Resolves once the background integrity check has a result (at once when none runs). */
  integrityResult(): Promise<IntegrityStatus> {
    return this.background?.done ?? Promise.resolve(this.integrityStatus());
  }

  integrityStatus(): IntegrityStatus {
    if (this.background) return this.background.current;
    const state = this.checkOwed ? 'pending' : this.integrityChecked ? 'ok' : 'skipped';
    return { state, startedAt: null, finishedAt: null, ms: null, detail: this.quarantine ? 'quarantined at this start' : null };
  }

  databaseHealth(): DatabaseHealth {
    let kept: QuarantineReport | null = null;
    try {
      kept = this.quarantine ?? this.getKv<QuarantineReport>(QUARANTINE_KV_KEY) ?? null;
    } catch {
      kept = null;
    }
    return {
      quarantine: kept,
      quarantinedThisStart: this.quarantine !== undefined,
      integrity: this.integrityStatus(),
      salvagePending: readPendingSalvage(this.path)?.reason ?? null,
    };
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

  /**
   * A salvage that lost the target takes it back from the copy; a database with a target and no copy
   * (one made before copies were kept) makes the copy.
   */
  private adoptTargetMirror(path: string): void {
    this.targetMirror = path;
    const held = this.getTarget();
    if (held) {
      if (!existsSync(path)) writeTargetMirror(path, held, this.logger);
      return;
    }
    if (!this.quarantine) return;
    // The damaged file held no target (a device that never had one): nothing was lost.
    const salvaged = this.quarantine.tables['target_state'];
    if (salvaged && salvaged.recovered === 0 && salvaged.lost === 0) return;
    const copy = readTargetMirror(path);
    if (!copy.ok) {
      this.logger?.error({ file: path, why: copy.why }, `the target was lost with the damaged database and cannot be taken back from ${path} (${copy.why}): none is in force until the cloud or the local API gives one`);
      return;
    }
    this.writeTarget(copy.target, copy.target.receivedAt);
    this.logger?.error(
      { file: path, version: copy.target.version, source: copy.target.source },
      `the target was lost with the damaged database; took back version ${copy.target.version ?? '(none)'} (${copy.target.source}) from ${path}`,
    );
  }

  /** Replaces the target in one transaction, so a crash leaves the old one or the new one, never half. */
  setTarget(target: Omit<StoredTarget, 'receivedAt'>): void {
    const receivedAt = Math.round(this.clock.now());
    this.writeTarget(target, receivedAt);
    if (this.targetMirror) writeTargetMirror(this.targetMirror, { ...target, receivedAt }, this.logger);
  }

  /** No target in force (local mode ended): the row and its copy go. */
  clearTarget(): void {
    this.db.prepare('DELETE FROM target_state WHERE id = 1').run();
    if (this.targetMirror) {
      try {
        rmSync(this.targetMirror, { force: true });
      } catch (err) {
        this.logger?.warn({ file: this.targetMirror, err: errorMessage(err) }, `could not delete the copy of the target ${this.targetMirror}: ${errorMessage(err)}`);
      }
    }
  }

  private writeTarget(target: Omit<StoredTarget, 'receivedAt'>, receivedAt: number): void {
    this.db
      .prepare(
        `INSERT INTO target_state (id, etag, version, document, source, received_at) VALUES (1, ?, ?, ?, ?, ?)
         ON CONFLICT(id) DO UPDATE SET etag = excluded.etag, version = excluded.version, document = excluded.document,
           source = excluded.source, received_at = excluded.received_at`,
      )
      .run(target.etag, target.version, JSON.stringify(target.document), target.source, receivedAt);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.background?.stop();
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
    // Only a file that is whole, closed, and not left unchecked after a crash may vouch for itself.
    const unverified = (this.checkOwed || this.background !== undefined) && this.background?.current.state !== 'ok';
    if (folded && !unverified && !this.distrusted) markClosedCleanly(this.path);
  }
}
