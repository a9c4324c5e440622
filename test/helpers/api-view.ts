import { Registry } from 'prom-client';
import type { ApiView } from '../../src/api/server.js';
import { LogEvents } from '../../src/logs/collector.js';
import { systemClock } from '../../src/util/clock.js';

/**
 * A fake agent behind the local API, for tests that start `startApi` in-process: healthy, no cloud,
 * an empty queue, no shadow. Each test overrides what it looks at.
 */
export function fakeApiView(over: Partial<ApiView> = {}): ApiView {
  return {
    version: '9.9.9',
    uuid: 'dev-1',
    hasCloud: false,
    clock: systemClock,
    loops: () => [],
    healthy: () => true,
    connection: () => ({ status: 'online' }),
    state: () => ({ target: null }),
    config: () => ({ source: 'file' }),
    pollNow: () => true,
    setLocalTarget: () => ({ ok: false, issues: [], message: 'not in this test' }),
    clearLocalTarget: () => false,
    ingest: async (items) => items.map((_, i) => ({ id: `id-${i}` })),
    queue: () => ({ depth: 0 }),
    retryParked: () => 0,
    purgeParked: () => 0,
    jobs: () => ({ enabled: false }),
    localBroker: () => ({ enabled: false }),
    logs: () => ({ tail: { read: () => [], services: () => [] }, events: new LogEvents(), serviceStats: () => ({}), clock: systemClock }),
    secrets: { list: () => ({ cloudVersion: null, secrets: [], missing: [] }), set: () => undefined, remove: () => false },
    metrics: new Registry(),
    ...over,
  };
}
