import { connect, type MqttClient } from 'mqtt';
import type { AgentUnderTest } from './agent.js';
import { AppendLog } from './append-log.js';

/**
 * Local producers at a steady rate, each with a ledger of what the agent acknowledged: a 202 from
 * `POST /v2/telemetry` (with the outbox id it answered) or a PUBACK from the local broker. Every
 * payload carries a unique `pid`. Record: `A <pid> <outbox id or -> <acknowledged at, ms>`.
 * Refusals (507, 503, timeouts, no PUBACK) are counted, not recorded: the producer still has them.
 */

export type Ingress = 'api' | 'local-mqtt';

export const STREAM = 'chaos';

export interface ProducerStats {
  agent: string;
  ingress: Ingress;
  sent: number;
  accepted: number;
  refused: Record<string, number>;
}

export interface Producer {
  readonly stats: ProducerStats;
  readonly ledgerPath: string;
  start(): void;
  /** Stops producing and waits (bounded) for the answers still due. */
  stop(): Promise<void>;
}

abstract class Paced implements Producer {
  readonly stats: ProducerStats;
  protected readonly ledger: AppendLog;
  protected seq = 0;
  protected inflight = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    protected readonly agent: AgentUnderTest,
    ingress: Ingress,
    readonly ledgerPath: string,
    private readonly ratePerSecond: number,
    protected readonly maxInflight: number,
  ) {
    this.stats = { agent: agent.name, ingress, sent: 0, accepted: 0, refused: {} };
    this.ledger = new AppendLog(ledgerPath);
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), Math.max(1, Math.round(1000 / this.ratePerSecond)));
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    const deadline = Date.now() + 15_000;
    while (this.inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await this.close();
    this.ledger.close();
  }

  protected refused(why: string): void {
    this.stats.refused[why] = (this.stats.refused[why] ?? 0) + 1;
  }

  protected pid(): string {
    return `${this.agent.name}.${this.stats.ingress}.${++this.seq}`;
  }

  private tick(): void {
    if (this.inflight >= this.maxInflight) {
      this.refused('backpressure (not sent)');
      return;
    }
    this.stats.sent++;
    this.inflight++;
    void this.produce().finally(() => this.inflight--);
  }

  protected abstract produce(): Promise<void>;
  protected abstract close(): Promise<void>;
}

export class ApiProducer extends Paced {
  constructor(agent: AgentUnderTest, ledgerPath: string, rate: number) {
    super(agent, 'api', ledgerPath, rate, 16);
  }

  protected async produce(): Promise<void> {
    const pid = this.pid();
    try {
      const res = await fetch(`${this.agent.apiUrl}/v2/telemetry`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.agent.spec.localKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ stream: STREAM, payload: { pid, at: Date.now() } }),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await res.text();
      if (res.status !== 202) {
        this.refused(`http ${res.status}`);
        return;
      }
      const id = (JSON.parse(text) as { ids?: string[] }).ids?.[0] ?? '-';
      this.ledger.write(['A', pid, id, Date.now()]);
      this.stats.accepted++;
    } catch (err) {
      const e = err as Error & { cause?: { code?: string } };
      this.refused(e.name === 'TimeoutError' ? 'timeout' : (e.cause?.code ?? e.name));
    }
  }

  protected async close(): Promise<void> {}
}

/** QoS 1 on `local/telemetry/chaos` through mqtt.js, which re-sends what was not PUBACKed after a reconnect. */
export class LocalBrokerProducer extends Paced {
  private readonly client: MqttClient;

  constructor(agent: AgentUnderTest, ledgerPath: string, rate: number) {
    super(agent, 'local-mqtt', ledgerPath, rate, 200);
    this.client = connect(`mqtt://127.0.0.1:${agent.spec.brokerPort}`, {
      protocolVersion: 4,
      clean: true,
      clientId: `chaos-producer-${agent.name}-${process.pid}`,
      reconnectPeriod: 500,
      connectTimeout: 5_000,
      keepalive: 10,
    });
    this.client.on('error', () => undefined);
  }

  protected produce(): Promise<void> {
    const pid = this.pid();
    return new Promise((resolve) => {
      this.client.publish(`local/telemetry/${STREAM}`, JSON.stringify({ pid, at: Date.now() }), { qos: 1 }, (err) => {
        if (err) this.refused(err.message.slice(0, 60));
        else {
          this.ledger.write(['A', pid, '-', Date.now()]);
          this.stats.accepted++;
        }
        resolve();
      });
    });
  }

  protected async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
