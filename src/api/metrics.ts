import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';

/** What the exposition reads at scrape time; nothing is copied into the metrics in between. */
export interface MetricsSource {
  connection(): {
    status: string;
    channels: Record<string, { status: string; consecutiveFailures: number; failures: Record<string, number> }>;
    outages: unknown[];
  };
  targetVersion(): number | null;
  loops(): { name: string; state: string; restarts: number }[];
  degraded(): boolean;
}

const STATES = ['online', 'degraded', 'offline'] as const;

export function createMetrics(source: MetricsSource): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'iotistic_agent_' });

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
    help: 'Per-channel connection status: 1 for the current state, 0 for the others',
    labelNames: ['channel', 'state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) {
        for (const st of STATES) this.set({ channel, state: st }, ch.status === st ? 1 : 0);
      }
    },
  });
  new Gauge({
    name: 'iotistic_channel_consecutive_failures',
    help: 'Consecutive failures of the channel since its last success',
    labelNames: ['channel'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) this.set({ channel }, ch.consecutiveFailures);
    },
  });
  // A counter that is set from the monitor's totals at scrape time.
  new Counter({
    name: 'iotistic_cloud_failures_total',
    help: 'Failed cloud operations, by channel and operation',
    labelNames: ['channel', 'operation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, ch] of Object.entries(source.connection().channels)) {
        for (const [operation, n] of Object.entries(ch.failures)) this.inc({ channel, operation }, n);
      }
    },
  });
  new Gauge({
    name: 'iotistic_target_version',
    help: 'Version of the target state in force (-1 when none)',
    registers: [registry],
    collect() {
      this.set(source.targetVersion() ?? -1);
    },
  });
  new Gauge({
    name: 'iotistic_degraded',
    help: '1 while cloud-dependent features are paused by graceful degradation',
    registers: [registry],
    collect() {
      this.set(source.degraded() ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_loop_up',
    help: '1 while the named agent loop runs, 0 while it is restarting or stopped',
    labelNames: ['loop'],
    registers: [registry],
    collect() {
      this.reset();
      for (const l of source.loops()) this.set({ loop: l.name }, l.state === 'running' ? 1 : 0);
    },
  });
  new Counter({
    name: 'iotistic_loop_restarts_total',
    help: 'Times an agent loop failed and was restarted',
    labelNames: ['loop'],
    registers: [registry],
    collect() {
      this.reset();
      for (const l of source.loops()) this.inc({ loop: l.name }, l.restarts);
    },
  });
  return registry;
}
