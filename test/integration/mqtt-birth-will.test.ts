import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startMosquitto } from '../helpers/mosquitto.js';
import { mosquittoSub, spawnSessionChild, testSession, TEST_UUID, until } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto on 127.0.0.1 watched by Debian's mosquitto_sub, no mocks.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

const STATUS = `iot/${TEST_UUID}/status`;

/** The `{ state, ts }` documents printed for the status topic, in order. */
function states(lines: string[]): Array<{ state: string; ts: number }> {
  return lines.filter((l) => l.startsWith(`${STATUS} `)).map((l) => JSON.parse(l.slice(STATUS.length + 1)) as { state: string; ts: number });
}

describe('birth and last will on iot/{uuid}/status', () => {
  it('announces online (retained) on connect; the broker publishes the offline will when the agent is killed', async () => {
    const broker = await startMosquitto();
    cleanup(() => broker.dispose());
    const sub = await mosquittoSub(broker.host, broker.port, STATUS);
    cleanup(() => sub.stop());
    const child = spawnSessionChild({ dbPath: join(dirs.make(), 'agent.db'), url: broker.url, uuid: TEST_UUID });
    cleanup(() => child.kill());

    await until('the birth', () => states(sub.lines).length === 1, 15_000);
    const before = Date.now();
    expect(states(sub.lines)[0]).toMatchObject({ state: 'online' });
    await child.kill();
    await until('the last will', () => states(sub.lines).length === 2);
    const will = states(sub.lines)[1]!;
    expect(will.state).toBe('offline');
    expect(will.ts).toBeLessThanOrEqual(before); // stamped when the connection was made

    // Retained: a subscriber arriving now is told the device is offline.
    const late = await mosquittoSub(broker.host, broker.port, STATUS);
    cleanup(() => late.stop());
    await until('the retained status', () => states(late.lines).length === 1);
    expect(states(late.lines)[0]).toMatchObject({ state: 'offline' });
  });

  for (const protocolVersion of [5, 4] as const) {
    it(`a graceful stop also leaves the status offline (MQTT ${protocolVersion === 5 ? '5: DISCONNECT with will, 0x04' : '3.1.1: close without DISCONNECT'})`, async () => {
      const broker = await startMosquitto();
      cleanup(() => broker.dispose());
      const sub = await mosquittoSub(broker.host, broker.port, STATUS);
      cleanup(() => sub.stop());
      const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url: broker.url, mqtt: { protocolVersion } });
      s.start();
      await until('the birth', () => states(sub.lines).length === 1);
      await s.close();
      await until('offline', () => states(sub.lines).length === 2);
      expect(states(sub.lines).map((x) => x.state)).toEqual(['online', 'offline']);
    });
  }
});
