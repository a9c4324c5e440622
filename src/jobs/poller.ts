import { pollLoop } from '../cloud/poll-loop.js';
import type { CloudLoopDeps } from '../cloud/loop-deps.js';
import { markRequestFailure } from '../resilience/outcome.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import { Kick } from '../util/kick.js';
import { PauseGate } from '../util/pause-gate.js';
import type { Random } from '../util/random.js';
import type { JobRunner } from './runner.js';
import type { JobSpec } from './types.js';
import { describeValue } from '../config/issues.js';

export interface JobPollerOptions extends CloudLoopDeps {
  runner: Pick<JobRunner, 'run' | 'reject' | 'recover' | 'knows'>;
  random: Random;
  /** Read on every cycle. */
  pollIntervalMs: () => number;
}

/** Longest timeout a job may ask for (a day); a job without one gets DEFAULT_TIMEOUT_S. */
const MAX_TIMEOUT_S = 86_400;
const DEFAULT_TIMEOUT_S = 300;
const MAX_ID_LENGTH = 200;

/**
 * Asks the cloud for the next job (`GET …/jobs/next`: a job, or 204) and runs it, one at a time.
 * After a job it asks again at once (the cloud may have queued several); with nothing to do it
 * waits `pollIntervalMs` plus up to 10% jitter, or less when `pollNow()` is called (a
 * `jobs/notify` over MQTT). Failures wait as the loop's retry policy says, like every cloud loop.
 * Graceful degradation pauses it (`pause`: no new job is asked for; one already fetched runs to
 * its end and its updates wait in the outbox) and resumes it (`resume`: it asks at once).
 */
export class JobPoller {
  readonly name = 'jobs';
  private readonly kick = new Kick();
  private readonly gate = new PauseGate();
  lastPollAt: number | undefined;
  lastError: string | undefined;

  constructor(private readonly o: JobPollerOptions) {}

  pollNow(): void {
    this.kick.kick();
  }

  pause(): void {
    this.gate.pause();
  }

  resume(): void {
    this.gate.resume();
    this.kick.kick();
  }

  get paused(): boolean {
    return this.gate.paused;
  }

  async run(signal: AbortSignal): Promise<void> {
    await this.o.runner.recover();
    const o = this.o;
    await pollLoop(
      { retry: o.retry, random: o.random, logger: o.logger, intervalMs: o.pollIntervalMs, kick: this.kick, what: 'polling for jobs', gate: this.gate },
      async (s) => {
        const job = await this.next(s);
        if (!job) return 'wait';
        // A job handed out again is not run twice, and asking again at once would only get it again.
        if (o.runner.knows(job.id)) {
          o.logger.warn({ jobId: job.id }, `the cloud handed out job ${job.id} again; it ran already, asking again in a poll interval`);
          return 'wait';
        }
        await o.runner.run(job, s);
        // The cloud may have queued more: ask again at once.
        return 'again';
      },
      signal,
    );
  }

  /** The next job, or undefined (204, or a job refused as malformed). Throws a CloudError. */
  private async next(signal: AbortSignal): Promise<JobSpec | undefined> {
    const { http, uuid, monitor } = this.o;
    this.lastPollAt = this.o.clock.now();
    let res;
    try {
      res = await http.request<unknown>({ method: 'GET', path: `/device/v1/${encodeURIComponent(uuid)}/jobs/next`, accept: [204], signal });
    } catch (err) {
      if (!signal.aborted) {
        this.lastError = errorMessage(err);
        markRequestFailure(monitor, 'jobs', err);
      }
      throw err;
    }
    monitor.markSuccess('api', 'jobs');
    this.lastError = undefined;
    if (res.status === 204) return undefined;
    const parsed = parseJob(res.body);
    if (parsed.ok) return parsed.job;
    this.o.logger.error({ problem: parsed.problem }, `the cloud handed out a job the agent cannot read: ${parsed.problem}`);
    // A job with a usable id is answered REJECTED, so the cloud does not wait for it forever.
    if (parsed.id !== undefined) await this.o.runner.reject({ id: parsed.id }, parsed.problem);
    return undefined;
  }
}

type Parsed = { ok: true; job: JobSpec } | { ok: false; problem: string; id?: string };


/** Validates `{ id, type, params, timeoutSeconds }` (PROTOCOL.md); problems name the field, the value and what was expected. */
export function parseJob(body: unknown): Parsed {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return { ok: false, problem: `job: expected an object, got ${describeValue(body)}` };
  const b = body as Record<string, unknown>;
  if (typeof b.id !== 'string' || b.id === '' || b.id.length > MAX_ID_LENGTH) {
    return { ok: false, problem: `id: expected a string of 1 to ${MAX_ID_LENGTH} characters, got ${describeValue(b.id)}` };
  }
  const id = b.id;
  if (typeof b.type !== 'string' || b.type === '') return { ok: false, id, problem: `type: expected a non-empty string, got ${describeValue(b.type)}` };
  const params = b.params ?? {};
  if (params === null || typeof params !== 'object' || Array.isArray(params)) return { ok: false, id, problem: `params: expected an object, got ${describeValue(params)}` };
  const timeout = b.timeoutSeconds ?? DEFAULT_TIMEOUT_S;
  if (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 1 || timeout > MAX_TIMEOUT_S) {
    return { ok: false, id, problem: `timeoutSeconds: expected an integer from 1 to ${MAX_TIMEOUT_S}, got ${describeValue(timeout)}` };
  }
  return { ok: true, job: { id, type: b.type, params: params as Record<string, Json>, timeoutSeconds: timeout } };
}
