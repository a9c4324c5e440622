import { connect, type MqttClient } from 'mqtt';
import type { AdminClient } from '../../devcloud/spawn.js';

/**
 * What the cloud stored, as the ledger reads it: one entry per (device uuid, message id), the
 * dedup key of the devcloud (and of the MQTT side below, which does the same), with the producer's
 * `pid` and when it arrived.
 */
export interface Delivery {
  uuid: string;
  id: string;
  pid: string;
  at: number;
}

export interface Stored {
  deliveries: Delivery[];
  /** Copies the cloud received of a (uuid, id) it already had. */
  suppressed: number;
}

function pidOf(payload: unknown): string | undefined {
  const p = payload as { pid?: unknown; payload?: { pid?: unknown } } | null;
  const pid = p?.payload?.pid ?? p?.pid;
  return typeof pid === 'string' ? pid : undefined;
}

/** The HTTP device API's store: every message of the given devices, from the devcloud admin API. */
export async function devcloudStored(admin: AdminClient, uuids: readonly string[]): Promise<Stored> {
  const deliveries: Delivery[] = [];
  let suppressed = 0;
  for (const uuid of new Set(uuids)) {
    for (const m of await admin.allMessages(uuid)) {
      const pid = pidOf(m.payload);
      if (pid !== undefined) deliveries.push({ uuid, id: m.id, pid, at: m.receivedAt });
    }
    suppressed += (await admin.received(uuid)).messages.duplicates;
  }
  return { deliveries, suppressed };
}

/**
 * The MQTT side of the cloud: a persistent QoS 1 subscription to every device's telemetry on the
 * broker, connected straight to it (not through the fault proxy), deduplicating on (uuid, id).
 */
export class MqttCloudStore {
  private readonly seen = new Map<string, Delivery>();
  private suppressed = 0;
  private connects = 0;

  private constructor(private readonly client: MqttClient) {
    client.on('connect', () => {
      this.connects++;
    });
    client.on('message', (topic, payload) => this.take(topic, payload));
    client.on('error', () => undefined);
  }

  static async start(brokerUrl: string): Promise<MqttCloudStore> {
    const client = connect(brokerUrl, {
      protocolVersion: 5,
      clean: false,
      clientId: `chaos-cloud-${process.pid}`,
      properties: { sessionExpiryInterval: 3_600 },
      reconnectPeriod: 250,
      connectTimeout: 5_000,
      resubscribe: true,
    });
    const store = new MqttCloudStore(client);
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      setTimeout(() => reject(new Error(`the cloud subscriber could not connect to ${brokerUrl}`)), 10_000);
    });
    await client.subscribeAsync('iot/+/telemetry/#', { qos: 1 });
    return store;
  }

  /** Resolves once the subscriber connected again after `since` connects (a broker restart). */
  async reconnected(since: number, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.connects <= since || !this.client.connected) {
      if (Date.now() > deadline) throw new Error('the cloud subscriber did not reconnect to the broker');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  get connectCount(): number {
    return this.connects;
  }

  stored(): Stored {
    return { deliveries: [...this.seen.values()], suppressed: this.suppressed };
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }

  private take(topic: string, payload: Buffer): void {
    const uuid = topic.split('/')[1] ?? '';
    let body: { id?: unknown; payload?: unknown };
    try {
      body = JSON.parse(payload.toString('utf8')) as typeof body;
    } catch {
      return;
    }
    const pid = pidOf(body.payload);
    if (typeof body.id !== 'string' || pid === undefined) return;
    const key = `${uuid}\u0000${body.id}`;
    if (this.seen.has(key)) this.suppressed++;
    else this.seen.set(key, { uuid, id: body.id, pid, at: Date.now() });
  }
}
