import { describe, expect, it } from 'vitest';
import { EventLog, watchServiceTransitions } from '../../src/assembly/events.js';
import { FlusherRouter } from '../../src/assembly/flusher-router.js';
import type { EnqueueMessage } from '../../src/outbox/types.js';
import { SHADOW_QUEUED_KEY, ShadowReportQueue } from '../../src/shadow/report-queue.js';
import type { ShadowDocument } from '../../src/shadow/shadow.js';
import type { StoredTarget } from '../../src/store/store.js';
import { TelemetryIngest } from '../../src/telemetry/ingest.js';
import { jobsView, queueView, stateView } from '../../src/views/api-views.js';
import { LocalTarget } from '../../src/workloads/local-target.js';
import type { TargetState } from '../../src/workloads/target-schema.js';
import { silentLogger } from '../helpers/logger.js';

const POLICY = { allowHostMounts: false, allowPrivileged: false, allowHostNetwork: false, allowDevices: false };

/** A flusher that records what woke it. */
function wakeable(name: string, log: string[]) {
  return { kick: () => log.push(`${name}:kick`), channelOnline: () => log.push(`${name}:online`) };
}

/** An outbox that keeps what it is given; `refuse` makes every enqueue fail. */
function recordingOutbox(refuse?: Error) {
  const sent: EnqueueMessage[] = [];
  const enqueue = (m: EnqueueMessage) => (refuse ? Promise.reject(refuse) : (sent.push(m), Promise.resolve({ id: `id-${sent.length}`, duplicate: false })));
  return { sent, enqueue, enqueueMany: (ms: readonly EnqueueMessage[]) => Promise.all(ms.map(enqueue)) };
}

function kvMap() {
  const m = new Map<string, unknown>();
  return { m, getKv: <T>(k: string) => m.get(k) as T | undefined, setKv: (k: string, v: unknown) => void m.set(k, v) };
}

describe('FlusherRouter', () => {
  it('kicks every flusher on a commit and only the channel’s flushers when it comes back online', () => {
    const log: string[] = [];
    const router = new FlusherRouter<ReturnType<typeof wakeable>>();
    const mqtt = router.add('mqtt', wakeable('mqtt', log));
    router.add('api', wakeable('http', log));
    expect(router.all[0]).toBe(mqtt);
    router.committed();
    expect(log).toEqual(['mqtt:kick', 'http:kick']);
    log.length = 0;
    router.channelOnline('api');
    router.channelOnline('mqtt');
    router.channelOnline('jobs'); // not a sink's channel: nobody is woken
    expect(log).toEqual(['http:online', 'mqtt:online']);
  });
});

describe('TelemetryIngest', () => {
  it('queues each item on the telemetry channel in its stream, and refuses with the disk full', async () => {
    const outbox = recordingOutbox();
    await new TelemetryIngest({ outbox }).ingest([{ stream: 's', payload: 1 }]);
    expect(outbox.sent).toEqual([{ channel: 'telemetry', stream: 's', payload: { stream: 's', payload: 1 } }]);
    await expect(new TelemetryIngest({ outbox, diskRefusal: () => 'the disk is full' }).ingest([])).rejects.toMatchObject({ code: 'OUTBOX_DISK_FULL', message: 'the disk is full' });
  });
});

describe('LocalTarget', () => {
  function setup(held?: StoredTarget) {
    let stored = held;
    const calls: string[] = [];
    const targets: (TargetState | undefined)[] = [];
    const local = new LocalTarget({
      store: { getTarget: () => stored, setTarget: (t) => void (stored = { ...t, receivedAt: 1 }), clearTarget: () => void (stored = undefined) },
      targets: { set: (t) => void targets.push(t) },
      policy: POLICY,
      logger: silentLogger(),
      onSet: () => calls.push('set'),
      onCleared: () => calls.push('cleared'),
    });
    return { local, calls, targets, stored: () => stored };
  }

  it('stores and applies a valid target, refuses an invalid one untouched, and clears only local mode', () => {
    const t = setup();
    expect(t.local.set({ version: -1, apps: {} }).ok).toBe(false);
    expect(t.calls).toEqual([]);
    expect(t.local.clear()).toBe(false);
    expect(t.local.set({ version: 3, apps: {} }).ok).toBe(true);
    expect(t.stored()).toMatchObject({ source: 'local', version: 3, etag: null });
    expect(t.targets.map((x) => x?.version)).toEqual([3]);
    expect(t.local.clear()).toBe(true);
    expect(t.stored()).toBeUndefined();
    expect(t.calls).toEqual(['set', 'cleared']);
  });
});

describe('ShadowReportQueue', () => {
  const doc = (reportedVersion: number) => ({ reportedVersion, reported: { v: reportedVersion } }) as unknown as ShadowDocument;

  it('queues the reported state coalesced, marks the version on disk, and requeues one the last run missed', async () => {
    const outbox = recordingOutbox();
    const kv = kvMap();
    const q = new ShadowReportQueue({ outbox, kv, logger: silentLogger() });
    q.queue(doc(2));
    await Promise.resolve();
    await Promise.resolve();
    expect(outbox.sent).toEqual([{ channel: 'shadow', coalesceKey: 'reported', payload: { version: 2, state: { v: 2 } } }]);
    expect(kv.m.get(SHADOW_QUEUED_KEY)).toBe(2);
    q.requeueUnsent({ get: () => doc(2) });
    expect(outbox.sent).toHaveLength(1);
    q.requeueUnsent({ get: () => doc(3) });
    expect(outbox.sent).toHaveLength(2);
  });

  it('only logs a refused enqueue, and does not mark its version queued', async () => {
    const kv = kvMap();
    new ShadowReportQueue({ outbox: recordingOutbox(new Error('full')), kv, logger: silentLogger() }).queue(doc(1));
    await new Promise((r) => setImmediate(r));
    expect(kv.m.has(SHADOW_QUEUED_KEY)).toBe(false);
  });
});

describe('events', () => {
  it('records a service that goes from running to backoff and a failed apply, once each', async () => {
    const outbox = recordingOutbox();
    const events = new EventLog({ outbox, logger: silentLogger() });
    let listener: ((s: never) => void) | undefined;
    watchServiceTransitions({ on: ((_e: string, l: (s: never) => void) => void (listener = l)) as never }, events);
    const state = (status: string, svc: string) => ({ status, targetVersion: 4, apps: { a: { services: { s: { status: svc, restarts: 2, lastError: 'x' } } } } }) as never;
    listener?.(state('applied', 'running'));
    listener?.(state('failed', 'backoff'));
    listener?.(state('failed', 'backoff'));
    // A health check that fails (issue #18) is a transition worth an event too.
    listener?.(state('applied', 'running'));
    listener?.(state('failed', 'unhealthy'));
    await Promise.resolve();
    expect(outbox.sent.map((m) => m.payload)).toEqual([
      { type: 'apply-failed', targetVersion: 4 },
      { type: 'service-status', app: 'a', service: 's', from: 'running', to: 'backoff', restarts: 2, lastError: 'x' },
      { type: 'apply-failed', targetVersion: 4 },
      { type: 'service-status', app: 'a', service: 's', from: 'running', to: 'unhealthy', restarts: 2, lastError: 'x' },
    ]);
  });
});

describe('API views', () => {
  it('keep the fields of /v2/queue, /v2/jobs and /v2/state in their order', () => {
    const share = { stats: () => ({ enabled: true, pauses: 3, pausedMs: 12, paused: false }) };
    const ledger = { balanced: true, channels: {} };
    const q = queueView({ outbox: { stats: () => ({ depth: 1 }) as never, parked: () => [], ledger: () => ledger }, disk: undefined, flushers: [{ stats: () => ({ sink: 'http' }) as never }], share });
    expect(Object.keys(q as object)).toEqual(['depth', 'ledger', 'dataDisk', 'flushers', 'ingestShare', 'parkedMessages']);
    expect((q as { ledger: unknown }).ledger).toBe(ledger);
    expect((q as { ingestShare: unknown }).ingestShare).toEqual({ enabled: true, pauses: 3, pausedMs: 12, paused: false });
    const off = jobsView({ config: { features: { jobs: true }, jobs: {} } as never, runner: undefined, poller: undefined });
    expect(off).toEqual({ enabled: false, reason: 'there is no cloud.apiUrl to take jobs from', types: [], running: null, counts: null, recent: [] });
    const target: StoredTarget = { etag: null, version: 1, document: {}, source: 'cloud', receivedAt: 1 };
    const s = stateView({
      status: { configStatus: () => ({ source: 'file' }) as never, currentState: () => ({}) },
      store: { getTarget: () => target, databaseHealth: () => ({}) as never },
      poller: undefined,
      reporter: undefined,
      hasCloud: false,
    }) as Record<string, unknown>;
    expect(Object.keys(s)).toEqual(['config', 'target', 'lastRejection', 'lastPollAt', 'lastPollError', 'lastReportError', 'current', 'mode', 'database', 'registration', 'lifecycle', 'missingImages']);
    expect(s.mode).toBe('local');
  });
});
