import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { CloudRequest, CloudResponse } from '../../src/cloud/http-client.js';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { HttpSink } from '../../src/cloud/http-sink.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { JobUpdateDelivery } from '../../src/jobs/delivery.js';
import { JOBS_CHANNEL } from '../../src/jobs/types.js';
import { Flusher } from '../../src/outbox/flusher.js';
import { Outbox } from '../../src/outbox/outbox.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { seededRandom } from '../../src/util/random.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/**
 * Issue 20: what an HTTP status from the cloud does to queued messages, through the real HTTP sink,
 * flusher and outbox (real SQLite, fake time). A refusal of the device (401 revoked key, 403) keeps
 * every message queued and retries with backoff; a refusal of the content (400, 413, 415, 422) parks
 * the message it names; a 404 on a job update parks that update (the cloud dropped the job), and the
 * rest is delivered. docs/outbox.md, "What the cloud's answers do".
 */

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

/** The cloud's HTTP API as the sink sees it: answers `status` to everything while it is set, else takes all. */
class Cloud {
  status: number | undefined;
  /** Job ids whose updates get this status (the rest as `status`). */
  jobStatus = new Map<string, number>();
  requests: { at: number; method: string; path: string }[] = [];
  stored: string[] = [];
  constructor(private readonly clock: FakeClock) {}
  request = async <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
    await Promise.resolve();
    this.requests.push({ at: this.clock.now(), method: req.method, path: req.path });
    const job = /\/jobs\/([^/]+)$/.exec(req.path)?.[1];
    const status = (job !== undefined ? this.jobStatus.get(decodeURIComponent(job)) : undefined) ?? this.status;
    if (status !== undefined) throw new CloudError('http', `the cloud answered ${status}`, status);
    const json = req.json as { messages?: { id: string }[]; updateId?: string };
    const ids = json.messages ? json.messages.map((m) => m.id) : [json.updateId as string];
    this.stored.push(...ids);
    return { status: 200, headers: {}, body: (json.messages ? { accepted: ids, rejected: [] } : undefined) as T };
  };
}

function setup() {
  const clock = new FakeClock();
  const random = seededRandom(7);
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 10_000, maxBytes: 64 * 1_048_576 }, disk: { minFreeBytes: 0 }, groupCommit: { windowMs: 0 } });
  const cloud = new Cloud(clock);
  const sink = new HttpSink({ request: cloud.request }, 'dev-1', [], { [JOBS_CHANNEL]: new JobUpdateDelivery({ request: cloud.request }, 'dev-1') });
  const flusher = new Flusher({
    outbox,
    sink,
    monitor: { markSuccess: () => undefined, markFailure: () => undefined },
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 8_000, strategy: 'none', clock, random }), sleeper: new Wakeup({ clock, random }), clock }),
    clock,
    logger: silentLogger(),
    batch: { maxCount: 50, maxBytes: 1_048_576 },
    maxInflight: 1,
  });
  const stop = new AbortController();
  const done = flusher.run(stop.signal);
  cleanup(async () => {
    stop.abort();
    await done;
    await outbox.close();
    store.close();
  });
  const telemetry = async (count: number): Promise<string[]> => {
    const r = await outbox.enqueueMany(Array.from({ length: count }, (_, i) => ({ channel: 'telemetry', payload: { i } })));
    flusher.kick();
    return r.map((x) => x.id);
  };
  const jobUpdate = async (jobId: string): Promise<string> => {
    const [r] = await outbox.enqueueMany([{ channel: JOBS_CHANNEL, payload: { jobId, status: 'SUCCEEDED', details: null } }]);
    flusher.kick();
    return r!.id;
  };
  return { clock, outbox, cloud, telemetry, jobUpdate };
}

describe('what the cloud\'s HTTP answers do to queued messages', () => {
  for (const status of [401, 403, 404, 429, 500, 503]) {
    it(`${status} to a batch: every message stays queued, nothing is parked, retries back off, and all is delivered once the cloud takes them`, async () => {
      const t = setup();
      t.cloud.status = status;
      const ids = await t.telemetry(20);
      await t.clock.advance(20_000);
      const attempts = t.cloud.requests.map((r) => r.at);
      expect(t.outbox.stats()).toMatchObject({ depth: 20, parked: 0, delivered: 0 });
      expect(t.outbox.parked()).toEqual([]);
      // Backing off (1, 2, 4, 8, 8 s): a handful of tries in 20 s, not one per tick.
      expect(attempts.length).toBeGreaterThanOrEqual(3);
      expect(attempts.length).toBeLessThanOrEqual(6);
      for (let i = 1; i < attempts.length; i++) expect(attempts[i]! - attempts[i - 1]!).toBeGreaterThanOrEqual(1_000);
      t.cloud.status = undefined; // e.g. the key rotated in
      await t.clock.advance(10_000);
      expect(t.outbox.stats()).toMatchObject({ depth: 0, parked: 0, delivered: 20 });
      expect(new Set(t.cloud.stored)).toEqual(new Set(ids));
    });
  }

  for (const status of [400, 413, 415, 422]) {
    it(`${status} to a batch refuses its content: the message is parked, not retried for ever`, async () => {
      const t = setup();
      t.cloud.status = status;
      const [id] = await t.telemetry(1);
      await t.clock.advance(5_000);
      expect(t.outbox.stats()).toMatchObject({ depth: 0, parked: 1, delivered: 0 });
      expect(t.outbox.parked().map((p) => p.id)).toEqual([id]);
    });
  }

  it('a job update: 404 (the cloud dropped the job) parks that update and the others are delivered; 401/403 keep them all queued', async () => {
    const t = setup();
    t.cloud.jobStatus.set('gone', 404);
    const gone = await t.jobUpdate('gone');
    const kept = await t.jobUpdate('kept');
    await t.clock.advance(5_000);
    expect(t.outbox.parked().map((p) => p.id)).toEqual([gone]);
    expect(t.cloud.stored).toEqual([kept]);
    for (const status of [401, 403]) {
      t.cloud.jobStatus.set(`revoked-${status}`, status);
      const held = await t.jobUpdate(`revoked-${status}`);
      await t.clock.advance(20_000);
      expect(t.outbox.parked().map((p) => p.id), `${status}`).toEqual([gone]);
      expect(t.outbox.stats().depth, `${status}`).toBe(1);
      t.cloud.jobStatus.delete(`revoked-${status}`);
      await t.clock.advance(10_000);
      expect(t.cloud.stored, `${status}`).toContain(held);
      expect(t.outbox.stats().depth, `${status}`).toBe(0);
    }
  });
});
