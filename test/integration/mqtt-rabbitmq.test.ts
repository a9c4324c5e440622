import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startRabbitMq, type PrivateBroker } from '../helpers/brokers.js';
import { tempDirs } from '../helpers/tmp.js';

/** Fault 9 of issue #21 against RabbitMQ 3.10's MQTT plugin, which closes the connection on an MQTT 5 CONNECT. */

const dirs = tempDirs();
let rabbit: PrivateBroker;
let agent: AgentProcess | undefined;

beforeAll(async () => {
  requireBuilt();
  rabbit = await startRabbitMq({ user: { name: 'rabbit-device-1', password: 'rabbit-key-0123456789' } });
}, 90_000);
afterAll(async () => {
  await agent?.stop('SIGKILL');
  await rabbit?.dispose();
  dirs.cleanup();
});

describe('MQTT protocol negotiation with RabbitMQ (fault 9)', () => {
  it('connects with 3.1.1 after the broker closed two MQTT 5 attempts, and says so', async () => {
    agent = await spawnAgent({
      dataDir: dirs.make(),
      config: {
        device: { uuid: 'rabbit-device-1', apiKey: 'rabbit-key-0123456789' },
        mqtt: { url: rabbit.url, connectTimeoutMs: 3_000 },
        features: { metrics: false },
        settings: { offline: { minBackoffSeconds: 0.5, maxBackoffSeconds: 10 } },
      },
    });
    const a = agent;
    const view = await waitFor('connected to RabbitMQ', async () => {
      const c = (await a.get('/v2/connection')).body as { mqtt: { connected: boolean; protocol: { version: number; negotiated: boolean } } | null };
      return c.mqtt?.connected ? c : undefined;
    }, 30_000, 200).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${JSON.stringify(a.records().filter((r) => r.part === 'mqtt').slice(-8))}`);
    });
    expect(view.mqtt?.protocol).toEqual({ setting: 'auto', version: 4, negotiated: true });
    expect(a.records().some((r) => String(r.msg).includes('closed the connection before answering to an MQTT 5 CONNECT'))).toBe(true);
    expect(a.records().find((r) => String(r.msg).includes('speaks MQTT 3.1.1'))?.level).toBe(40);
  }, 60_000);
});
