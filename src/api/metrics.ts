import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { DEFAULT_CHANNEL_PRIORITIES } from '../outbox/channel-policies.js';
import { zeroDrops } from '../outbox/limits.js';
import { connectionMetrics, mqttMetrics, type ConnectionMetricsSource } from './connection-metrics.js';
import { linkMetrics, type LinkMetricsSource } from './link-metrics.js';
import { logMetrics, type LogMetricsSource } from './log-metrics.js';
import { serviceMetrics, type ServiceMetricsSource } from './service-metrics.js';

/** What the exposition reads at scrape time; nothing is copied into the metrics in between. */
export interface MetricsSource extends ConnectionMetricsSource, LinkMetricsSource, LogMetricsSource, ServiceMetricsSource {
  targetVersion(): number | null;
  queue(): {
    channels: Record<
      string,
      { depth: number; bytes: number; oldestAgeMs: number; delivered: number; dropped: number; expired: number; parked: number; drops?: Record<string, number> }
    >;
  };
  /** The outbox's loss ledger (outbox/ledger.ts), per channel. */
  ledger?(): { balanced: boolean; channels: Record<string, { accepted: number; unaccounted: number }> };
  /** The outbox's total limits (settings.offline.maxQueueSize, maxQueueBytes). */
  queueLimits?(): { maxCount: number; maxBytes: number };
  loops(): { name: string; state: string; restarts: number }[];
  degraded(): boolean;
  /** The features graceful degradation sheds, and whether each is paused now. */
  degradedFeatures?(): { name: string; paused: boolean }[];
  /** Whether the wall clock is synced (resilience/clock-sync.ts). */
  clockSynced(): boolean;
  /** Why the config file was not used (the agent runs on the last-known-good one); null when it was. */
  configFallback?(): string | null;
  /** The local broker's counts (local-broker.ts `LocalBrokerStats`); null when it is off. */
  localBroker?(): {
    clients: number;
    accepted: number;
    refused: number;
    refusedAcknowledged: number;
    retained: number;
    queued: number;
    retainedDropped: number;
    queuedDropped: number;
  } | null;
  /** Jobs in the local table per status; null when jobs do not run here. */
  jobs?(): Record<string, number> | null;
  /** The data dir's disk (ok | low | full); null when not watched. */
  disk?(): { state: string; freeBytes: number | null } | null;
  /** null when the shadow is off. */
  shadow?(): { reportedVersion: number; desiredVersion: number | null; deltaKeys: number; conflicts: number } | null;
  /** The last quarantine of a corrupt database (kept across restarts) and this run's integrity check. */
  database?(): {
    quarantine: { at: string; tables: Record<string, { recovered: number; lost: number | null }> } | null;
    integrity: { state: string };
    salvagePending: string | null;
  };
}

export function createMetrics(source: MetricsSource): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'iotistic_agent_' });
  // prom-client names three gauges *_total, which the exposition format keeps for counters (promtool
  // check metrics fails on them); the same counts by type stay (iotistic_agent_nodejs_active_*{type}: sum them).
  for (const name of ['handles', 'requests', 'resources']) registry.removeSingleMetric(`iotistic_agent_nodejs_active_${name}_total`);

  connectionMetrics(registry, source);
  queueMetrics(registry, source);
  diskMetrics(registry, source);
  mqttMetrics(registry, source);
  localBrokerMetrics(registry, source);
  agentMetrics(registry, source);
  featureMetrics(registry, source);
  databaseMetrics(registry, source);
  linkMetrics(registry, source);
  logMetrics(registry, source);
  serviceMetrics(registry, source);
  return registry;
}

type QueueChannel = ReturnType<MetricsSource['queue']>['channels'][string];

/** Every channel in `channels`, and the built-in ones (DEFAULT_CHANNEL_PRIORITIES) as `zero` until they hold anything. */
function withKnown<T>(channels: Record<string, T>, zero: T): Record<string, T> {
  const all: Record<string, T> = {};
  for (const name of Object.keys(DEFAULT_CHANNEL_PRIORITIES)) all[name] = zero;
  return Object.assign(all, channels);
}

/** The outbox's channels: used or configured (its stats), and the built-in ones, so every series exists from the start. */
function queueChannels(source: MetricsSource): Record<string, QueueChannel> {
  const zero: QueueChannel = { depth: 0, bytes: 0, oldestAgeMs: 0, delivered: 0, dropped: 0, expired: 0, parked: 0, drops: zeroDrops() };
  return withKnown(source.queue().channels, zero);
}

/** The outbox, per channel: what waits, what left and how. */
function queueMetrics(registry: Registry, source: MetricsSource): void {
  const perChannel = (name: string, help: string, pick: (c: QueueChannel) => number, counter = false): void => {
    const common = {
      name,
      help,
      labelNames: ['channel'],
      registers: [registry],
    };
    if (counter) {
      new Counter({
        ...common,
        collect() {
          this.reset();
          for (const [channel, c] of Object.entries(queueChannels(source))) this.inc({ channel }, pick(c));
        },
      });
    } else {
      new Gauge({
        ...common,
        collect() {
          this.reset();
          for (const [channel, c] of Object.entries(queueChannels(source))) this.set({ channel }, pick(c));
        },
      });
    }
  };
  perChannel('iotistic_queue_depth', 'Messages waiting in the outbox', (c) => c.depth);
  perChannel('iotistic_queue_bytes', 'Stored payload bytes waiting in the outbox', (c) => c.bytes);
  perChannel('iotistic_queue_oldest_age_seconds', 'Age of the oldest waiting message', (c) => c.oldestAgeMs / 1000);
  perChannel('iotistic_queue_parked', 'Messages parked because the peer refuses them for good', (c) => c.parked);
  perChannel('iotistic_queue_delivered_total', 'Messages delivered and acknowledged', (c) => c.delivered, true);
  perChannel('iotistic_queue_dropped_total', 'Messages dropped by the limits (count, bytes, disk, parked table) or lost with a corrupt database', (c) => c.dropped, true);
  new Counter({
    name: 'iotistic_queue_drops_total',
    help: 'Messages that left the outbox undelivered, by channel and reason (count, bytes, disk, ttl, parkedLimit, purged, corrupt, offline)',
    labelNames: ['channel', 'reason'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, c] of Object.entries(queueChannels(source))) {
        for (const [reason, n] of Object.entries(c.drops ?? {})) this.inc({ channel, reason }, n);
      }
    },
  });
  perChannel('iotistic_queue_expired_total', 'Messages that outlived their TTL', (c) => c.expired, true);
  queueLimitMetrics(registry, source);
  ledgerMetrics(registry, source);
}

/** The outbox's total limits, over every channel (the depth and bytes near them: sum of iotistic_queue_depth, _bytes). */
function queueLimitMetrics(registry: Registry, source: MetricsSource): void {
  new Gauge({
    name: 'iotistic_queue_limit_messages',
    help: 'Messages the outbox holds at most, over every channel (settings.offline.maxQueueSize)',
    registers: [registry],
    collect() {
      const l = source.queueLimits?.();
      if (l) this.set(l.maxCount);
    },
  });
  new Gauge({
    name: 'iotistic_queue_limit_bytes',
    help: 'Stored payload bytes the outbox holds at most, over every channel (settings.offline.maxQueueBytes)',
    registers: [registry],
    collect() {
      const l = source.queueLimits?.();
      if (l) this.set(l.maxBytes);
    },
  });
}

/** The loss ledger: what was taken, and what of it is not accounted for (0 unless rows vanished behind the agent's back). */
function ledgerMetrics(registry: Registry, source: MetricsSource): void {
  const ledger = source.ledger?.bind(source);
  if (!ledger) return;
  new Counter({
    name: 'iotistic_queue_accepted_total',
    help: 'Messages the outbox took (queued, or dropped on arrival while offline with enableQueue false)',
    labelNames: ['channel'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, l] of Object.entries(withKnown(ledger().channels, { accepted: 0, unaccounted: 0 }))) this.inc({ channel }, l.accepted);
    },
  });
  new Gauge({
    name: 'iotistic_queue_unaccounted',
    help: 'Messages taken that are neither delivered, queued, parked, dropped nor expired (the loss ledger; anything but 0 is a loss nothing counted)',
    labelNames: ['channel'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, l] of Object.entries(withKnown(ledger().channels, { accepted: 0, unaccounted: 0 }))) this.set({ channel }, l.unaccounted);
    },
  });
  new Gauge({
    name: 'iotistic_queue_ledger_balanced',
    help: '1 while every message the outbox took is accounted for, 0 when the loss ledger of a channel does not balance',
    registers: [registry],
    collect() {
      this.set(ledger().balanced ? 1 : 0);
    },
  });
}

/** The data dir's disk watermark. */
function diskMetrics(registry: Registry, source: MetricsSource): void {
  new Gauge({
    name: 'iotistic_disk_state',
    help: "State of the data dir's disk: 1 for the current state (ok, low, full), 0 for the others",
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const d = source.disk?.();
      if (d) for (const st of ['ok', 'low', 'full']) this.set({ state: st }, d.state === st ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_disk_free_bytes',
    help: 'Free bytes of the filesystem holding the data dir, as last read',
    registers: [registry],
    collect() {
      const d = source.disk?.();
      if (d && d.freeBytes !== null) this.set(d.freeBytes);
    },
  });
}

/** The local broker (absent when `features.localBroker` is off). */
function localBrokerMetrics(registry: Registry, source: MetricsSource): void {
  new Gauge({
    name: 'iotistic_local_broker_clients',
    help: 'Local MQTT clients connected to the local broker',
    registers: [registry],
    collect() {
      const b = source.localBroker?.();
      if (b) this.set(b.clients);
    },
  });
  new Gauge({
    name: 'iotistic_local_broker_kept',
    help: 'What the local broker keeps across restarts: retained topics, and messages queued for persistent sessions',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      const b = source.localBroker?.();
      if (!b) return;
      this.set({ kind: 'retained' }, b.retained);
      this.set({ kind: 'queued' }, b.queued);
    },
  });
  new Counter({
    name: 'iotistic_local_broker_publishes_total',
    help: 'Publishes of local apps by outcome: accepted (telemetry durable), refused (acknowledged: refused for what it is), refused_unacknowledged (the agent could not take it now)',
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      const b = source.localBroker?.();
      if (!b) return;
      this.reset();
      this.inc({ outcome: 'accepted' }, b.accepted);
      this.inc({ outcome: 'refused' }, b.refusedAcknowledged);
      this.inc({ outcome: 'refused_unacknowledged' }, b.refused - b.refusedAcknowledged);
    },
  });
  new Counter({
    name: 'iotistic_local_broker_dropped_total',
    help: 'Messages the local broker did not keep: retained past localBroker.maxRetained, queued past localBroker.maxQueuedPerClient',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      const b = source.localBroker?.();
      if (!b) return;
      this.reset();
      this.inc({ kind: 'retained' }, b.retainedDropped);
      this.inc({ kind: 'queued' }, b.queuedDropped);
    },
  });
}

/** The agent itself: the target in force, degradation, the config in use and its loops. */
function agentMetrics(registry: Registry, source: MetricsSource): void {
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
    name: 'iotistic_feature_paused',
    help: '1 while graceful degradation holds the named cloud-dependent feature paused (metrics, jobs, shadow)',
    labelNames: ['feature'],
    registers: [registry],
    collect() {
      this.reset();
      for (const f of source.degradedFeatures?.() ?? []) this.set({ feature: f.name }, f.paused ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_clock_synced',
    help: '1 when the wall clock is synced (timesyncd, timedatectl, or not before the build date); 0 while timestamps and certificate checks cannot be trusted',
    registers: [registry],
    collect() {
      this.set(source.clockSynced() ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_config_fallback',
    help: '1 while the agent runs on its last-known-good config because the file is broken; reason: unreadable, not-json, not-an-object or invalid',
    labelNames: ['reason'],
    registers: [registry],
    collect() {
      this.reset();
      const reason = source.configFallback?.() ?? null;
      if (reason) this.set({ reason }, 1);
      else this.set({ reason: 'none' }, 0);
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
}

/** Jobs and the shadow, when they run here. */
function featureMetrics(registry: Registry, source: MetricsSource): void {
  new Gauge({
    name: 'iotistic_jobs',
    help: 'Jobs in the local table (the latest jobs.history finished ones, and the one running), by status',
    labelNames: ['status'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [status, n] of Object.entries(source.jobs?.() ?? {})) this.set({ status }, n);
    },
  });
  new Gauge({
    name: 'iotistic_shadow_version',
    help: 'Version of the shadow documents: reported (counts local changes) and desired (the cloud’s)',
    labelNames: ['document'],
    registers: [registry],
    collect() {
      this.reset();
      const sh = source.shadow?.();
      if (!sh) return;
      this.set({ document: 'reported' }, sh.reportedVersion);
      if (sh.desiredVersion !== null) this.set({ document: 'desired' }, sh.desiredVersion);
    },
  });
  new Gauge({
    name: 'iotistic_shadow_delta_keys',
    help: 'Top-level keys of the desired state that the reported state does not match yet',
    registers: [registry],
    collect() {
      const sh = source.shadow?.();
      if (sh) this.set(sh.deltaKeys);
    },
  });
  new Gauge({
    name: 'iotistic_shadow_conflicts',
    help: 'Local desired overrides the cloud overruled (the latest 20 are kept)',
    registers: [registry],
    collect() {
      const sh = source.shadow?.();
      if (sh) this.set(sh.conflicts);
    },
  });
}

/** The database: the last quarantine and salvage, and a corruption found while running. */
function databaseMetrics(registry: Registry, source: MetricsSource): void {
  new Gauge({
    name: 'iotistic_database_quarantined_timestamp_seconds',
    help: 'When a corrupt database was last moved aside and salvaged (0: never)',
    registers: [registry],
    collect() {
      const q = source.database?.().quarantine;
      this.set(q ? Date.parse(q.at) / 1000 || 0 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_database_salvaged_rows',
    help: 'Rows of the last quarantined database, per table: recovered into the fresh one, or lost (-1: unknown)',
    labelNames: ['table', 'outcome'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [table, t] of Object.entries(source.database?.().quarantine?.tables ?? {})) {
        this.set({ table, outcome: 'recovered' }, t.recovered);
        this.set({ table, outcome: 'lost' }, t.lost ?? -1);
      }
    },
  });
  new Gauge({
    name: 'iotistic_database_corrupt',
    help: '1 when the integrity check found the database damaged while running: it is salvaged at the next start',
    registers: [registry],
    collect() {
      const d = source.database?.();
      if (d) this.set(d.integrity.state === 'failed' || d.salvagePending !== null ? 1 : 0);
    },
  });
}
