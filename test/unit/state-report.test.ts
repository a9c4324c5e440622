import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudError, type CloudRequest } from '../../src/cloud/http-client.js';
import { RetryPolicy } from '../../src/cloud/retry.js';
import { StateReporter } from '../../src/cloud/state-report.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { Store } from '../../src/store/store.js';
import { FakeClock } from '../../src/util/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Json } from '../../src/util/json-diff.js';
import { seededRandom } from '../../src/util/random.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const stops: AbortController[] = [];
afterEach(() => {
  for (const s of stops.splice(0)) s.abort();
  dirs.cleanup();
});

/** A stand-in for the cloud's HTTP endpoint (named fake: the real one is covered by the integration tests). */
class FakeCloudEndpoint {
  up = true;
  requests: { reportId: string; state: Json; ok: boolean; at: number }[] = [];
  constructor(private readonly clock: FakeClock) {}
  async request(req: CloudRequest): Promise<{ status: number; headers: Record<string, string>; body: undefined }> {
    const body = req.json as { reportId: string; state: Json };
    expect(req.headers?.['idempotency-key']).toBe(body.reportId);
    this.requests.push({ ...body, ok: this.up, at: this.clock.monotonic() });
    if (!this.up) throw new CloudError('network', 'PATCH /state failed: ECONNREFUSED');
    return { status: 200, headers: {}, body: undefined };
  }
}

function setup(intervalMs = 1_000, cloudUp = true) {
  const clock = new FakeClock();
  const random = seededRandom(7);
  const cloud = new FakeCloudEndpoint(clock);
  cloud.up = cloudUp;
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  const outcomes: string[] = [];
  let current: Json = { status: 'applied', targetVersion: 1 };
  const reporter = new StateReporter({
    http: cloud,
    uuid: 'dev-1',
    store,
    monitor: { markSuccess: () => outcomes.push("ok"), markFailure: (_c, _o, e) => outcomes.push(`fail ${e}`) },
    retry: new RetryPolicy({
      backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'full', clock, random }),
      sleeper: new Wakeup({ clock, random }),
      clock,
    }),
    clock,
    logger: silentLogger(),
    ids: new IdGenerator(() => clock.now()),
    intervalMs: () => intervalMs,
    current: () => current,
  });
  const stop = new AbortController();
  stops.push(stop);
  void reporter.run(stop.signal);
  return {
    clock,
    cloud,
    outcomes,
    reporter,
    set(next: Json) {
      current = next;
      reporter.markDirty();
    },
  };
}

describe('state reporter', () => {
  it('sends the whole state first, then only what changed since the acknowledged report', async () => {
    const t = setup();
    await t.clock.advance(10);
    expect(t.cloud.requests.map((r) => r.state)).toEqual([{ status: 'applied', targetVersion: 1 }]);
    t.set({ status: 'applied', targetVersion: 2 });
    await t.clock.advance(1_500);
    expect(t.cloud.requests[1]?.state).toEqual({ targetVersion: 2 });
    expect(t.outcomes).toEqual(['ok', 'ok']);
  });

  it('sends at most one report per interval however often the state changes', async () => {
    const t = setup(1_000);
    for (let i = 0; i < 100; i++) {
      t.set({ status: 'applied', targetVersion: i });
      await t.clock.advance(50);
    }
    // 5 s of changes every 50 ms: one report at the start and one per second after.
    expect(t.cloud.requests.length).toBeGreaterThanOrEqual(5);
    expect(t.cloud.requests.length).toBeLessThanOrEqual(6);
    const gaps = t.cloud.requests.slice(1).map((r, i) => r.at - t.cloud.requests[i]!.at);
    for (const g of gaps) expect(g).toBeGreaterThanOrEqual(1_000);
  });

  it('coalesces a long outage into one report of the latest state, keeping the id while the content is the same', async () => {
    const t = setup(1_000);
    await t.clock.advance(10);
    t.cloud.up = false;
    for (let i = 0; i < 600; i++) {
      t.set({ status: i % 2 ? 'applying' : 'applied', targetVersion: 100 + i });
      await t.clock.advance(1_000);
    }
    const failed = t.cloud.requests.filter((r) => !r.ok);
    // 600 changes over 10 minutes: the backoff, not the change rate, sets the attempts.
    expect(failed.length).toBeLessThan(30);
    t.cloud.up = true;
    await t.clock.advance(120_000);
    const delivered = t.cloud.requests.filter((r) => r.ok);
    expect(delivered).toHaveLength(2);
    expect(delivered[1]?.state).toEqual({ status: 'applying', targetVersion: 699 });

    // A retry of unchanged content reuses its report id.
    const t2 = setup(1_000, false);
    await t2.clock.advance(30_000);
    const ids = new Set(t2.cloud.requests.map((r) => r.reportId));
    expect(t2.cloud.requests.length).toBeGreaterThan(2);
    expect(ids.size).toBe(1);
  });
});

describe('state reporter as a degradable feature', () => {
  it('sends nothing while paused and reports the latest state on resume', async () => {
    const t = setup(1_000);
    await t.clock.advance(10);
    t.reporter.pause();
    for (let i = 0; i < 10; i++) {
      t.set({ status: 'applied', targetVersion: 10 + i });
      await t.clock.advance(5_000);
    }
    expect(t.cloud.requests).toHaveLength(1);
    t.reporter.resume();
    await t.clock.advance(10);
    expect(t.cloud.requests).toHaveLength(2);
    expect(t.cloud.requests[1]?.state).toEqual({ targetVersion: 19 });
  });
});
