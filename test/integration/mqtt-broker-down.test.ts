import { join } from 'node:path';
import { expect, it } from 'vitest';
import { startMosquitto } from '../helpers/mosquitto.js';
import { observe, testSession, TEST_UUID, until } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto on 127.0.0.1, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

it('accepts publishes while the broker is down and delivers every one once it is up', async () => {
  const broker = await startMosquitto({ persistence: true });
  cleanup(() => broker.dispose());
  // The cloud side's subscriber has a persistent session, saved with the broker's state, so it gets
  // what arrives while it is away.
  const cloudOptions = { clientId: 'cloud-consumer', clean: false } as const;
  const first = await observe(broker.url, `iot/${TEST_UUID}/telemetry/#`, cloudOptions);
  await first.close();
  await broker.stop();

  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: broker.url });
  cleanup(() => s.close());
  s.start();
  const ids = Array.from({ length: 50 }, (_, i) => `m-${String(i).padStart(3, '0')}`);
  const outcomes = ids.map((id) =>
    s.session.publish({ topic: `iot/${TEST_UUID}/telemetry/temp`, payload: JSON.stringify({ id, ts: Date.now(), payload: 21.5 }), id }),
  );
  // The broker is down: attempts fail (and are counted), the messages wait.
  await until('two failed connection attempts', () => (s.monitor.health().channels.mqtt?.failures.connect ?? 0) >= 2);
  expect(s.session.stats()).toMatchObject({ connected: false, queued: 50, inflight: 0 });
  expect(s.session.stats().lastError).toContain('ECONNREFUSED');

  await broker.start();
  const results = await Promise.all(outcomes);
  expect(results.every((r) => r.ok)).toBe(true);
  const cloud = await observe(broker.url, `iot/${TEST_UUID}/telemetry/#`, cloudOptions);
  cleanup(() => cloud.close());
  await until('every message at the subscriber', () => new Set(cloud.ids()).size === ids.length);
  expect([...new Set(cloud.ids())].sort()).toEqual(ids);
  expect(s.monitor.channelStatus('mqtt')).toBe('online');
});
