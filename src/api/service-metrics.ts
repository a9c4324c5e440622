import { Counter, Gauge, type Registry } from 'prom-client';
import type { ServiceState, ServiceStatus } from '../workloads/types.js';

/** What the agent and service metrics read: the agent's identity and the reconciler's current state. */
export interface ServiceMetricsSource {
  /** The agent's version and device uuid (no key, no URL: the exposition is scraped off the device). */
  info?(): { version: string; uuid: string };
  /** The reconciler's current state per app and service (`Reconciler.currentState().apps`). */
  services?(): Record<string, { services: Record<string, Pick<ServiceState, 'status' | 'restarts'>> }>;
}

/** Every state a service can be in (workloads/types.ts `ServiceStatus`), each a series from the service's first scrape. */
export const SERVICE_STATES: readonly ServiceStatus[] = ['running', 'exited', 'pulling', 'backoff', 'failed', 'stopped', 'creating', 'starting', 'unhealthy', 'waiting'];

/** The agent (version, device) and the services it runs: up or not, the state, the restarts it made. */
export function serviceMetrics(registry: Registry, source: ServiceMetricsSource): void {
  new Gauge({
    name: 'iotistic_agent_info',
    help: 'Always 1; the labels name the agent version and the device uuid',
    labelNames: ['version', 'uuid'],
    registers: [registry],
    collect() {
      this.reset();
      const i = source.info?.();
      if (i) this.set({ version: i.version, uuid: i.uuid }, 1);
    },
  });
  const each = (f: (app: string, service: string, s: Pick<ServiceState, 'status' | 'restarts'>) => void): void => {
    for (const [app, a] of Object.entries(source.services?.() ?? {})) for (const [service, s] of Object.entries(a.services)) f(app, service, s);
  };
  new Gauge({
    name: 'iotistic_service_up',
    help: '1 while the service of the target in force runs, 0 otherwise (app, service as in the target)',
    labelNames: ['app', 'service'],
    registers: [registry],
    collect() {
      this.reset();
      each((app, service, s) => this.set({ app, service }, s.status === 'running' ? 1 : 0));
    },
  });
  new Gauge({
    name: 'iotistic_service_state',
    help: `The state of each service: 1 for the current one, 0 for the others (${SERVICE_STATES.join(', ')})`,
    labelNames: ['app', 'service', 'state'],
    registers: [registry],
    collect() {
      this.reset();
      each((app, service, s) => {
        for (const state of SERVICE_STATES) this.set({ app, service, state }, s.status === state ? 1 : 0);
      });
    },
  });
  // Set from the reconciler's count at scrape time (since the agent started).
  new Counter({
    name: 'iotistic_service_restarts_total',
    help: 'Restarts the agent made after the service exited, since the agent started',
    labelNames: ['app', 'service'],
    registers: [registry],
    collect() {
      this.reset();
      each((app, service, s) => this.inc({ app, service }, s.restarts));
    },
  });
}
