import { join } from 'node:path';
import { expect, it } from 'vitest';
import { FaultProxy, type FrameEvent } from '../helpers/fault-proxy.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { observe, testSession, TEST_UUID, until } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto behind a node:net fault proxy on 127.0.0.1, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

const PUBLISH = 3;
const PUBACK = 4;

it('never has more than maxInflight QoS 1 publishes unacknowledged, with the PUBACKs delayed', async () => {
  const broker = await startMosquitto();
  cleanup(() => broker.dispose());
  // Counted on the wire, as the agent sees it: PUBLISH QoS 1 sent, PUBACK received.
  let unacked = 0;
  let maxUnacked = 0;
  const onFrame = (f: FrameEvent): void => {
    if (f.direction === 'up' && f.type === PUBLISH && ((f.flags >> 1) & 3) === 1) maxUnacked = Math.max(maxUnacked, ++unacked);
    if (f.direction === 'down' && f.type === PUBACK) unacked--;
  };
  const proxy = await FaultProxy.start({ target: broker, onFrame });
  cleanup(() => proxy.close());
  const cloud = await observe(broker.url, `iot/${TEST_UUID}/telemetry/#`);
  cleanup(() => cloud.close());

  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: proxy.url, mqtt: { maxInflight: 5 } });
  cleanup(() => s.close());
  s.start();
  await until('connected, birth acknowledged', () => s.session.connected && s.session.stats().inflight === 0);
  proxy.delay(100, 'down');

  let maxInflight = 0;
  let maxQueued = 0;
  const sampler = setInterval(() => {
    const st = s.session.stats();
    maxInflight = Math.max(maxInflight, st.inflight);
    maxQueued = Math.max(maxQueued, st.queued);
  }, 5);
  cleanup(() => clearInterval(sampler));
  const ids = Array.from({ length: 40 }, (_, i) => `t-${String(i).padStart(2, '0')}`);
  const started = Date.now();
  const outcomes = await Promise.all(
    ids.map((id) => s.session.publish({ topic: `iot/${TEST_UUID}/telemetry/temp`, payload: JSON.stringify({ id }), id })),
  );
  const elapsed = Date.now() - started;
  clearInterval(sampler);

  expect(outcomes.every((o) => o.ok)).toBe(true);
  expect(maxUnacked).toBe(5); // the window was used, and never exceeded
  expect(maxInflight).toBeLessThanOrEqual(5);
  expect(maxQueued).toBeGreaterThan(0); // the other callers waited for a slot
  // 40 messages through a window of 5 with 100 ms PUBACKs: at least 8 round trips.
  expect(elapsed).toBeGreaterThanOrEqual(700);
  await until('every message at the subscriber', () => new Set(cloud.ids()).size === ids.length);
});

it("keeps to the broker's Receive Maximum (MQTT 5 CONNACK) when it is below maxInflight", async () => {
  const broker = await startMosquitto(); // announces Receive Maximum 20
  cleanup(() => broker.dispose());
  let unacked = 0;
  let maxUnacked = 0;
  const proxy = await FaultProxy.start({
    target: broker,
    onFrame: (f) => {
      if (f.direction === 'up' && f.type === PUBLISH && ((f.flags >> 1) & 3) === 1) maxUnacked = Math.max(maxUnacked, ++unacked);
      if (f.direction === 'down' && f.type === PUBACK) unacked--;
    },
  });
  cleanup(() => proxy.close());
  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: proxy.url, mqtt: { maxInflight: 100 } });
  cleanup(() => s.close());
  s.start();
  await until('connected, birth acknowledged', () => s.session.connected && s.session.stats().inflight === 0);
  proxy.delay(50, 'down');
  const outcomes = await Promise.all(
    Array.from({ length: 100 }, (_, i) => s.session.publish({ topic: `iot/${TEST_UUID}/metrics`, payload: JSON.stringify({ id: `m-${i}` }), id: `m-${i}` })),
  );
  expect(outcomes.every((o) => o.ok)).toBe(true);
  expect(maxUnacked).toBe(20);
  expect(s.session.stats().connectionFailures).toBe(0);
});
