import { join } from 'node:path';
import { expect, it } from 'vitest';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { startMosquitto } from '../helpers/mosquitto.js';
import { observe, outgoingRows, spawnSessionChild, TEST_UUID, until, type ChildEvent } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto and a real agent-side process on 127.0.0.1, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

it('re-sends the messages in flight when the agent was SIGKILLed, after a restart on the same database, without extra copies', async () => {
  const broker = await startMosquitto();
  cleanup(() => broker.dispose());
  let pubacks = 0;
  const proxy = await FaultProxy.start({
    target: broker,
    onFrame: (f) => {
      if (f.direction === 'down' && f.type === 4) pubacks++;
    },
  });
  cleanup(() => proxy.close());
  const cloud = await observe(broker.url, `iot/${TEST_UUID}/events`);
  cleanup(() => cloud.close());
  const dbPath = join(dirs.make(), 'agent.db');
  const topic = `iot/${TEST_UUID}/events`;
  const messages = Array.from({ length: 20 }, (_, i) => {
    const id = `e-${String(i).padStart(2, '0')}`;
    return { id, topic, payload: JSON.stringify({ id, ts: Date.now(), type: 'test' }) };
  });
  const ids = messages.map((m) => m.id);

  const first = spawnSessionChild({ dbPath, url: proxy.url, uuid: TEST_UUID });
  cleanup(() => first.kill());
  await first.waitFor('the first connection', (e) => e.event === 'connected');
  // The birth's PUBACK, so that all 20 messages fit in the broker's Receive Maximum (Mosquitto: 20).
  await until('the birth acknowledged', () => pubacks >= 1);
  // From now on the broker's PUBACKs never reach the agent: every message stays in flight.
  proxy.blackhole('down');
  first.send({ publish: messages });
  await until('every message at the broker', () => ids.every((id) => cloud.ids().includes(id)));
  await until('every message in the in-flight table', () => ids.every((id) => outgoingRows(dbPath).some((r) => r.app_id === id)));
  expect(first.events.filter((e) => e.event === 'outcome')).toEqual([]);
  await first.kill();

  // Restart on the same database, straight to the broker.
  const second = spawnSessionChild({ dbPath, url: broker.url, uuid: TEST_UUID });
  cleanup(() => second.kill());
  const started = await second.waitFor('the restart', (e) => e.event === 'started');
  expect(started.inflight).toBe(20);
  // The outbox re-publishes what it never saw acknowledged: the same ids join the stored messages.
  second.send({ publish: messages });
  const outcomes = (): ChildEvent[] => second.events.filter((e) => e.event === 'outcome');
  await until('an outcome for every message', () => outcomes().length === ids.length);
  expect(outcomes().map((e) => e.outcome)).toEqual(ids.map(() => ({ ok: true })));
  await until('the re-sent copies', () => cloud.ids().length >= 2 * ids.length);
  await until('the in-flight table emptied', () => outgoingRows(dbPath).length === 0);
  // Each id twice: the copy the broker got before the kill, and the one re-sent from the store.
  // Not three times: the re-publish after the restart sent nothing new.
  const copies = new Map<string, number>();
  for (const id of cloud.ids()) copies.set(id, (copies.get(id) ?? 0) + 1);
  expect([...copies.entries()].sort()).toEqual(ids.map((id) => [id, 2]));
  second.send({ stop: true });
  await second.waitFor('a clean stop', (e) => e.event === 'stopped');
});
