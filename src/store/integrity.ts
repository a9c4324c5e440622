import type { Database } from 'better-sqlite3';
import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { setPriority } from 'node:os';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

/**
 * Checking the database at start without making the start grow with the backlog. `quick_check` reads
 * every page (seconds for a large queue, 7.6 s for 2M messages with a cold page cache here), so a start
 * only runs `fastCheck`: the header and the schema, and the first and last row of each table (the
 * pages a start touches next). The full check then runs in a child process on its own read-only
 * connection once the agent is up (`BackgroundIntegrityCheck`). A child, not a worker thread: it can
 * be killed at once when the agent stops, where a thread stuck in a long native call delays the exit.
 */

/** Throws SQLITE_CORRUPT / SQLITE_NOTADB when the file is not a usable database. */
export function fastCheck(db: Database): void {
  const tables = db.prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string; sql: string }[];
  for (const { name, sql } of tables) {
    const q = `"${name.replaceAll('"', '""')}"`;
    if (/WITHOUT\s+ROWID/i.test(sql.slice(sql.lastIndexOf(')')))) {
      db.prepare(`SELECT * FROM ${q} LIMIT 1`).all();
      continue;
    }
    db.prepare(`SELECT * FROM ${q} ORDER BY rowid LIMIT 1`).all();
    db.prepare(`SELECT * FROM ${q} ORDER BY rowid DESC LIMIT 1`).all();
  }
}

/** Errors from SQLite that mean the file is damaged (not a full disk, a lock or a permission problem). */
export function isCorruptionError(err: unknown): boolean {
  // Stryker disable next-line StringLiteral: any other stand-in for a missing code is no corruption code either
  const code = String((err as { code?: unknown } | null)?.code ?? '');
  return code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB';
}

export type IntegrityState = 'skipped' | 'pending' | 'running' | 'ok' | 'failed' | 'error';

export interface IntegrityStatus {
  /** skipped: trusted after a clean close (or a fresh file); pending: deferred, not started yet; error: the check itself could not run (not a verdict). */
  state: IntegrityState;
  startedAt: number | null;
  finishedAt: number | null;
  ms: number | null;
  /** quick_check's findings (failed) or why it could not run (error). */
  detail: string | null;
}

/** The check itself, on a thread of the child, so the child's main thread stays free to watch its parent. */
const CHECK_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
let out;
try {
  const db = new Database(workerData.db, { readonly: true, fileMustExist: true });
  db.pragma('busy_timeout = 5000');
  const rows = db.pragma('quick_check(20)').map((r) => r.quick_check);
  out = { ok: rows.length === 1 && rows[0] === 'ok', detail: rows.join('; '), mismatches: [] };
  if (out.ok) {
    for (const c of workerData.checks) {
      const row = db.prepare(c.sql).get();
      if (row !== undefined) out.mismatches.push({ name: c.name, row });
    }
  }
  db.close();
} catch (err) {
  const code = String(err && err.code || '');
  out = { ok: false, corrupt: code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB', detail: String(err && err.message || err) };
}
parentPort.postMessage(out);
`;

/**
 * The child: runs the check and prints the verdict as JSON. An agent killed with SIGKILL cannot stop
 * it, so it watches its parent and kills itself when orphaned rather than read the whole file for nobody.
 */
const CHILD_SOURCE = `
const { Worker } = require('node:worker_threads');
const parent = process.ppid;
const done = (out) => process.stdout.write(JSON.stringify(out), () => process.exit(0));
const w = new Worker(${JSON.stringify(CHECK_SOURCE)}, { eval: true, workerData: { db: process.env.IOTISTIC_DB, sqlite: process.env.IOTISTIC_SQLITE, checks: JSON.parse(process.env.IOTISTIC_CHECKS || '[]') } });
w.on('message', done);
w.on('error', (err) => done({ ok: false, corrupt: false, detail: String(err && err.message || err) }));
setInterval(() => { if (process.ppid !== parent) process.kill(process.pid, 'SIGKILL'); }, 250);
`;

/**
 * A query over data a part derives from its own rows and keeps beside them (the outbox's per-lane
 * totals), run after a passing `quick_check` on the same read-only connection: it returns a row when
 * the derived data and the rows disagree, none when they agree.
 */
export interface ConsistencyQuery {
  name: string;
  sql: string;
}

export interface Mismatch {
  name: string;
  /** The first row the query returned (what disagreed). */
  row: unknown;
}

export interface BackgroundCheckOptions {
  path: string;
  logger: Logger;
  clock: { now(): number };
  /** Called once when the check finds damage. */
  onCorrupt(detail: string): void;
  /** Run when the file passes; each that returns a row is reported to `onMismatch`. */
  queries?: readonly ConsistencyQuery[];
  onMismatch?(found: Mismatch[]): void;
}

/** Runs `quick_check` in a child process at low CPU priority; `stop` kills it. */
export class BackgroundIntegrityCheck {
  private child: ChildProcess | undefined;
  private readonly status: IntegrityStatus = { state: 'running', startedAt: null, finishedAt: null, ms: null, detail: null };
  readonly done: Promise<IntegrityStatus>;

  constructor(private readonly opts: BackgroundCheckOptions) {
    this.status.startedAt = opts.clock.now();
    this.done = new Promise((resolve) => this.run(resolve));
  }

  get current(): IntegrityStatus {
    return { ...this.status };
  }

  stop(): void {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }

  private run(resolve: (s: IntegrityStatus) => void): void {
    const { path, logger, clock } = this.opts;
    let stdout = '';
    const finish = (state: IntegrityState, detail: string | null): void => {
      if (this.status.state !== 'running') return;
      Object.assign(this.status, { state, detail, finishedAt: clock.now(), ms: clock.now() - (this.status.startedAt ?? clock.now()) });
      if (state === 'ok') logger.info({ file: path, ms: Math.round(this.status.ms ?? 0) }, 'database integrity check passed');
      else if (state === 'error') logger.warn({ file: path, err: detail }, `the database integrity check could not run: ${detail}`);
      else {
        logger.error({ file: path, detail }, `database ${path} failed its integrity check (${detail}); it will be quarantined and salvaged at the next start`);
        this.opts.onCorrupt(detail ?? 'integrity check failed');
      }
      resolve(this.current);
    };
    try {
      const child = spawn(process.execPath, ['-e', CHILD_SOURCE], {
        env: {
          IOTISTIC_DB: path,
          IOTISTIC_SQLITE: createRequire(import.meta.url).resolve('better-sqlite3'),
          IOTISTIC_CHECKS: JSON.stringify(this.opts.queries ?? []),
        },
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      this.child = child;
      child.unref();
      (child.stdout as unknown as { unref?: () => void }).unref?.();
      try {
        if (child.pid !== undefined) setPriority(child.pid, 10);
      } catch {
        // Only nicer; not needed.
      }
      child.stdout!.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
      child.on('error', (err) => finish('error', errorMessage(err)));
      child.on('close', (code, signal) => {
        let r: { ok?: boolean; corrupt?: boolean; detail?: string; mismatches?: Mismatch[] } | undefined;
        try {
          r = JSON.parse(stdout) as typeof r;
        } catch {
          r = undefined;
        }
        if (!r) finish('error', signal ? `the check was stopped (${signal})` : `the check exited with ${String(code)} without a verdict`);
        else if (r.ok) {
          finish('ok', null);
          if (r.mismatches?.length) this.opts.onMismatch?.(r.mismatches);
        }
        else if (r.corrupt === false) finish('error', r.detail ?? null);
        else finish('failed', r.detail ?? 'integrity check failed');
      });
    } catch (err) {
      finish('error', errorMessage(err));
    }
  }
}
