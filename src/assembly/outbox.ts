import type { HttpSink } from '../cloud/http-sink.js';
import type { AgentConfig } from '../config/schema.js';
import type { MqttSink } from '../mqtt/sink.js';
import { join } from 'node:path';
import { COUNTER_MIRROR_FILE, CounterMirror } from '../outbox/counter-mirror.js';
import { MetricsBuffer } from '../outbox/downsample.js';
import { ORDERED_CHANNELS } from '../outbox/channel-policies.js';
import { Flusher } from '../outbox/flusher.js';
import { LoopShare } from '../outbox/loop-share.js';
import { Outbox } from '../outbox/outbox.js';
import { flusherSettings, outboxSettings } from '../outbox/policy.js';
import { TelemetryIngest } from '../telemetry/ingest.js';
import { MetricsSampler } from '../telemetry/sampler.js';
import { SystemMetrics } from '../telemetry/system-metrics.js';
import type { Core } from './core.js';
import { EventLog } from './events.js';
import { FlusherRouter } from './flusher-router.js';
import { buildLink } from './link.js';
import type { LinkGate } from '../resilience/link-gate.js';

/** The outbox and what writes to it or drains it. */
export interface Queueing {
  outbox: Outbox;
  /** The flushers (one per sink), woken by the outbox's commits and their channel's return. */
  flushers: FlusherRouter;
  events: EventLog;
  ingest: TelemetryIngest;
  /** Local ingest's share of the event loop while the outbox delivers (the local broker and API are held by it). */
  share: LoopShare;
  sampler: MetricsSampler | undefined;
  /** The copy of the outbox's counters outside the database, taken back after a salvage that lost them. */
  counters: CounterMirror;
  /** Whom to tell when the outbox counted its rows again after the start (its loss ledger may have moved). */
  whenRecounted(listener: () => void): void;
  /** What a metered link lets through (settings.network); undefined without a cloud. */
  link: LinkGate | undefined;
}

export function buildQueueing(core: Core, settings: () => AgentConfig['settings']): Queueing {
  const { config, store, clock, ids, logger, disk } = core;
  const offline = config.settings.offline;
  const flushers = new FlusherRouter();
  let recounted: (() => void) | undefined;
  // A commit of what producers handed over is ingest's turn too: while a drain runs, a pause as long follows it.
  const share = new LoopShare({ clock, draining: () => outbox.leased > 0, enabled: offline.shareLoopWithDrain });
  // Everything bound for the cloud waits here, on disk, until a sink has delivered it.
  const outbox = new Outbox({
    store,
    clock,
    ids,
    logger: logger.child({ part: 'outbox' }),
    ...outboxSettings(offline),
    clockSynced: () => core.clockSync.synced,
    onCommit: (info) => {
      flushers.committed();
      share.spent(info.ms);
    },
    // The seed's enableQueue: false: no store-and-forward while the cloud is away; every feature still runs.
    ...(offline.enableQueue ? {} : { refuseWhileOffline: () => core.monitor.status() === 'offline' }),
    onRecount: () => recounted?.(),
  });
  if (!offline.enableQueue) {
    logger.warn(
      'settings.offline.enableQueue is false: what the device produces while the cloud cannot be reached is not queued but dropped, and counted (drops.offline in GET /v2/queue and the metrics)',
    );
  }
  return {
    outbox,
    flushers,
    share,
    events: new EventLog({ outbox, logger }),
    ingest: new TelemetryIngest({ outbox, ...(disk ? { diskRefusal: () => disk.refusal() } : {}) }),
    sampler: buildSampler(core, outbox, settings),
    counters: new CounterMirror({ db: store.db, path: join(config.dataDir, COUNTER_MIRROR_FILE), clock, logger: logger.child({ part: 'outbox' }) }),
    whenRecounted: (listener) => void (recounted = listener),
    // A change of link or budget period is new work for every flusher.
    link: buildLink(core, () => flushers.committed()),
  };
}

/** System metrics, sampled and downsampled into the outbox; the first feature shed when degraded. */
function buildSampler(core: Core, outbox: Outbox, settings: () => AgentConfig['settings']): MetricsSampler | undefined {
  const { config, clock, logger, degradation } = core;
  const offline = config.settings.offline;
  if (!config.features.metrics) return undefined;
  const sampler = new MetricsSampler({
    metrics: new SystemMetrics({ dataDir: config.dataDir }),
    buffer: new MetricsBuffer({ outbox, maxSamples: offline.maxOfflineMetricsBuffer, logger: logger.child({ part: 'metrics' }) }),
    clock,
    logger: logger.child({ part: 'metrics' }),
    intervalMs: () => settings().metricsIntervalMs,
  });
  degradation.register(sampler, { order: 10 });
  return sampler;
}

/** A flusher that drains the outbox into `sink`, with a retry policy of its own on the sink's channel. */
export function addFlusher(core: Core, q: Queueing, sink: HttpSink | MqttSink): Flusher {
  const { config, monitor, clock, logger } = core;
  const flusher = new Flusher({
    outbox: q.outbox,
    sink,
    monitor,
    retry: core.retryFor(sink.monitorChannel),
    clock,
    logger: logger.child({ part: `flush-${sink.name}` }),
    ...flusherSettings(config.settings.offline),
    ...(q.link ? { link: q.link } : {}),
    ordered: ORDERED_CHANNELS,
  });
  return q.flushers.add(sink.monitorChannel, flusher);
}
