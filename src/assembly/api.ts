import type { Registry } from 'prom-client';
import { createMetrics } from '../api/metrics.js';
import type { ApiView } from '../api/server.js';
import { configView } from '../config/fallback.js';
import { jobsView, queueView, shadowSummary, stateView } from '../views/api-views.js';
import type { AgentParts } from './parts.js';

/** What the local API shows and controls, each answer read from the parts at request time. */
export function buildApiView(p: AgentParts): ApiView {
  const { core, queueing, cloud, status, localTarget } = p;
  const { config, loops, store } = core;
  const shadow = p.shadow?.shadow;
  return {
    version: core.version,
    uuid: core.uuid,
    loops: () => loops.status(),
    healthy: () => loops.healthy(),
    connection: () => status.connectionHealth(),
    state: () => stateView({ status, store, poller: cloud?.poller, reporter: cloud?.reporter, hasCloud: Boolean(config.cloud.apiUrl) }),
    config: () => configView(config, core.configSource, core.clock.now()),
    pollNow: () => {
      if (!cloud) return false;
      cloud.poller.pollNow();
      return true;
    },
    setLocalTarget: (doc) => localTarget.set(doc),
    ingest: (items) => queueing.ingest.ingest(items),
    queue: () => queueView({ outbox: queueing.outbox, disk: core.disk, flushers: queueing.flushers.all }),
    jobs: () => jobsView({ config, runner: cloud?.jobs?.runner, poller: cloud?.jobs?.poller }),
    shadow: shadow
      ? {
          get: () => shadow.get(),
          patch: (body) => shadow.patch(body).document,
          clearOverrides: () => shadow.clearOverrides(),
        }
      : undefined,
    retryParked: (ids) => queueing.outbox.retryParked(ids),
    purgeParked: (ids) => queueing.outbox.purgeParked(ids),
    clearLocalTarget: () => localTarget.clear(),
    metrics: buildMetrics(p),
  };
}

/** The Prometheus registry (`GET /metrics`): every gauge reads its part at scrape time. */
function buildMetrics(p: AgentParts): Registry {
  const { core, queueing, cloud, status, mqtt } = p;
  return createMetrics({
    connection: () => core.monitor.health(),
    queue: () => queueing.outbox.stats(),
    disk: () => core.disk?.view() ?? null,
    mqtt: () => mqtt?.stats() ?? null,
    targetVersion: () => p.workloads.targets.current()?.version ?? null,
    loops: () => core.loops.status(),
    degraded: () => core.degradation.mode() === 'degraded',
    configFallback: () => status.configStatus().fallback?.reason ?? null,
    database: () => core.store.databaseHealth(),
    jobs: () => cloud?.jobs?.runner.counts() ?? null,
    shadow: () => shadowSummary(p.shadow?.shadow),
  });
}
