import * as nodeFs from 'node:fs';

/** The calls a sync makes; node:fs by default (they run on libuv's thread pool). Tests inject failures. */
export interface WalSyncFs {
  open(path: string, flags: string, cb: (err: NodeJS.ErrnoException | null, fd: number) => void): void;
  fdatasync(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  close(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
}

export type SyncDone = (err?: Error) => void;

/**
 * Makes commits durable without blocking the event loop. A transaction committed with
 * `synchronous = NORMAL` in WAL mode is in the WAL file (in the OS's page cache) when it returns:
 * safe from a kill -9, not yet from a power cut. `after(done)` calls `done` once an fdatasync of
 * the WAL, started after that call, has returned: everything committed before it is then on disk,
 * as `synchronous = FULL` would have made it, but the fsync ran on the thread pool while the loop
 * went on reading (and committing) what came next.
 *
 * One sync is in flight at a time. Callers that arrive meanwhile wait for the next one, which
 * starts when the current one ends and covers every commit made until then: under load, one fsync
 * serves many commits (group commit in time, as databases do with their log).
 *
 * The WAL is opened once, at the first sync, and kept open: SQLite truncates it in place and
 * removes it only when the last connection closes, after folding it into the database. If it does
 * not exist then, the database file is synced instead.
 */
export class WalSync {
  private readonly walPath: string;
  private readonly dbPath: string;
  private readonly fs: WalSyncFs;
  private readonly onIdle: (() => void) | undefined;
  /** Waiting for the sync after the one in flight. */
  private next: SyncDone[] = [];
  private running = false;
  private fd: number | undefined;
  private closed = false;
  private syncs = 0;

  /**
   * `onIdle`: called when a sync ends, before the next one starts: a writer that held its commit
   * while the sync ran (nothing gained by committing earlier) commits now, and the next sync covers
   * it. `fs`: node:fs by default.
   */
  constructor(dbPath: string, opts: { onIdle?: () => void; fs?: WalSyncFs } = {}) {
    this.dbPath = dbPath;
    this.walPath = `${dbPath}-wal`;
    this.fs = opts.fs ?? nodeFs;
    this.onIdle = opts.onIdle;
  }

  /** Calls `done` once every commit made before this call is on disk, or with the error that kept it from being so. */
  after(done: SyncDone): void {
    this.next.push(done);
    if (!this.running) this.start();
  }

  /** fdatasyncs completed or failed so far. */
  get count(): number {
    return this.syncs;
  }

  /** A sync is under way. */
  get busy(): boolean {
    return this.running;
  }

  /** Closes the file once the syncs asked for so far are done (callers still get their answer). */
  close(): void {
    this.closed = true;
    if (!this.running) this.release();
  }

  private start(): void {
    const waiting = this.next;
    this.next = [];
    this.running = true;
    if (this.fd !== undefined) return this.syncFd(this.fd, this.walPath, waiting);
    this.fs.open(this.walPath, 'r', (err, fd) => {
      if (!err) {
        this.fd = fd;
        return this.syncFd(fd, this.walPath, waiting);
      }
      if (err.code !== 'ENOENT') return this.finish(waiting, err);
      // Not kept: the WAL may appear later, and that file is the one to sync then.
      this.fs.open(this.dbPath, 'r', (e, dbFd) => (e ? this.finish(waiting, e) : this.syncFd(dbFd, this.dbPath, waiting)));
    });
  }

  private syncFd(fd: number, path: string, waiting: SyncDone[]): void {
    this.fs.fdatasync(fd, (err) => {
      if (err) err.path ??= path;
      // A file not kept (the database's, when there was no WAL: `fd` is not `this.fd`, which is
      // unset) is closed; so is the WAL after a failure (the next sync opens it afresh).
      if (fd !== this.fd || err) {
        this.fd = undefined;
        this.fs.close(fd, () => {});
      }
      this.finish(waiting, err);
    });
  }

  private finish(waiting: SyncDone[], err: NodeJS.ErrnoException | null): void {
    this.syncs++;
    this.running = false;
    const e = err ? new Error(`fdatasync of ${err.path ?? this.walPath} failed: ${err.message}`, { cause: err }) : undefined;
    // A held commit goes in now (its `after` may start the next sync itself). Those who came during
    // this sync need one of their own: it starts before the settling, so their wait does not also
    // include whatever the settled callbacks go on to do.
    this.onIdle?.();
    if (!this.running && this.next.length > 0) this.start();
    for (const done of waiting) done(e);
    if (this.closed && !this.running) this.release();
  }

  private release(): void {
    const fd = this.fd;
    this.fd = undefined;
    if (fd !== undefined) this.fs.close(fd, () => {});
  }
}
