import { expect, it } from 'vitest';
import { spawnAgent, waitFor } from '../helpers/agent-process.js';
import type { StoredMessage } from '../../devcloud/store.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// Issue 14, part 2, on the built agent: after an outage the devcloud first stores the newest
// telemetry of each stream, then the history, marked backfill; nothing is missing.
const env = agentsWithDevCloud();
const { dirs, agents } = env;


it('after an outage the devcloud gets the newest reading of each stream first, then the history marked backfill, every reading once', async () => {
  const dev = { uuid: `fresh-${process.pid}`, apiKey: 'fresh-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      // One batch in flight: the devcloud stores in the order sent (with two, the second may be stored
      // before the first, which this test would read as history before the newest).
      settings: { pollIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, flushBatchMessages: 20, flushMaxInflight: 1 } },
    },
  });
  agents.push(agent);
  await waitFor('online', async () => ((await agent.get('/v2/connection')).body as { status: string }).status === 'online');

  await env.cloud.admin.setFaults({ refuse: true });
  const streams = ['temp', 'flow', 'vibration'];
  const ids = new Map<string, string>(); // id -> "stream/i"
  for (let i = 0; i < 12; i++) {
    const res = await fetch(`${agent.apiUrl}/v2/telemetry`, {
      method: 'POST',
      headers: { authorization: `Bearer ${agent.key}`, 'content-type': 'application/json' },
      body: JSON.stringify(streams.map((stream) => ({ stream, payload: { i } }))),
    });
    expect(res.status).toBe(202);
    ((await res.json()) as { ids: string[] }).ids.forEach((id, k) => ids.set(id, `${streams[k] as string}/${i}`));
  }
  await waitFor('a refused delivery', async () => ((await agent.get('/v2/connection')).body as { status: string }).status !== 'online', 20_000);
  expect(env.storedMessages(dev.uuid).filter((m) => m.channel === 'telemetry')).toEqual([]);

  await env.cloud.admin.clearFaults();
  await waitFor('every reading at the devcloud', () => env.storedMessages(dev.uuid).filter((m) => m.channel === 'telemetry').length >= ids.size, 40_000, 250);
  const telemetry = env.storedMessages(dev.uuid).filter((m) => m.channel === 'telemetry');
  expect(new Set(telemetry.map((m) => m.id))).toEqual(new Set(ids.keys()));
  const reading = (m: StoredMessage): string => `${ids.get(m.id) as string}${m.backfill ? ' backfill' : ''}`;
  // The newest of each stream first, then the history oldest first, each marked.
  expect(telemetry.slice(0, 3).map(reading)).toEqual(['temp/11', 'flow/11', 'vibration/11']);
  const history = telemetry.slice(3).map(reading);
  expect(history).toEqual(Array.from({ length: 11 }, (_, i) => streams.map((s) => `${s}/${i} backfill`)).flat());
});
