import type { Database, Statement } from 'better-sqlite3';
import type { Outbox } from '../outbox/outbox.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import { groupMembers, processStartTicks, signalGroup } from '../util/process-group.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import { JOBS_CHANNEL, JobFailed, JobRejected, type JobHandler, type JobSpec, type JobStatus, type JobUpdatePayload, type JobUpdateStatus } from './types.js';

/** A job as the local table keeps it (`GET /v2/jobs`). */
export interface JobRecord {
  id: string;
  type: string;
  params: Record<string, Json>;
  timeoutSeconds: number;
  status: JobStatus;
  details: Json;
  receivedAt: number;
  finishedAt: number | null;
}

export interface JobRunnerOptions {
  db: Database;
  outbox: Pick<Outbox, 'enqueue'>;
  handlers: Readonly<Record<string, JobHandler>>;
  clock: Clock;
  logger: Logger;
  /** Finished jobs kept in the table (the oldest are deleted). Default 100. */
  history?: number;
  /** Job types whose end is reported by another part after a restart (self-update, config update): recover() leaves them. */
  finishedElsewhere?: readonly string[];
}

export interface JobRunnerEvents {
  finished: JobRecord;
}

interface Row {
  id: string;
  type: string;
  params: string;
  timeout_seconds: number;
  status: JobStatus;
  details: string | null;
  received_at: number;
  finished_at: number | null;
  pid: number | null;
  pid_start: number | null;
}

const FINAL: readonly JobStatus[] = ['SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT'];
/** A leftover process group gets this long after SIGTERM before SIGKILL. */
const ORPHAN_KILL_AFTER_MS = 2_000;

/**
 * Runs cloud jobs, one at a time, and reports each one's progress through the outbox (channel `jobs`,
 * sent as `PATCH …/jobs/{jobId}` with the message id as `updateId`, so a retried update is the same
 * update): `IN_PROGRESS` when it starts, then `SUCCEEDED`, `FAILED`, `REJECTED` (unknown type, bad
 * params, not allowed) or `TIMED_OUT` (its `timeoutSeconds` ran out: the handler's signal aborts).
 *
 * A job is written to the table before it runs. One still `RUNNING` at the next start was cut off by
 * a crash, a kill or a power cut; `recover` reports it FAILED rather than running it again: a job
 * may have effects (a command that ran halfway), and the cloud decides whether to send it again.
 */
export class JobRunner extends TypedEmitter<JobRunnerEvents> {
  private readonly q: Record<'insert' | 'finish' | 'get' | 'running' | 'list' | 'prune' | 'counts' | 'setPid', Statement>;
  private current: JobRecord | undefined;

  constructor(private readonly o: JobRunnerOptions) {
    super();
    const p = (sql: string): Statement => o.db.prepare(sql);
    this.q = {
      insert: p('INSERT INTO jobs (id, type, params, timeout_seconds, status, details, received_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)'),
      finish: p('UPDATE jobs SET status = ?, details = ?, finished_at = ? WHERE id = ?'),
      get: p('SELECT * FROM jobs WHERE id = ?'),
      running: p("SELECT * FROM jobs WHERE status = 'RUNNING' ORDER BY received_at"),
      list: p('SELECT * FROM jobs ORDER BY received_at DESC, rowid DESC LIMIT ?'),
      prune: p(`DELETE FROM jobs WHERE status != 'RUNNING' AND id NOT IN (SELECT id FROM jobs WHERE status != 'RUNNING' ORDER BY received_at DESC, rowid DESC LIMIT ?)`),
      counts: p('SELECT status, count(*) AS n FROM jobs GROUP BY status'),
      setPid: p('UPDATE jobs SET pid = ?, pid_start = ? WHERE id = ?'),
    };
  }

  /** The job running now, if any. */
  get running(): JobRecord | undefined {
    return this.current;
  }

  /** Job types this agent runs. */
  get types(): string[] {
    return Object.keys(this.o.handlers).sort();
  }

  /**
   * Jobs left RUNNING by the previous run of the agent are reported FAILED. A process group such a
   * job started that still runs (the same pid and start time) is stopped first: nobody waits for it.
   */
  async recover(): Promise<void> {
    for (const row of this.q.running.all() as Row[]) {
      if (row.id === this.current?.id) continue; // running in this process (the poll loop was restarted around it)
      if (this.o.finishedElsewhere?.includes(row.type)) continue;
      const job = toRecord(row);
      const stopped = row.pid !== null && row.pid_start !== null ? await this.stopOrphan(row.pid, String(row.pid_start)) : false;
      this.o.logger.warn({ jobId: job.id, type: job.type, stopped }, `job ${job.id} (${job.type}) was cut off by a restart of the agent; reporting it failed`);
      const details: Record<string, Json> = { error: 'the agent restarted while the job ran; it was not run again' };
      if (stopped) details.stoppedLeftoverProcess = row.pid;
      await this.end(job, 'FAILED', details);
    }
  }

  /** SIGTERM to the group, SIGKILL after ORPHAN_KILL_AFTER_MS. True when there was something to stop. */
  private async stopOrphan(pid: number, startTicks: string): Promise<boolean> {
    if (processStartTicks(pid) !== startTicks) return false; // gone, or the pid belongs to someone else now
    signalGroup(pid, 'SIGTERM');
    const until = this.o.clock.monotonic() + ORPHAN_KILL_AFTER_MS;
    while (groupMembers(pid).length > 0 && this.o.clock.monotonic() < until) await this.o.clock.sleep(50).catch(() => undefined);
    if (groupMembers(pid).length > 0) signalGroup(pid, 'SIGKILL');
    return true;
  }

  /** The jobs of these types left RUNNING (by an agent that stopped for a switch). */
  leftRunning(types: readonly string[]): JobRecord[] {
    return (this.q.running.all() as Row[]).filter((r) => types.includes(r.type) && r.id !== this.current?.id).map(toRecord);
  }

  /** Reports the end of a job another part finished (see `finishedElsewhere`); a job not RUNNING is left as it is. */
  async conclude(id: string, status: 'SUCCEEDED' | 'FAILED', details: Json): Promise<void> {
    const job = this.find(id);
    if (job?.status === 'RUNNING') await this.end(job, status, details);
  }

  /** Whether this job id was received before (it is in the table). */
  knows(id: string): boolean {
    return this.find(id) !== undefined;
  }

  /** Newest first. */
  list(limit = 50): JobRecord[] {
    return (this.q.list.all(limit) as Row[]).map(toRecord);
  }

  /** How many jobs the table holds per status. */
  counts(): Record<JobStatus, number> {
    const out: Record<JobStatus, number> = { RUNNING: 0, SUCCEEDED: 0, FAILED: 0, REJECTED: 0, TIMED_OUT: 0 };
    for (const r of this.q.counts.all() as { status: JobStatus; n: number }[]) out[r.status] = r.n;
    return out;
  }

  /**
   * Refuses a job without running it (the poller could not make sense of it). The job is recorded
   * and REJECTED is reported with `reason`.
   */
  async reject(spec: Pick<JobSpec, 'id'> & Partial<JobSpec>, reason: string): Promise<JobRecord> {
    const known = this.find(spec.id);
    if (known) return known;
    const job = this.record(spec, 'RUNNING');
    return this.end(job, 'REJECTED', { error: reason });
  }

  /**
   * Runs one job to its end and resolves with its final record; never rejects. A job id seen before
   * is not run again (the cloud handed it out twice). When `signal` aborts (the agent stops) the job's
   * handler is aborted and its row stays RUNNING: the next start reports it FAILED.
   */
  async run(spec: JobSpec, signal: AbortSignal): Promise<JobRecord> {
    const known = this.find(spec.id);
    if (known) {
      this.o.logger.warn({ jobId: spec.id, status: known.status }, `job ${spec.id} was handed out again; it is not run twice`);
      return known;
    }
    const handler = Object.hasOwn(this.o.handlers, spec.type) ? this.o.handlers[spec.type] : undefined;
    if (!handler) {
      const job = this.record(spec, 'RUNNING');
      const known = this.types.length > 0 ? this.types.join(', ') : 'none';
      return this.end(job, 'REJECTED', { error: `unknown job type ${JSON.stringify(spec.type)}; this agent runs: ${known}` });
    }
    const job = this.record(spec, 'RUNNING');
    this.current = job;
    try {
      await this.update(job.id, 'IN_PROGRESS', null);
      this.o.logger.info({ jobId: job.id, type: job.type, timeoutSeconds: job.timeoutSeconds }, `job ${job.id} (${job.type}) started`);
      const timeout = new AbortController();
      const timer = new AbortController();
      const timedOut = this.o.clock.sleep(job.timeoutSeconds * 1000, timer.signal).then(
        () => {
          timeout.abort(new Error(`the job ran longer than its timeout of ${job.timeoutSeconds} s`));
          return true;
        },
        () => false,
      );
      const ctx = {
        jobId: job.id,
        signal: AbortSignal.any([signal, timeout.signal]),
        logger: this.o.logger.child({ jobId: job.id }),
        started: (pid: number) => this.q.setPid.run(pid, Number(processStartTicks(pid) ?? 0), job.id),
      };
      let outcome: [Exclude<JobStatus, 'RUNNING'>, Json];
      try {
        const details = await handler(job.params, ctx);
        outcome = ['SUCCEEDED', details ?? null];
      } catch (err) {
        if (timeout.signal.aborted) outcome = ['TIMED_OUT', { error: errorMessage(timeout.signal.reason) }];
        else if (signal.aborted) return job; // stays RUNNING: recover() reports it at the next start
        else if (err instanceof JobRejected) outcome = ['REJECTED', { error: err.message }];
        else if (err instanceof JobFailed) outcome = ['FAILED', { error: err.message, ...err.details }];
        else outcome = ['FAILED', { error: errorMessage(err) }];
      } finally {
        timer.abort();
        await timedOut;
      }
      return await this.end(job, outcome[0], outcome[1]);
    } finally {
      this.current = undefined;
    }
  }

  private find(id: string): JobRecord | undefined {
    const row = this.q.get.get(id) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  private record(spec: Pick<JobSpec, 'id'> & Partial<JobSpec>, status: JobStatus): JobRecord {
    const job: JobRecord = {
      id: spec.id,
      type: spec.type ?? '',
      params: spec.params ?? {},
      timeoutSeconds: spec.timeoutSeconds ?? 0,
      status,
      details: null,
      receivedAt: this.o.clock.now(),
      finishedAt: null,
    };
    this.q.insert.run(job.id, job.type, JSON.stringify(job.params), job.timeoutSeconds, job.status, null, job.receivedAt, null);
    return job;
  }

  private async end(job: JobRecord, status: Exclude<JobStatus, 'RUNNING'>, details: Json): Promise<JobRecord> {
    const done: JobRecord = { ...job, status, details, finishedAt: this.o.clock.now() };
    this.o.db.transaction(() => {
      this.q.finish.run(status, JSON.stringify(details), done.finishedAt, job.id);
      this.q.prune.run(this.o.history ?? 100);
    })();
    const level = status === 'SUCCEEDED' ? 'info' : 'warn';
    this.o.logger[level]({ jobId: job.id, type: job.type, status, details }, `job ${job.id} (${job.type}) ${status.toLowerCase().replace('_', ' ')}`);
    await this.update(job.id, status, details);
    this.emit('finished', done);
    return done;
  }

  /** Queues a status update durably; a refused enqueue (disk full) is logged: the job's row still says how it ended. */
  private async update(jobId: string, status: JobUpdateStatus, details: Json): Promise<void> {
    const payload: JobUpdatePayload = { jobId, status, details };
    try {
      await this.o.outbox.enqueue({ channel: JOBS_CHANNEL, payload: payload as unknown as Json });
    } catch (err) {
      this.o.logger.error({ jobId, status, err: errorMessage(err) }, `could not queue the ${status} update of job ${jobId}: ${errorMessage(err)}`);
    }
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.o.logger.error({ err: errorMessage(err), event }, `a listener of the job runner's "${event}" event failed`);
  }
}

function parse(text: string | null): Json {
  if (text === null) return null;
  try {
    return JSON.parse(text) as Json;
  } catch {
    return null;
  }
}

function toRecord(row: Row): JobRecord {
  const params = parse(row.params);
  return {
    id: row.id,
    type: row.type,
    params: params !== null && typeof params === 'object' && !Array.isArray(params) ? params : {},
    timeoutSeconds: row.timeout_seconds,
    status: FINAL.includes(row.status) || row.status === 'RUNNING' ? row.status : 'FAILED',
    details: parse(row.details),
    receivedAt: row.received_at,
    finishedAt: row.finished_at,
  };
}
