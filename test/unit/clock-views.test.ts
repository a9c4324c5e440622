import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/api/metrics.js';
import { ClockSync, TIMESYNCD_DIR, TIMESYNCD_FLAG } from '../../src/resilience/clock-sync.js';
import { renderStatus } from '../../src/status-view.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

/** clockSynced where people look: Prometheus (`iotistic_clock_synced`) and the status table. A real ClockSync on fake OS answers. */

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
