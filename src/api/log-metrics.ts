import { Counter, Gauge, type Registry } from 'prom-client';

/** What the log metrics read (logs/collector.ts `serviceStats`); null when logs are not collected. */
export interface LogMetricsSource {
  logs?(): Record<string, { lines: number; dropped: Partial<Record<string, number>>; backlogBytes: number }> | null;
}

/** Device logs per service: the lines stored for sending, the lines dropped and why, what waits for the outbox. */
export function logMetrics(registry: Registry, source: LogMetricsSource): void {
  // Counters set from the collector's totals at scrape time (since the agent started).
  new Counter({
    name: 'iotistic_logs_lines_total',
    help: 'Log lines stored for sending (marker lines included), by service: <app>/<service> or agent',
    labelNames: ['service'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [service, s] of Object.entries(source.logs?.() ?? {})) this.inc({ service }, s.lines);
    },
  });
  new Counter({
    name: 'iotistic_logs_dropped_total',
    help: 'Log lines dropped, by service and reason: lines-rate, bytes-rate (over logs.linesPerSecond or bytesPerSecond), backlog (the outbox too slow), outbox (refused)',
    labelNames: ['service', 'reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [service, s] of Object.entries(source.logs?.() ?? {})) {
        for (const [reason, n] of Object.entries(s.dropped)) if (n !== undefined) this.inc({ service, reason }, n);
      }
    },
  });
  new Gauge({
    name: 'iotistic_logs_backlog_bytes',
    help: 'Bytes of log text waiting to be queued in the outbox, by service',
    labelNames: ['service'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [service, s] of Object.entries(source.logs?.() ?? {})) this.set({ service }, s.backlogBytes);
    },
  });
}
