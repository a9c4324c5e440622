import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startNats, type PrivateBroker } from '../helpers/brokers.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Fault 9 of issue #21: a broker that speaks only MQTT 3.1.1 (NATS 2.9 answers an MQTT 5 CONNECT
 * with return code 1) is reached by negotiation, remembered across a restart, and said; refused
 * credentials are an error with a hint, retried at the backoff's cap. RabbitMQ: mqtt-rabbitmq.test.ts.
 */

const dirs = tempDirs();
const agents: AgentProcess[] = [];
const proxies: FaultProxy[] = [];
let nats: PrivateBroker;
let mosquitto: Mosquitto;

beforeAll(async () => {
  requireBuilt();
  [nats, mosquitto] = await Promise.all([startNats(), startMosquitto({ users: { 'auth-device': 'the-right-password' } })]);
});
afterAll(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  for (const p of proxies.splice(0)) await p.close();
  await nats?.dispose();
  await mosquitto?.dispose();
  dirs.cleanup();
});

/** A proxy in front of the broker that counts CONNECT packets (type 1) and when they were sent. */
async function counted(target: { host: string; port: number }): Promise<{ url: string; connects: number[] }> {
  const connects: number[] = [];
  const proxy = await FaultProxy.start({ target, onFrame: (f) => f.direction === 'up' && f.type === 1 && connects.push(Date.now()) });
  proxies.push(proxy);
  return { url: proxy.url, connects };
}

interface MqttView {
  connected: boolean;
  lastError: string | null;
  protocol: { setting: string | number; version: number; negotiated: boolean };
}
interface ConnectionView {
  channels: Record<string, { status: string; lastError: string | null; lastFailureKind: string | null }>;
  mqtt: MqttView | null;
}
const connection = async (a: AgentProcess): Promise<ConnectionView> => (await a.get('/v2/connection')).body as ConnectionView;

async function agent(dataDir: string, config: Record<string, unknown>): Promise<AgentProcess> {
  const a = await spawnAgent({ dataDir, config: { features: { metrics: false }, ...config } });
  agents.push(a);
  return a;
}

describe('MQTT protocol negotiation (fault 9)', () => {
  it('falls back to 3.1.1 against NATS, says so, and remembers it across a restart', async () => {
    const proxy = await counted(nats);
    const dataDir = dirs.make();
    const config = { device: { uuid: 'nats-device-1', apiKey: 'nats-key-0123456789' }, mqtt: { url: proxy.url, connectTimeoutMs: 3_000 } };
    const first = await agent(dataDir, config);
    const view = await waitFor('connected to NATS', async () => {
      const c = await connection(first);
      return c.mqtt?.connected && c.channels.mqtt?.status === 'online' ? c : undefined;
    }, 20_000, 200);
    expect(view.mqtt?.protocol).toEqual({ setting: 'auto', version: 4, negotiated: true });
    // One MQTT 5 CONNECT refused, then the 3.1.1 one, at once (no backoff wait in between).
    expect(proxy.connects).toHaveLength(2);
    expect(proxy.connects[1]! - proxy.connects[0]!).toBeLessThan(1_000);
    const said = first.records().find((r) => String(r.msg).includes('speaks MQTT 3.1.1'));
    expect(said?.level).toBe(40);
    expect(first.records().some((r) => String(r.msg).includes('trying MQTT 3.1.1'))).toBe(true);
    await first.stop('SIGTERM');

    proxy.connects.length = 0;
    const second = await agent(dataDir, config);
    const again = await waitFor('connected again', async () => {
      const c = await connection(second);
      return c.mqtt?.connected ? c : undefined;
    }, 20_000, 200);
    expect(again.mqtt?.protocol.version).toBe(4);
    // Remembered: straight to 3.1.1, no MQTT 5 attempt first.
    expect(proxy.connects).toHaveLength(1);
    expect(second.records().some((r) => String(r.msg).includes('trying MQTT 3.1.1'))).toBe(false);
  });

  it('refused credentials are a warning with the reason and a hint, an auth failure in /v2/connection, retried only after half the backoff cap or more (MQTT 5 and 3.1.1)', async () => {
    const setups = await Promise.all(
      ([5, 4] as const).map(async (protocolVersion) => {
        const proxy = await counted(mosquitto);
        const a = await agent(dirs.make(), {
          device: { uuid: 'auth-device', apiKey: 'a-wrong-password-0123' },
          mqtt: { url: proxy.url, connectTimeoutMs: 3_000, ...(protocolVersion === 4 ? { protocolVersion } : {}) },
          settings: { offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 30 } },
        });
        return { protocolVersion, proxy, a };
      }),
    );
    for (const { protocolVersion, proxy, a } of setups) {
      const c = await waitFor(`MQTT ${protocolVersion}: the refusal shown`, async () => {
        const v = await connection(a);
        return v.channels.mqtt?.lastError?.includes('refused the credentials') ? v : undefined;
      }, 20_000, 200);
      expect(c.channels.mqtt?.lastError).toContain('check device.apiKey');
      // Not a network failure: the broker answered, refusing the credentials.
      expect(c.channels.mqtt?.lastFailureKind).toBe('auth');
      expect(c.channels.mqtt?.lastError).toContain('mqtt.username');
      expect(c.mqtt?.lastError).toContain('check device.apiKey');
      expect(c.mqtt?.protocol.version).toBe(protocolVersion);
      // The log is written asynchronously: the line may come after the API shows the refusal.
      const logged = await waitFor(`MQTT ${protocolVersion}: the refusal logged`, () => a.records().find((r) => String(r.msg).includes('refused the credentials')));
      expect(logged.level, `MQTT ${protocolVersion}`).toBe(40);
      // The broker's reason in words: MQTT 5's reason code, 3.1.1's return code.
      expect(String(logged.msg)).toContain(protocolVersion === 5 ? 'the broker refused the connection: Not authorized (0x87)' : 'the broker refused the connection: Not authorized (return code 5)');
      expect(logged).toMatchObject({ refusal: 'auth', reasonCode: protocolVersion === 5 ? 0x87 : 5 });
      expect(proxy.connects.length).toBeGreaterThanOrEqual(1);
    }
    // A network error would be retried within 0.2-1.6 s here; refused credentials wait half the cap or more (15-30 s).
    await new Promise((r) => setTimeout(r, 6_000));
    for (const { protocolVersion, proxy, a } of setups) {
      expect(proxy.connects, `MQTT ${protocolVersion}: CONNECTs in the first 6 s`).toHaveLength(1);
      // Never taken for a 3.1.1-only broker.
      expect(a.records().some((r) => String(r.msg).includes('trying MQTT 3.1.1'))).toBe(false);
    }
  });
});
