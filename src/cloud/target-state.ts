import type { Store } from '../store/store.js';
import { errorMessage } from '../util/errors.js';
import type { Random } from '../util/random.js';
import { validateTarget, type TargetState, type WorkloadPolicy } from '../workloads/target-schema.js';
import { pollLoop } from './poll-loop.js';
import type { CloudLoopDeps } from './loop-deps.js';
import { failureKind, type OutcomeSink } from '../resilience/outcome.js';
import type { ConfigIssue } from '../config/issues.js';
import { Kick, type WakeableSleep } from '../util/kick.js';
import { LIMIT_DEFAULTS } from '../config/schema.js';
import { CloudAnswerRefused } from '../resilience/cloud-error.js';

export type { OutcomeSink, WakeableSleep };



export interface TargetRejection {
  at: number;
  etag: string | null;
  issues: ConfigIssue[];
  message: string;
}

export type PollOutcome = 'changed' | 'unchanged' | 'rejected' | 'local-mode';

export interface TargetStatePollerOptions extends CloudLoopDeps {
  store: Store;
  random: Random;
  /** Read on every cycle: a target may change the interval. */
  pollIntervalMs: () => number;
  /** Called with each new valid target, after it is stored. */
  onTarget: (target: TargetState) => void;
  onRejected?: (rejection: TargetRejection) => void;
  /** What the device's local config lets a target ask of the host. */
  policy?: Partial<WorkloadPolicy>;
  /** Largest target document read (`limits.maxTargetBytes`). */
  maxTargetBytes?: number;
}

const REJECTED_ETAG_KEY = 'target.rejectedEtag';

/**
 * Polls the cloud for the target state: `If-None-Match` with the ETag held, `304` means nothing new,
 * a new document is validated and stored with its ETag in one transaction before anyone applies it.
 * On success the next poll is `pollIntervalMs` plus up to 10% jitter; on failure the loop's retry policy
 * decides, and a wake-up from the connectivity probe or a `pollNow()` cuts the wait short.
 */
export class TargetStatePoller {
  private readonly kick = new Kick();
  lastRejection: TargetRejection | undefined;
  lastPollAt: number | undefined;
  lastError: string | undefined;

  constructor(private readonly o: TargetStatePollerOptions) {}

  /** Polls at once (a notify over MQTT, a local `POST /v1/update`). */
  pollNow(): void {
    this.kick.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    const o = this.o;
    await pollLoop(
      { retry: o.retry, random: o.random, logger: o.logger, intervalMs: o.pollIntervalMs, kick: this.kick, what: 'target-state poll' },
      async (s) => {
        await this.pollOnce(s);
        return 'wait';
      },
      signal,
    );
  }

  /** One poll. Throws a CloudError on transport or HTTP failure (after marking the monitor). */
  async pollOnce(signal?: AbortSignal): Promise<PollOutcome> {
    const { store, http, uuid, monitor } = this.o;
    const held = store.getTarget();
    // In local mode the target was set on the device (POST /v2/local/target-state): the cloud's is
    // not fetched until local mode ends.
    if (held?.source === 'local') return 'local-mode';
    const rejectedEtag = store.getKv<string>(REJECTED_ETAG_KEY);
    const ifNoneMatch = rejectedEtag ?? held?.etag ?? undefined;
    this.lastPollAt = this.o.clock.now();
    let res;
    try {
      res = await http.request({
        method: 'GET',
        path: `/device/v1/${encodeURIComponent(uuid)}/state`,
        headers: ifNoneMatch ? { 'if-none-match': ifNoneMatch } : {},
        accept: [304],
        maxBytes: { bytes: this.o.maxTargetBytes ?? LIMIT_DEFAULTS.maxTargetBytes, setting: 'limits.maxTargetBytes' },
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      // An answer over a limit is a document refused, like one that fails validation: the cloud is
      // reachable, and the target in force stays.
      if (err instanceof CloudAnswerRefused) {
        monitor.markSuccess('api', 'poll');
        this.lastError = undefined;
        const etagHeader = err.headers.etag;
        const etag = (Array.isArray(etagHeader) ? etagHeader[0] : etagHeader) ?? null;
        return this.reject(etag, [{ path: '', source: 'cloud', expected: `a document within ${err.setting} (${err.limit})` }], err.message);
      }
      if (!signal?.aborted) {
        this.lastError = errorMessage(err);
        monitor.markFailure('api', 'poll', this.lastError, failureKind(err));
      }
      throw err;
    }
    monitor.markSuccess('api', 'poll');
    this.lastError = undefined;
    if (res.status === 304) return 'unchanged';
    const etagHeader = res.headers.etag;
    const etag = (Array.isArray(etagHeader) ? etagHeader[0] : etagHeader) ?? null;
    const result = validateTarget(res.body, { policy: this.o.policy ?? {} });
    if (!result.ok) return this.reject(etag, result.issues, result.message);
    store.db.transaction(() => {
      store.setTarget({ etag, version: result.target.version, document: result.target, source: 'cloud' });
      store.setKv(REJECTED_ETAG_KEY, null);
    })();
    this.lastRejection = undefined;
    this.o.logger.info({ version: result.target.version, etag }, 'new target state stored');
    this.o.onTarget(result.target);
    return 'changed';
  }

  private reject(etag: string | null, issues: ConfigIssue[], message: string): 'rejected' {
    this.lastRejection = { at: this.o.clock.now(), etag, issues, message };
    // Stryker disable next-line ConditionalExpression: storing null instead is read back as "none" (??), the same as not storing
    if (etag) this.o.store.setKv(REJECTED_ETAG_KEY, etag);
    this.o.logger.error({ etag, issues }, `target state rejected, keeping the last good one: ${message}`);
    this.o.onRejected?.(this.lastRejection);
    return 'rejected';
  }
}
