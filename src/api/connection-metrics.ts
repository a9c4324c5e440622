import { Counter, Gauge, type Registry } from 'prom-client';

/** What the connection metrics read: the connection monitor's health and the MQTT session's stats. */
export interface ConnectionMetricsSource {
  connection(): {
    status: string;
    /** The monitor's channels (`api`, `mqtt`): the ways to the cloud, not the outbox's channels. */
    channels: Record<
      string,
      { status: string; consecutiveFailures: number; failures: Record<string, number>; lastSuccess?: Record<string, number> }
    >;
    outages: unknown[];
  };
  mqtt(): { connected: boolean; inflight: number; reconnects: number; acknowledged?: number; rejected?: number; broker?: string; brokerIndex?: number } | null;
}

const STATES = ['online', 'degraded', 'offline'] as const;

/**
 * The connection: overall, per monitor channel (label `monitor_channel`: `api`, the HTTP API; `mqtt`,
 * the broker), failed operations and the latest success of each operation.
 */
export function connectionMetrics(registry: Registry, source: ConnectionMetricsSource): void {
  new Gauge({
    name: 'iotistic_connection_status',
    help: 'Overall connection status: 1 for the current state, 0 for the others',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const s = source.connection().status;
      for (const st of STATES) this.set({ state: st }, s === st ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_channel_status',
    help: 'Status of each way to the cloud (monitor_channel: api, mqtt): 1 for the current state, 0 for the others',
    labelNames: ['monitor_channel', 'state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) {
        for (const st of STATES) this.set({ monitor_channel: channel, state: st }, ch.status === st ? 1 : 0);
      }
    },
  });
  new Gauge({
    name: 'iotistic_channel_consecutive_failures',
    help: 'Consecutive failures of the way to the cloud since its last success',
    labelNames: ['monitor_channel'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) this.set({ monitor_channel: channel }, ch.consecutiveFailures);
    },
  });
  // A counter that is set from the monitor's totals at scrape time.
  new Counter({
    name: 'iotistic_cloud_failures_total',
    help: 'Failed cloud operations, by way to the cloud (monitor_channel) and operation',
    labelNames: ['monitor_channel', 'operation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) {
        for (const [operation, n] of Object.entries(ch.failures)) this.inc({ monitor_channel: channel, operation }, n);
      }
    },
  });
  new Gauge({
    name: 'iotistic_last_success_timestamp_seconds',
    help: 'Wall time of the latest success of each operation (poll, report, publish, connect...) on each way to the cloud; absent until the first',
    labelNames: ['monitor_channel', 'operation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) {
        for (const [operation, at] of Object.entries(ch.lastSuccess ?? {})) this.set({ monitor_channel: channel, operation }, at / 1000);
      }
    },
  });
}

/** The MQTT session (absent without MQTT). */
export function mqttMetrics(registry: Registry, source: ConnectionMetricsSource): void {
  new Gauge({
    name: 'iotistic_mqtt_connected',
    help: '1 while the MQTT session is connected (absent without MQTT)',
    registers: [registry],
    collect() {
      const m = source.mqtt();
      if (m) this.set(m.connected ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_mqtt_broker',
    help: "The broker the MQTT session uses or is trying (label broker: its URL without credentials), valued by its place in the list of brokers: 0 is the preferred (mqtt.urls' first)",
    labelNames: ['broker'],
    registers: [registry],
    collect() {
      const m = source.mqtt();
      this.reset();
      if (m?.broker !== undefined) this.set({ broker: m.broker }, m.brokerIndex ?? 0);
    },
  });
  new Gauge({
    name: 'iotistic_mqtt_inflight',
    help: 'QoS 1 publishes awaiting PUBACK',
    registers: [registry],
    collect() {
      const m = source.mqtt();
      if (m) this.set(m.inflight);
    },
  });
  new Counter({
    name: 'iotistic_mqtt_reconnects_total',
    help: 'MQTT connections made after the first',
    registers: [registry],
    collect() {
      const m = source.mqtt();
      if (m) {
        this.reset();
        this.inc(m.reconnects);
      }
    },
  });
  new Counter({
    name: 'iotistic_mqtt_publishes_total',
    help: 'QoS 1 publishes the broker answered since the agent started, by outcome: acknowledged (PUBACK), rejected (PUBACK reason code >= 0x80)',
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      const m = source.mqtt();
      if (!m) return;
      this.reset();
      this.inc({ outcome: 'acknowledged' }, m.acknowledged ?? 0);
      this.inc({ outcome: 'rejected' }, m.rejected ?? 0);
    },
  });
}
