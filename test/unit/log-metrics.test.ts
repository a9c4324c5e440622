import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/api/metrics.js';
import { defaultConfig } from '../../src/config/schema.js';
import { LogCollector } from '../../src/logs/collector.js';
import { LogStore } from '../../src/logs/log-store.js';
import { Outbox } from '../../src/outbox/outbox.js';
import { IdGenerator } from '../../src/util/ids.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';

/** iotistic_logs_* (docs/api.md, "Metrics"), read from a real LogCollector over a real outbox at scrape time. */

const dirs = tempDirs();
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  dirs.cleanup();
});

function source(logs: () => ReturnType<LogCollector['serviceStats']> | null) {
  return {
    connection: () => ({ status: 'online', channels: {}, outages: [] }),
    targetVersion: () => null,
    queue: () => ({ channels: {} }),
    mqtt: () => null,
    loops: () => [],
    degraded: () => false,
    clockSynced: () => true,
    logs,
  };
}

describe('log metrics', () => {
  it('count the lines stored and dropped per service and reason, and the backlog', async () => {
    const clock = new FakeClock();
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
    closers.push(() => store.close());
    const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 1000, maxBytes: 1 << 24 } });
    closers.push(() => outbox.close());
    const config = { ...defaultConfig().logs, linesPerSecond: 5, burstSeconds: 1 };
    const collector = new LogCollector({ config, outbox, store: new LogStore(store.db, 100), clock, logger: silentLogger() });
    const registry = createMetrics(source(() => collector.serviceStats()));

    const web = collector.logOf('edge/web')!;
    for (let i = 0; i < 8; i++) web.push({ stream: 'stdout', ts: clock.now(), text: `line ${i}` });
    expect(await registry.metrics()).toContain('\niotistic_logs_backlog_bytes{service="edge/web"} ');
    await web.flush();
    const text = await registry.metrics();
    // 5 lines within the burst, and the marker that counts the 3 dropped.
    expect(text).toContain('\niotistic_logs_lines_total{service="edge/web"} 6\n');
    expect(text).toContain('\niotistic_logs_dropped_total{service="edge/web",reason="lines-rate"} 3\n');
    expect(text).toContain('\niotistic_logs_backlog_bytes{service="edge/web"} 0\n');
    expect(text).toContain('# TYPE iotistic_logs_lines_total counter');
    expect(text).toContain('# TYPE iotistic_logs_backlog_bytes gauge');
    // Every sample as the text format has it: name{label="value",...} number.
    const samples = text.split('\n').filter((l) => l.startsWith('iotistic_logs_'));
    expect(samples).toHaveLength(3);
    for (const l of samples) expect(l).toMatch(/^iotistic_logs_[a-z_]+\{([a-z]+="[^"\\\n]*",?)+\} \d+$/);
    await collector.close();
  });

  it('are empty, and in the exposition format, when logs are not collected', async () => {
    const text = await createMetrics(source(() => null)).metrics();
    const logs = text.split('\n').filter((l) => l.includes('iotistic_logs_'));
    expect(logs.filter((l) => !l.startsWith('#'))).toEqual([]);
    expect(logs.filter((l) => l.startsWith('# HELP'))).toHaveLength(3);
  });
});
