import { join } from 'node:path';
import { expect, it } from 'vitest';
import type { DisconnectedEvent } from '../../src/mqtt/session.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { observe, testSession, TEST_UUID, until } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto behind a node:net fault proxy on 127.0.0.1, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

const KEEP_ALIVE_S = 5;
const LIMIT_MS = 1.5 * KEEP_ALIVE_S * 1000;

it('tears down a half-open connection within 1.5 x keep-alive and re-establishes it; a publish made meanwhile is delivered', async () => {
  const broker = await startMosquitto();
  cleanup(() => broker.dispose());
  const proxy = await FaultProxy.start({ target: broker });
  cleanup(() => proxy.close());
  const cloud = await observe(broker.url, `iot/${TEST_UUID}/events`);
  cleanup(() => cloud.close());

  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: proxy.url, mqtt: { keepAliveSeconds: KEEP_ALIVE_S } });
  cleanup(() => s.close());
  s.start();
  await until('connected and subscribed', () => s.session.stats().subscribed && s.session.stats().inflight === 0);

  // The link dies silently: nothing passes either way, and nothing is closed.
  const lost = new Promise<DisconnectedEvent & { detectedAt: number }>((resolve) =>
    s.session.once('disconnected', (e) => resolve({ ...e, detectedAt: Date.now() })),
  );
  const cutAt = Date.now();
  proxy.blackhole('both');
  const outcome = s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: JSON.stringify({ id: 'during' }), id: 'during' });

  const event = await lost;
  const detectedAfter = event.detectedAt - cutAt;
  // Detection is at most 1.5 x keep-alive after the last packet from the broker, which came before the cut.
  expect(detectedAfter).toBeLessThanOrEqual(LIMIT_MS + 250);
  expect(event.connectedForMs).toBeLessThanOrEqual(LIMIT_MS + 1_000);
  expect(event.error).toMatch(/half-open|keep-alive/);
  expect(s.monitor.health().channels.mqtt?.failures.ping).toBe(1);

  // A new connection through the same proxy works (the old one stays half-open, as after a NAT reboot).
  await until('reconnected', () => s.session.connected, 5_000);
  expect(Date.now() - cutAt).toBeLessThan(LIMIT_MS + 2_000); // detection plus at most one backoff step
  expect(await outcome).toEqual({ ok: true });
  await until('the message sent during the outage', () => cloud.ids().includes('during'));
  await until('the new birth acknowledged', () => s.session.stats().inflight === 0);
  expect(s.session.stats().reconnects).toBe(1);
  expect(proxy.accepted).toBe(2);
});
