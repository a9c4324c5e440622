import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { CloudRequest } from '../../src/cloud/http-client.js';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { StateDelivery } from '../../src/cloud/state-delivery.js';
import { StateReporter } from '../../src/cloud/state-report.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import type { Json } from '../../src/util/json-diff.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

function openStore(clock: FakeClock): Store {
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  return store;
}

/**
 * Stands in for the outbox (named fake: its group commit runs on real timers, and its coalescing is
 * tested in outbox.test.ts): records what the reporter queues, keeping the latest per coalescing key.
 */
class RecordingOutbox {
  calls: { payload: Json; coalesceKey?: string; channel: string }[] = [];
  latest = new Map<string, Json>();
  async enqueue(m: { channel: string; payload: Json; coalesceKey?: string }): Promise<{ id: string }> {
    this.calls.push(m);
    if (m.coalesceKey) this.latest.set(`${m.channel}/${m.coalesceKey}`, m.payload);
    return { id: `id-${this.calls.length}` };
  }
}

function setupReporter(intervalMs = 1_000) {
  const clock = new FakeClock();
  const outbox = new RecordingOutbox();
  let current: Json = { status: 'applied', targetVersion: 1 };
  const reporter = new StateReporter({ outbox, clock, logger: silentLogger(), intervalMs: () => intervalMs, current: () => current });
  const stop = new AbortController();
  const done = reporter.run(stop.signal);
  cleanup(async () => {
    stop.abort();
    await done;
  });
  return {
    clock,
    outbox,
    reporter,
    set(next: Json) {
      current = next;
      reporter.markDirty();
    },
  };
}

describe('state reporter', () => {
  it('queues the state at most once per interval however often it changes, on one coalescing key', async () => {
    const t = setupReporter(1_000);
    for (let i = 0; i < 100; i++) {
      t.set({ status: 'applied', targetVersion: i });
      await t.clock.advance(50);
    }
    // 5 s of changes every 50 ms: about one queued report a second, never more.
    expect(t.outbox.calls.length).toBeGreaterThanOrEqual(5);
    expect(t.outbox.calls.length).toBeLessThanOrEqual(6);
    await t.clock.advance(2_000);
    expect(new Set(t.outbox.calls.map((c) => `${c.channel}/${c.coalesceKey}`))).toEqual(new Set(['state/current-state']));
    expect(t.outbox.latest.get('state/current-state')).toEqual({ status: 'applied', targetVersion: 99 });
  });

  it('queues at most one report per interval through a stream of changes, the last one the latest state', async () => {
    const t = setupReporter(1_000);
    for (let i = 0; i < 600; i++) {
      t.set({ status: i % 2 ? 'applying' : 'applied', targetVersion: 100 + i });
      await t.clock.advance(100);
    }
    await t.clock.advance(1_000);
    // 600 changes in 60 s: 61 reports at most.
    expect(t.outbox.calls.length).toBeLessThanOrEqual(62);
    expect(t.outbox.calls.length).toBeGreaterThanOrEqual(55);
    expect(t.outbox.latest.get('state/current-state')).toEqual({ status: 'applying', targetVersion: 699 });
  });

  it('leaves null members out and queues nothing when nothing changed', async () => {
    const t = setupReporter(100);
    t.set({ status: 'applied', offlineSince: null } as Json);
    await t.clock.advance(500);
    const before = t.outbox.calls.length;
    t.set({ status: 'applied', offlineSince: null } as Json);
    await t.clock.advance(500);
    expect(t.outbox.calls.length).toBe(before);
    expect(t.outbox.latest.get('state/current-state')).toEqual({ status: 'applied' });
  });
});

/** Stands in for the cloud's PATCH /state (named fake; the real one is in the integration tests). */
class FakeStateEndpoint {
  patches: { reportId: string; state: Json }[] = [];
  fail: CloudError | undefined;
  async request(req: CloudRequest): Promise<{ status: number; headers: Record<string, string>; body: undefined }> {
    const body = req.json as { reportId: string; state: Json };
    expect(req.headers?.['idempotency-key']).toBe(body.reportId);
    if (this.fail) throw this.fail;
    this.patches.push(body);
    return { status: 200, headers: {}, body: undefined };
  }
}

describe('state delivery', () => {
  it('sends the whole state first, then only what changed since the acknowledged report (an empty patch when nothing did)', async () => {
    const clock = new FakeClock();
    const store = openStore(clock);
    const cloud = new FakeStateEndpoint();
    const d = new StateDelivery(cloud, 'dev-1', store);
    await d.send('r1', { status: 'applied', targetVersion: 1, apps: { a: { s: 'running' } } });
    await d.send('r2', { status: 'applied', targetVersion: 2, apps: { a: { s: 'running' } } });
    await d.send('r3', { status: 'applied', targetVersion: 2, apps: { a: { s: 'running' } } });
    expect(cloud.patches).toEqual([
      { reportId: 'r1', state: { status: 'applied', targetVersion: 1, apps: { a: { s: 'running' } } } },
      { reportId: 'r2', state: { targetVersion: 2 } },
      { reportId: 'r3', state: {} },
    ]);
    store.close();
  });

  it('diffs each report against the one before it when several go at once', async () => {
    const clock = new FakeClock();
    const store = openStore(clock);
    const cloud = new FakeStateEndpoint();
    const d = new StateDelivery(cloud, 'dev-1', store);
    await d.send('r0', { x: 1 });
    // Two concurrent sends: x goes 1 → 2 → 1. Diffed against the same base, the second would be empty
    // and the cloud would be left believing x = 2.
    await Promise.all([d.send('r1', { x: 2 }), d.send('r2', { x: 1 })]);
    expect(cloud.patches.map((p) => p.state)).toEqual([{ x: 1 }, { x: 2 }, { x: 1 }]);
    store.close();
  });

  it('after a refusal sends the whole state again; a transient failure changes nothing', async () => {
    const clock = new FakeClock();
    const store = openStore(clock);
    const cloud = new FakeStateEndpoint();
    const d = new StateDelivery(cloud, 'dev-1', store);
    await d.send('r1', { a: 1, b: 1 });
    cloud.fail = new CloudError('network', 'connection refused (ECONNREFUSED)');
    await expect(d.send('r2', { a: 1, b: 2 })).rejects.toThrow('ECONNREFUSED');
    cloud.fail = undefined;
    await d.send('r2', { a: 1, b: 2 });
    expect(cloud.patches.at(-1)?.state).toEqual({ b: 2 });
    cloud.fail = new CloudError('http', 'answered 422', 422);
    await expect(d.send('r3', { a: 2, b: 2 })).rejects.toThrow('422');
    cloud.fail = undefined;
    await d.send('r4', { a: 2, b: 2 });
    expect(cloud.patches.at(-1)?.state).toEqual({ a: 2, b: 2 });
    store.close();
  });
});
