import type { Registry } from 'prom-client';
import type { MetricsSource } from '../api/metrics.js';
import type { ApiView, MetricsExposition } from '../api/server.js';
import { configView } from '../config/fallback.js';
import { lifecycleView } from '../lifecycle/view.js';
import { jobsView, queueView, shadowSummary, stateView } from '../views/api-views.js';
import { linkView } from '../views/link-view.js';
import { buildImagesView } from './images.js';
import type { AgentParts } from './parts.js';

/** What the local API shows and controls, each answer read from the parts at request time. */
export function buildApiView(p: AgentParts): ApiView {
  const { core, queueing, cloud, status, localTarget } = p;
  const { config, loops, store } = core;
  const shadow = p.shadow?.shadow;
  return {
    actions: { actions: p.actions.actions, plan: (doc) => p.actions.preview.plan(doc) },
    version: core.version,
    uuid: core.uuid,
    hasCloud: Boolean(config.cloud.apiUrl),
    clock: core.clock,
    loops: () => loops.status(),
    healthy: () => loops.healthy(),
    connection: () => {
      const link = queueing.link;
      return { ...status.connectionHealth(), ...(link ? { link: linkView(link, queueing.outbox) } : {}) };
    },
    state: () => stateView({ missingImages: () => p.workloads.reconciler.missing.current(), status, store, poller: cloud?.poller, reporter: cloud?.reporter, hasCloud: Boolean(config.cloud.apiUrl), registration: cloud?.registrar, lifecycle: () => lifecycleView(config.dataDir, core.version, core.lifecycle?.link !== undefined) }),
    config: () => configView(config, core.configSource, core.clock.now()),
    pollNow: () => {
      if (!cloud) return false;
      cloud.poller.pollNow();
      return true;
    },
    setLocalTarget: (doc) => localTarget.set(doc),
    ingest: (items) => queueing.ingest.ingest(items),
    queue: () => queueView({ outbox: queueing.outbox, disk: core.disk, flushers: queueing.flushers.all, share: queueing.share }),
    jobs: () => jobsView({ config, runner: cloud?.jobs?.runner, poller: cloud?.jobs?.poller }),
    localBroker: () => (p.localBroker ? { enabled: true, ...p.localBroker.stats() } : { enabled: false, reason: 'features.localBroker is false' }),
    shadow: shadow
      ? {
          get: () => shadow.get(),
          patch: (body) => shadow.patch(body).document,
          clearOverrides: () => shadow.clearOverrides(),
        }
      : undefined,
    retryParked: (ids) => {
      const requeued = queueing.outbox.retryParked(ids);
      // Sent now, not at the flushers' idle recheck (30 s): they wait for a commit, and a retry is one.
      if (requeued > 0) queueing.flushers.committed();
      return requeued;
    },
    purgeParked: (ids) => queueing.outbox.purgeParked(ids),
    clearLocalTarget: () => localTarget.clear(),
    logs: () => ({ tail: p.logs.tail, events: p.logs.events, serviceStats: () => p.logs.serviceStats(), clock: core.clock }),
    secrets: secretsView(p),
    images: buildImagesView(p),
    metrics: buildMetrics(p),
  };
}

/** The secrets as the local API shows them: names, sources, times and the services using each; never values. */
function secretsView(p: AgentParts): ApiView['secrets'] {
  const { secrets, targets } = p.workloads;
  return {
    list: () => {
      const users = new Map<string, string[]>();
      for (const [app, a] of Object.entries(targets.current()?.apps ?? {})) {
        for (const [service, s] of Object.entries(a.services)) for (const r of s.secrets) users.set(r.name, [...(users.get(r.name) ?? []), `${app}/${service}`]);
      }
      const held = secrets.list().map((s) => ({ ...s, updatedAt: new Date(s.updatedAt).toISOString(), usedBy: users.get(s.name) ?? [] }));
      const missing = [...users].filter(([name]) => !secrets.has(name)).map(([name, usedBy]) => ({ name, missing: true, usedBy }));
      return { cloudVersion: secrets.cloudVersion, secrets: held, missing };
    },
    set: (name, value) => secrets.setLocal(name, value),
    remove: (name) => secrets.removeLocal(name),
  };
}

/**
 * The Prometheus registry (`GET /metrics`): every gauge reads its part at scrape time. It is built
 * at the first scrape, so a device nobody scrapes never loads prom-client nor runs its default
 * collectors (the event-loop delay monitor alone wakes the loop every 10 ms). The process's default
 * metrics (GC, event-loop delay) then count from that first scrape; the agent's own read their
 * parts and are the same whenever the registry was built.
 */
function buildMetrics(p: AgentParts): MetricsExposition {
  let registry: Registry | undefined;
  let loading: Promise<Registry> | undefined;
  const load = (): Promise<Registry> => (loading ??= import('../api/metrics.js').then(({ createMetrics }) => (registry = createMetrics(metricsSource(p)))));
  return {
    get contentType() {
      return registry?.contentType ?? 'text/plain; version=0.0.4; charset=utf-8';
    },
    metrics: async () => (await load()).metrics(),
  };
}

function metricsSource(p: AgentParts): MetricsSource {
  const { core, queueing, cloud, status, mqtt } = p;
  return {
    connection: () => core.monitor.health(),
    queue: () => queueing.outbox.stats(),
    queueLimits: () => ({ maxCount: core.config.settings.offline.maxQueueSize, maxBytes: core.config.settings.offline.maxQueueBytes }),
    ledger: () => queueing.outbox.ledger(),
    disk: () => core.disk?.view() ?? null,
    mqtt: () => mqtt?.stats() ?? null,
    targetVersion: () => p.workloads.targets.current()?.version ?? null,
    loops: () => core.loops.status(),
    degraded: () => core.degradation.mode() === 'degraded',
    degradedFeatures: () => core.degradation.features(),
    clockSynced: () => core.clockSync.synced,
    configFallback: () => status.configStatus().fallback?.reason ?? null,
    database: () => core.store.databaseHealth(),
    jobs: () => cloud?.jobs?.runner.counts() ?? null,
    localBroker: () => p.localBroker?.stats() ?? null,
    shadow: () => shadowSummary(p.shadow?.shadow),
    link: () => (queueing.link ? linkView(queueing.link, queueing.outbox) : null),
    logs: () => p.logs.serviceStats(),
    info: () => ({ version: core.version, uuid: core.uuid }),
    services: () => p.workloads.reconciler.currentState().apps,
  };
}
