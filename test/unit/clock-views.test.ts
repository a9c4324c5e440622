import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/api/metrics.js';
import { Outbox } from '../../src/outbox/outbox.js';
import { ClockSync, TIMESYNCD_DIR, TIMESYNCD_FLAG } from '../../src/resilience/clock-sync.js';
import { ConnectionMonitor } from '../../src/resilience/connection-monitor.js';
import { DegradationController } from '../../src/resilience/degradation.js';
import { SqliteOutageLog } from '../../src/resilience/outage-log.js';
import { renderStatus } from '../../src/status-view.js';
import { IdGenerator } from '../../src/util/ids.js';
import { AgentStatus } from '../../src/views/agent-status.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';

/** clockSynced where people look: `GET /v2/connection`, Prometheus (`iotistic_clock_synced`) and the status table. A real ClockSync on fake OS answers. */

function clockSync() {
  const files = new Set<string>([TIMESYNCD_DIR]);
  const sync = new ClockSync({ clock: new FakeClock(), logger: silentLogger(), notBefore: Date.UTC(2025, 0, 1), exists: (p) => files.has(p) });
  return { sync, files };
}

describe('clockSynced shown', () => {
  it('as the iotistic_clock_synced gauge, read at scrape time', async () => {
    const { sync, files } = clockSync();
    const registry = createMetrics({
      connection: () => ({ status: 'online', channels: {}, outages: [] }),
      targetVersion: () => null,
      queue: () => ({ channels: {} }),
      mqtt: () => null,
      loops: () => [],
      degraded: () => false,
      clockSynced: () => sync.synced,
    });
    await sync.check();
    expect(await registry.metrics()).toMatch(/\niotistic_clock_synced 0\n/);
    files.add(TIMESYNCD_FLAG);
    await sync.check();
    expect(await registry.metrics()).toMatch(/\niotistic_clock_synced 1\n/);
  });

  it('in the status table, with why', async () => {
    const { sync } = clockSync();
    await sync.check();
    const connection = { status: 'online', uptime: 1_000, offlineSince: null, lastPollSuccess: 0, lastReportSuccess: 0, pollFailures: 0, reportFailures: 0, channels: {}, outages: [], clock: sync.state };
    const out = renderStatus({ device: { uuid: 'd', version: '1' }, connection, state: { mode: 'cloud', target: null, lastRejection: null, lastPollError: null }, loops: [] });
    expect(out).toMatch(/clock\s+NOT synced \(systemd-timesyncd runs and has not synchronised the clock yet/);
  });
});

describe('clockSynced in GET /v2/connection', () => {
  it('is in the connection view, with its source and why', async () => {
    const dirs = tempDirs();
    const clock = new FakeClock();
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    try {
      const monitor = new ConnectionMonitor({ clock, offlineAfterFailures: 3, outageLog: new SqliteOutageLog(store), channels: ['api'], logger: silentLogger() });
      const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 10, maxBytes: 1 << 20 } });
      const degradation = new DegradationController({ status: monitor, clock, random: () => 0.5, logger: silentLogger(), enabled: false, thresholdMs: 60_000 });
      const { sync, files } = clockSync();
      const status = new AgentStatus({
        version: '1',
        configSource: { source: 'file', file: null },
        clock,
        monitor,
        reconciler: { currentState: () => ({ status: 'applied', targetVersion: null, apps: {} }) }, // not read by connectionHealth
        outbox,
        degradation,
        mqtt: undefined,
        clockSync: sync,
      });
      expect(status.connectionHealth()).toMatchObject({ clockSynced: false, clock: { synced: false, source: 'pending' } });
      files.add(TIMESYNCD_FLAG);
      await sync.check();
      expect(status.connectionHealth()).toMatchObject({ clockSynced: true, clock: { synced: true, source: 'timesyncd', since: clock.now() } });
      await outbox.close();
    } finally {
      store.close();
      dirs.cleanup();
    }
  });
});
