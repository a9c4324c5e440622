import { join } from 'node:path';
import { expect, it } from 'vitest';
import { startMosquitto } from '../helpers/mosquitto.js';
import { observe, testSession, TEST_UUID, until } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto on 127.0.0.1, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

it('delivers every id when the broker is SIGKILLed and restarted mid-stream; duplicates only with the same id', async () => {
  const broker = await startMosquitto({ persistence: true });
  cleanup(() => broker.dispose());
  const cloud = await observe(broker.url, `iot/${TEST_UUID}/telemetry/#`, { clientId: 'cloud-consumer', clean: false });
  cleanup(() => cloud.close());

  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: broker.url, mqtt: { maxInflight: 20 } });
  cleanup(() => s.close());
  s.start();
  const ids = Array.from({ length: 400 }, (_, i) => `m-${String(i).padStart(4, '0')}`);
  const acked = new Set<string>();
  const outcomes = ids.map((id) =>
    s.session.publish({ topic: `iot/${TEST_UUID}/telemetry/temp`, payload: JSON.stringify({ id, ts: Date.now(), payload: 1 }), id }).then((r) => {
      if (r.ok) acked.add(id);
      return r;
    }),
  );

  await until('a quarter acknowledged', () => s.session.stats().acknowledged >= 100);
  await broker.kill();
  await until('the session to see the broker gone', () => !s.session.connected);
  const atKill = s.session.stats();
  // What the broker acknowledged before it died is its to keep; the agent's duty is the rest.
  const ackedBeforeKill = new Set(acked);
  await broker.start();

  const results = await Promise.all(outcomes);
  expect(results.filter((r) => !r.ok)).toEqual([]);
  const missing = () => {
    const seen = new Set(cloud.ids());
    return ids.filter((id) => !seen.has(id));
  };
  await until('every id not acknowledged at the kill at the subscriber', () => missing().every((id) => ackedBeforeKill.has(id)), 20_000).catch((e: Error) => {
    const m = missing().filter((id) => !ackedBeforeKill.has(id));
    throw new Error(`${e.message}: ${m.length} missing (${m.slice(0, 20).join(', ')}); at the kill: acknowledged ${atKill.acknowledged}, inflight ${atKill.inflight}; subscriber saw ${cloud.received.length} copies`);
  });
  // Mosquitto saves its persistence file after it acknowledges, so a SIGKILL can lose a publish it had
  // just acknowledged and not yet passed on (documented: it persists periodically, here after each change).
  // Such a loss is the broker's, and small: never more than one in-flight window.
  expect(missing().length).toBeLessThanOrEqual(20);
  const received = cloud.ids();
  expect(new Set(received).size + missing().length).toBe(ids.length);
  // Every copy carries one of the ids (nothing else arrives), and the extra copies are bounded: the
  // session re-sends at most what it had in flight at the kill, and the restarted broker re-sends to
  // the subscriber at most what it had in flight to it (Mosquitto's max_inflight_messages, 20).
  expect(received.length).toBe(cloud.received.length);
  expect(received.length - new Set(received).size).toBeLessThanOrEqual(atKill.inflight + 20);
  expect(s.session.stats()).toMatchObject({ connected: true, inflight: 0, queued: 0, reconnects: 1 });
});
