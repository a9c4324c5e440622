import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/api/metrics.js';

/** The exposition of an agent without a cloud, MQTT, services or logs: still promtool-clean, every built-in outbox channel at 0. */
function bareSource() {
  return {
    connection: () => ({ status: 'online', channels: {}, outages: [] }),
    targetVersion: () => null,
    queue: () => ({ channels: {} }),
    ledger: () => ({ balanced: true, channels: {} }),
    mqtt: () => null,
    loops: () => [],
    degraded: () => false,
    clockSynced: () => true,
    logs: () => null,
    services: () => ({}),
  };
}

describe('/metrics of a bare agent', () => {
  it('passes promtool check metrics, with the outbox series of every built-in channel from the start', async () => {
    const text = await createMetrics(bareSource()).metrics();
    const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(r.error, 'promtool (the prometheus package: scripts/test-services.mjs installs it)').toBeUndefined();
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    for (const channel of ['events', 'jobs', 'state', 'shadow', 'health', 'telemetry', 'logs', 'metrics']) {
      expect(text).toContain(`\niotistic_queue_depth{channel="${channel}"} 0\n`);
      expect(text).toContain(`\niotistic_queue_accepted_total{channel="${channel}"} 0\n`);
      expect(text).toContain(`\niotistic_queue_drops_total{channel="${channel}",reason="disk"} 0\n`);
    }
    // What is not there is not shown as 0: no MQTT session, no service, no version.
    expect(text).not.toMatch(/^iotistic_(mqtt_publishes_total|service_up|agent_info)[ {]/m);
  });
});
