import BetterSqlite3, { type Database, type Statement } from 'better-sqlite3';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { LogStore, type LogCounts } from './log-store.js';
import { SecretTable } from './secrets.js';
import { ProvisioningStore } from './provisioning.js';
import { SCHEMA, SCHEMA_VERSION, UPGRADES } from './schema.js';

/** The devcloud's SQLite tables and every query it runs. Counters live here too, so they survive a restart. */

export const JOB_STATUSES = ['QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];
/** Statuses a device may report in `PATCH jobs/:jobId`. */
export const UPDATE_STATUSES = ['IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT'] as const;
export type JobUpdateStatus = (typeof UPDATE_STATUSES)[number];
const TERMINAL: ReadonlySet<string> = new Set(['SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT']);

export const DEFAULT_TARGET = '{"version":0,"apps":{}}';

export interface TargetView {
  /** Strong ETag, quoted: `"<revision>-<sha256 prefix>"`. */
  etag: string;
  /** Per-device counter, +1 on every admin `setTarget`; 0 before the first. */
  revision: number;
  /** The document exactly as stored (JSON text). */
  json: string;
}

export interface IncomingMessage {
  id: string;
  channel: string;
  ts: number;
  payload: unknown;
  /** Sent marked backfill: history after its stream's newest (docs/protocol.md). */
  backfill?: true;
}

export interface StoredMessage extends IncomingMessage {
  /** Arrival order; the cursor for `messages(after)`. */
  seq: number;
  receivedAt: number;
}

export interface MessagePage {
  messages: StoredMessage[];
  /** Pass as `after` to read the next page (the last `seq` returned, or the `after` given). */
  nextAfter: number;
  /** Whether more messages follow this page. */
  more: boolean;
}

export interface ReportRecord {
  reportId: string;
  state: unknown;
  receivedAt: number;
}

export interface HealthRecord {
  health: unknown;
  receivedAt: number;
}

export interface JobSpec {
  type: string;
  params: Record<string, unknown>;
  timeoutSeconds: number;
}

export interface JobForDevice extends JobSpec {
  id: string;
}

export interface JobUpdateRecord {
  updateId: string;
  status: JobUpdateStatus;
  details: unknown;
  receivedAt: number;
}

export interface JobView extends JobForDevice {
  uuid: string;
  status: JobStatus;
  createdAt: number;
  updatedAt: number;
  updates: JobUpdateRecord[];
}

export interface ReceivedCounts {
  reports: { received: number; unique: number; duplicates: number; last: ReportRecord | null };
  messages: {
    received: number;
    unique: number;
    duplicates: number;
    rejected: number;
    batches: number;
    byChannel: Record<string, number>;
  };
  /** `config`: where the device's config came from, per its latest health report (null before one says). */
  health: { received: number; last: HealthRecord | null; config: unknown };
  jobUpdates: { received: number; duplicates: number };
  logs: LogCounts;
  /** Every device request that named this uuid, including those a fault answered. */
  requests: { total: number; byRoute: Record<string, number>; byStatus: Record<string, number> };
}

export type AuthResult = 'ok' | 'provisioned' | 'unknown-device' | 'wrong-key' | 'revoked';

export type JobUpdateResult =
  | { found: false }
  | { found: true; duplicate: boolean; status: JobStatus };

function hashKey(apiKey: string): string {
  return createHash('sha256').update(apiKey).digest('hex');
}

function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && timingSafeEqual(x, y);
}

export function etagFor(revision: number, json: string): string {
  return `"${revision}-${createHash('sha256').update(json).digest('hex').slice(0, 16)}"`;
}

function openFile(path: string): Database {
  if (path === ':memory:') return new BetterSqlite3(':memory:');
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  // Create the file ourselves so it is 0600 from the first byte; SQLite gives -wal and -shm the same mode.
  if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  chmodSync(path, 0o600);
  const db = new BetterSqlite3(path);
  db.pragma('journal_mode = WAL');
  return db;
}

interface DeviceRow {
  key_hash: string | null;
  key_revoked_at: number | null;
  target: string | null;
  target_rev: number;
  target_etag: string | null;
  shadow_desired: string | null;
  shadow_version: number;
}

/** The desired state of a device's shadow, as the cloud sets it. */
export interface ShadowDesiredView {
  version: number;
  state: Record<string, unknown>;
}

interface MessageRow {
  seq: number;
  id: string;
  channel: string;
  ts: number;
  payload: string;
  received_at: number;
  backfill: number;
}

interface JobRow {
  id: string;
  device: string;
  type: string;
  params: string;
  timeout_seconds: number;
  status: JobStatus;
  created_at: number;
  updated_at: number;
}

export class DevCloudStore {
  private readonly stmt: Record<
    | 'device'
    | 'insertDevice'
    | 'setKey'
    | 'setTarget'
    | 'bump'
    | 'counters'
    | 'insertReport'
    | 'lastReport'
    | 'reports'
    | 'countReports'
    | 'insertMessage'
    | 'messages'
    | 'countMessages'
    | 'byChannel'
    | 'insertHealth'
    | 'health'
    | 'idsOfMessages'
    | 'idsOfReports'
    | 'idsOfJobUpdates'
    | 'idsOfHealth'
    | 'insertJob'
    | 'nextJob'
    | 'setJobStatus'
    | 'job'
    | 'insertJobUpdate'
    | 'jobUpdates'
    | 'setShadowDesired',
    Statement
  >;
  private closed = false;
  /** Device logs (log-store.ts), in the same database. */
  readonly logs: LogStore;
  /** Device secrets (secrets.ts), in the same database. */
  readonly secrets: SecretTable;
  /** Provisioning keys and registration (provisioning.ts), in the same database. */
  readonly provisioning: ProvisioningStore;

  private constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {
    const prepare = (sql: string): Statement => db.prepare(sql);
    this.stmt = {
      device: prepare('SELECT key_hash, key_revoked_at, target, target_rev, target_etag, shadow_desired, shadow_version FROM devices WHERE uuid = ?'),
      setShadowDesired: prepare('UPDATE devices SET shadow_desired = ?, shadow_version = shadow_version + 1 WHERE uuid = ?'),
      insertDevice: prepare('INSERT INTO devices (uuid, key_hash, created_at) VALUES (?, ?, ?) ON CONFLICT (uuid) DO NOTHING'),
      setKey: prepare('UPDATE devices SET key_hash = ? WHERE uuid = ?'),
      setTarget: prepare(
        'UPDATE devices SET target = ?, target_rev = target_rev + 1, target_etag = ?, target_set_at = ? WHERE uuid = ?',
      ),
      bump: prepare(
        'INSERT INTO counters (device, name, value) VALUES (?, ?, ?) ON CONFLICT (device, name) DO UPDATE SET value = value + excluded.value',
      ),
      counters: prepare('SELECT name, value FROM counters WHERE device = ?'),
      insertReport: prepare(
        'INSERT INTO reports (device, report_id, state, received_at) VALUES (?, ?, ?, ?) ON CONFLICT (device, report_id) DO NOTHING',
      ),
      lastReport: prepare('SELECT report_id, state, received_at FROM reports WHERE device = ? ORDER BY seq DESC LIMIT 1'),
      reports: prepare('SELECT report_id, state, received_at FROM reports WHERE device = ? ORDER BY seq DESC LIMIT ?'),
      countReports: prepare('SELECT count(*) AS n FROM reports WHERE device = ?'),
      insertMessage: prepare(
        'INSERT INTO messages (device, id, channel, ts, payload, received_at, backfill) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, id) DO NOTHING',
      ),
      messages: prepare(
        'SELECT seq, id, channel, ts, payload, received_at, backfill FROM messages WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?',
      ),
      countMessages: prepare('SELECT count(*) AS n FROM messages WHERE device = ?'),
      byChannel: prepare('SELECT channel, count(*) AS n FROM messages WHERE device = ? GROUP BY channel'),
      insertHealth: prepare('INSERT OR IGNORE INTO health (device, body, received_at, idem_key) VALUES (?, ?, ?, ?)'),
      idsOfMessages: prepare('SELECT id FROM messages WHERE device = ? AND channel = ?').pluck(),
      idsOfReports: prepare('SELECT report_id FROM reports WHERE device = ?').pluck(),
      idsOfJobUpdates: prepare('SELECT u.update_id FROM job_updates AS u JOIN jobs AS j ON j.id = u.job_id WHERE j.device = ?').pluck(),
      idsOfHealth: prepare('SELECT idem_key FROM health WHERE device = ? AND idem_key IS NOT NULL').pluck(),
      health: prepare('SELECT body, received_at FROM health WHERE device = ? ORDER BY seq DESC LIMIT ?'),
      insertJob: prepare(
        `INSERT INTO jobs (id, device, type, params, timeout_seconds, status, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'QUEUED', ?, ?)`,
      ),
      nextJob: prepare(
        `SELECT id, device, type, params, timeout_seconds, status, created_at, updated_at FROM jobs
         WHERE device = ? AND status = 'QUEUED' ORDER BY seq LIMIT 1`,
      ),
      setJobStatus: prepare('UPDATE jobs SET status = ?, updated_at = ? WHERE id = ?'),
      job: prepare('SELECT id, device, type, params, timeout_seconds, status, created_at, updated_at FROM jobs WHERE id = ?'),
      insertJobUpdate: prepare(
        `INSERT INTO job_updates (job_id, update_id, status, details, received_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (job_id, update_id) DO NOTHING`,
      ),
      jobUpdates: prepare('SELECT update_id, status, details, received_at FROM job_updates WHERE job_id = ? ORDER BY seq'),
    };
    this.logs = new LogStore(db, now, (uuid, name, by) => this.bump(uuid, name, by));
    this.secrets = new SecretTable(db, now);
    this.provisioning = new ProvisioningStore(db, now);
  }

  /** Opens (creating if needed) the database at `path`, or an in-memory one for `:memory:`. */
  static open(path: string, now: () => number = Date.now): DevCloudStore {
    const db = openFile(path);
    try {
      // NORMAL in WAL mode survives a killed process, which is what tests do to the devcloud.
      db.pragma('synchronous = NORMAL');
      db.pragma('busy_timeout = 5000');
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new Error(`${path}: devcloud schema version ${version} is newer than this devcloud (${SCHEMA_VERSION})`);
      }
      if (version < SCHEMA_VERSION) {
        db.transaction(() => {
          if (version < 1) db.exec(SCHEMA);
          for (let v = Math.max(version, 1) + 1; v <= SCHEMA_VERSION; v++) db.exec(UPGRADES[v] as string);
          db.pragma(`user_version = ${SCHEMA_VERSION}`);
        })();
      }
      return new DevCloudStore(db, now);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }

  // ---- devices and auth ----

  /** Creates the device, or replaces its key when it exists. Returns whether it was new. */
  upsertDevice(uuid: string, apiKey: string): boolean {
    return this.db.transaction(() => {
      const created = this.stmt.insertDevice.run(uuid, hashKey(apiKey), this.now()).changes > 0;
      if (!created) this.stmt.setKey.run(hashKey(apiKey), uuid);
      return created;
    })();
  }

  /**
   * Checks a device's key. An unknown device, or one the admin created without a key, takes the
   * presented key when `autoProvision` is on (trust on first use).
   */
  authenticate(uuid: string, apiKey: string, autoProvision: boolean): AuthResult {
    return this.db.transaction((): AuthResult => {
      const row = this.stmt.device.get(uuid) as DeviceRow | undefined;
      const presented = hashKey(apiKey);
      if (row?.key_hash != null) return !sameHash(row.key_hash, presented) ? 'wrong-key' : row.key_revoked_at === null ? 'ok' : 'revoked';
      if (!autoProvision) return 'unknown-device';
      if (row) this.stmt.setKey.run(presented, uuid);
      else this.stmt.insertDevice.run(uuid, presented, this.now());
      return 'provisioned';
    })();
  }

  private ensureDevice(uuid: string): void {
    this.stmt.insertDevice.run(uuid, null, this.now());
  }

  // ---- target state ----

  setTarget(uuid: string, document: Record<string, unknown>): TargetView {
    const json = JSON.stringify(document);
    return this.db.transaction(() => {
      this.ensureDevice(uuid);
      const row = this.stmt.device.get(uuid) as DeviceRow;
      const revision = row.target_rev + 1;
      const etag = etagFor(revision, json);
      this.stmt.setTarget.run(json, etag, this.now(), uuid);
      return { etag, revision, json };
    })();
  }

  target(uuid: string): TargetView {
    const row = this.stmt.device.get(uuid) as DeviceRow | undefined;
    if (row?.target == null || row.target_etag == null) {
      return { etag: etagFor(0, DEFAULT_TARGET), revision: 0, json: DEFAULT_TARGET };
    }
    return { etag: row.target_etag, revision: row.target_rev, json: row.target };
  }

  // ---- the shadow's desired state ----

  /** Stores a new desired state; its version is one more than the last. */
  setShadowDesired(uuid: string, state: Record<string, unknown>): ShadowDesiredView {
    return this.db.transaction(() => {
      this.ensureDevice(uuid);
      this.stmt.setShadowDesired.run(JSON.stringify(state), uuid);
      const row = this.stmt.device.get(uuid) as DeviceRow;
      return { version: row.shadow_version, state };
    })();
  }

  /** The desired state, or undefined when none was ever set. */
  shadowDesired(uuid: string): ShadowDesiredView | undefined {
    const row = this.stmt.device.get(uuid) as DeviceRow | undefined;
    if (row?.shadow_desired == null) return undefined;
    return { version: row.shadow_version, state: JSON.parse(row.shadow_desired) as Record<string, unknown> };
  }

  // ---- counters ----

  bump(uuid: string, name: string, by = 1): void {
    if (by !== 0) this.stmt.bump.run(uuid, name, by);
  }

  /** Counts one device request by route; one transaction for both counters. */
  countRequest(uuid: string, route: string): void {
    this.db.transaction(() => {
      this.stmt.bump.run(uuid, 'requests.total', 1);
      this.stmt.bump.run(uuid, `route:${route}`, 1);
    })();
  }

  // ---- reports ----

  /** Stores a state report unless its reportId was seen before. Returns whether it was a duplicate. */
  addReport(uuid: string, reportId: string, state: unknown): boolean {
    return this.db.transaction(() => {
      const stored = this.stmt.insertReport.run(uuid, reportId, JSON.stringify(state), this.now()).changes > 0;
      this.stmt.bump.run(uuid, 'reports.received', 1);
      if (!stored) this.stmt.bump.run(uuid, 'reports.duplicates', 1);
      return !stored;
    })();
  }

  reports(uuid: string, limit: number): ReportRecord[] {
    return (this.stmt.reports.all(uuid, limit) as { report_id: string; state: string; received_at: number }[]).map(toReport);
  }

  // ---- messages ----

  /**
   * Stores a batch in one transaction; ids stored before (by this device) are duplicates and stay
   * as first stored. `rejected` messages are counted, never stored.
   */
  addMessages(uuid: string, accepted: readonly IncomingMessage[], rejectedCount: number): { stored: number; duplicates: number } {
    return this.db.transaction(() => {
      const at = this.now();
      let stored = 0;
      for (const m of accepted) {
        stored += this.stmt.insertMessage.run(uuid, m.id, m.channel, m.ts, JSON.stringify(m.payload) ?? 'null', at, m.backfill ? 1 : 0).changes;
      }
      const duplicates = accepted.length - stored;
      this.stmt.bump.run(uuid, 'messages.batches', 1);
      this.bump(uuid, 'messages.received', accepted.length + rejectedCount);
      this.bump(uuid, 'messages.duplicates', duplicates);
      this.bump(uuid, 'messages.rejected', rejectedCount);
      return { stored, duplicates };
    })();
  }

  messages(uuid: string, after: number, limit: number): MessagePage {
    const rows = this.stmt.messages.all(uuid, after, limit + 1) as MessageRow[];
    const more = rows.length > limit;
    const page = rows.slice(0, limit).map((r) => ({
      seq: r.seq,
      id: r.id,
      channel: r.channel,
      ts: r.ts,
      payload: JSON.parse(r.payload) as unknown,
      receivedAt: r.received_at,
      ...(r.backfill ? { backfill: true as const } : {}),
    }));
    return { messages: page, nextAfter: page.at(-1)?.seq ?? after, more };
  }

  // ---- health ----

  /** Stores a health report; one with the `key` (its Idempotency-Key) of a stored one is counted, not stored again. */
  addHealth(uuid: string, body: unknown, key?: string): void {
    this.db.transaction(() => {
      this.stmt.insertHealth.run(uuid, JSON.stringify(body), this.now(), key ?? null);
      this.stmt.bump.run(uuid, 'health.received', 1);
    })();
  }

  health(uuid: string, limit: number): HealthRecord[] {
    return (this.stmt.health.all(uuid, limit) as { body: string; received_at: number }[]).map((r) => ({
      health: JSON.parse(r.body) as unknown,
      receivedAt: r.received_at,
    }));
  }

  /**
   * The ids stored for one of a device's outbox channels, as the agent's loss ledger counts them:
   * state reports by reportId, job updates by updateId, health reports by Idempotency-Key, logs by
   * log message id (`POST …/logs`), every other channel by message id.
   */
  idsOf(uuid: string, channel: string): IterableIterator<string> {
    if (channel === 'state') return this.stmt.idsOfReports.iterate(uuid) as IterableIterator<string>;
    if (channel === 'jobs') return this.stmt.idsOfJobUpdates.iterate(uuid) as IterableIterator<string>;
    if (channel === 'health') return this.stmt.idsOfHealth.iterate(uuid) as IterableIterator<string>;
    if (channel === 'logs') return this.logs.ids(uuid);
    return this.stmt.idsOfMessages.iterate(uuid, channel) as IterableIterator<string>;
  }

  // ---- jobs ----

  createJob(uuid: string, spec: JobSpec): string {
    const id = randomUUID();
    const at = this.now();
    this.db.transaction(() => {
      this.ensureDevice(uuid);
      this.stmt.insertJob.run(id, uuid, spec.type, JSON.stringify(spec.params), spec.timeoutSeconds, at, at);
    })();
    return id;
  }

  /** Hands out the oldest QUEUED job of the device and marks it IN_PROGRESS. */
  takeNextJob(uuid: string): JobForDevice | undefined {
    return this.db.transaction(() => {
      const row = this.stmt.nextJob.get(uuid) as JobRow | undefined;
      if (!row) return undefined;
      this.stmt.setJobStatus.run('IN_PROGRESS', this.now(), row.id);
      return { id: row.id, type: row.type, params: JSON.parse(row.params) as Record<string, unknown>, timeoutSeconds: row.timeout_seconds };
    })();
  }

  /**
   * Records a status update once per updateId. A job in a final status keeps it: an update that
   * arrives late (a retried IN_PROGRESS after SUCCEEDED) is recorded but does not move it back.
   */
  updateJob(uuid: string, jobId: string, updateId: string, status: JobUpdateStatus, details: unknown): JobUpdateResult {
    return this.db.transaction((): JobUpdateResult => {
      const row = this.stmt.job.get(jobId) as JobRow | undefined;
      if (!row || row.device !== uuid) return { found: false };
      const at = this.now();
      const stored = this.stmt.insertJobUpdate.run(jobId, updateId, status, JSON.stringify(details ?? null), at).changes > 0;
      this.stmt.bump.run(uuid, 'jobUpdates.received', 1);
      if (!stored) {
        this.stmt.bump.run(uuid, 'jobUpdates.duplicates', 1);
        return { found: true, duplicate: true, status: row.status };
      }
      const next = TERMINAL.has(row.status) ? row.status : status;
      this.stmt.setJobStatus.run(next, at, jobId);
      return { found: true, duplicate: false, status: next };
    })();
  }

  job(uuid: string, jobId: string): JobView | undefined {
    const row = this.stmt.job.get(jobId) as JobRow | undefined;
    if (!row || row.device !== uuid) return undefined;
    const updates = this.stmt.jobUpdates.all(jobId) as { update_id: string; status: JobUpdateStatus; details: string; received_at: number }[];
    return {
      id: row.id,
      uuid: row.device,
      type: row.type,
      params: JSON.parse(row.params) as Record<string, unknown>,
      timeoutSeconds: row.timeout_seconds,
      status: row.status,
      createdAt: row.created_at,
      updatedAt: row.updated_at,
      updates: updates.map((u) => ({
        updateId: u.update_id,
        status: u.status,
        details: JSON.parse(u.details) as unknown,
        receivedAt: u.received_at,
      })),
    };
  }

  // ---- inspection ----

  received(uuid: string): ReceivedCounts {
    const counters = new Map<string, number>();
    const byRoute: Record<string, number> = {};
    const byStatus: Record<string, number> = {};
    for (const { name, value } of this.stmt.counters.all(uuid) as { name: string; value: number }[]) {
      if (name.startsWith('route:')) byRoute[name.slice(6)] = value;
      else if (name.startsWith('status:')) byStatus[name.slice(7)] = value;
      else counters.set(name, value);
    }
    const c = (name: string): number => counters.get(name) ?? 0;
    const byChannel: Record<string, number> = {};
    for (const { channel, n } of this.stmt.byChannel.all(uuid) as { channel: string; n: number }[]) byChannel[channel] = n;
    const lastReport = this.stmt.lastReport.get(uuid) as { report_id: string; state: string; received_at: number } | undefined;
    const lastHealth = this.health(uuid, 1)[0];
    return {
      reports: {
        received: c('reports.received'),
        unique: (this.stmt.countReports.get(uuid) as { n: number }).n,
        duplicates: c('reports.duplicates'),
        last: lastReport ? toReport(lastReport) : null,
      },
      messages: {
        received: c('messages.received'),
        unique: (this.stmt.countMessages.get(uuid) as { n: number }).n,
        duplicates: c('messages.duplicates'),
        rejected: c('messages.rejected'),
        batches: c('messages.batches'),
        byChannel,
      },
      health: { received: c('health.received'), last: lastHealth ?? null, config: configOf(lastHealth?.health) },
      jobUpdates: { received: c('jobUpdates.received'), duplicates: c('jobUpdates.duplicates') },
      logs: this.logs.counts(uuid, c),
      requests: { total: c('requests.total'), byRoute, byStatus },
    };
  }
}

/** The `config` member of a health report: `{ source: "file" | "last-known-good", file, fallback }`. */
function configOf(health: unknown): unknown {
  return health !== null && typeof health === 'object' && 'config' in health ? (health as { config: unknown }).config : null;
}

function toReport(r: { report_id: string; state: string; received_at: number }): ReportRecord {
  return { reportId: r.report_id, state: JSON.parse(r.state) as unknown, receivedAt: r.received_at };
}
