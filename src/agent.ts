import { join } from 'node:path';
import { createMetrics } from './api/metrics.js';
import { startApi } from './api/server.js';
import type { DataDirDisk } from './boot/disk.js';
import type { Identity } from './boot/identity.js';
import { HealthReporter } from './cloud/health-report.js';
import { HttpSink } from './cloud/http-sink.js';
import { CloudHttpClient } from './cloud/http-client.js';
import type { CloudLoopDeps } from './cloud/loop-deps.js';
import { RetryPolicy } from './cloud/retry.js';
import { StateDelivery } from './cloud/state-delivery.js';
import { STATE_CHANNEL, StateReporter } from './cloud/state-report.js';
import { TargetStatePoller } from './cloud/target-state.js';
import { announceConfigSource, configStatus, configView, type ConfigSource, type ConfigStatus } from './config/fallback.js';
import type { AgentConfig } from './config/schema.js';
import { JobUpdateDelivery } from './jobs/delivery.js';
import { pollTargetHandler, restartServiceHandler, runCommandHandler } from './jobs/handlers.js';
import { JobPoller } from './jobs/poller.js';
import { JobRunner } from './jobs/runner.js';
import { JOBS_CHANNEL, type JobHandler } from './jobs/types.js';
import { MqttSession } from './mqtt/session.js';
import { ShadowDesiredPoller } from './shadow/poller.js';
import { SHADOW_CHANNEL, Shadow, type ShadowDocument } from './shadow/shadow.js';
import { MQTT_CHANNELS, MqttSink } from './mqtt/sink.js';
import { MetricsBuffer } from './outbox/downsample.js';
import { Flusher } from './outbox/flusher.js';
import { Outbox } from './outbox/outbox.js';
import { flusherSettings, outboxSettings } from './outbox/policy.js';
import { OutboxError, type EnqueueMessage, type EnqueueResult } from './outbox/types.js';
import { backoffFromSettings } from './resilience/backoff.js';
import { ConnectionMonitor } from './resilience/connection-monitor.js';
import { DegradationController } from './resilience/degradation.js';
import { SqliteOutageLog } from './resilience/outage-log.js';
import { ChannelProbes } from './resilience/channel-probes.js';
import { isCorruptionError } from './store/integrity.js';
import { quarantineEvent } from './store/quarantine.js';
import type { Store } from './store/store.js';
import { systemClock, type Clock } from './util/clock.js';
import { IdGenerator } from './util/ids.js';
import type { Json } from './util/json-diff.js';
import type { Logger } from './util/logger.js';
import { LoopRunner } from './util/loops.js';
import { systemRandom, type Random } from './util/random.js';
import { LOCAL_SHADOW_DESIRED, LocalBroker } from './telemetry/local-broker.js';
import { MetricsSampler } from './telemetry/sampler.js';
import { SystemMetrics } from './telemetry/system-metrics.js';
import { errorMessage } from './util/errors.js';
import { AGENT_VERSION } from './version.js';
import { validateTarget, type TargetState, type TargetValidation, type WorkloadPolicy } from './workloads/target-schema.js';
import { Reconciler } from './workloads/reconciler.js';
import { DockerRuntime } from './workloads/runtimes/docker.js';
import { ProcessRuntime, resolveProcessUser } from './workloads/runtimes/process.js';
import { MemoryTargetSource } from './workloads/target-source.js';

export interface AgentDeps {
  config: AgentConfig;
  store: Store;
  logger: Logger;
  clock?: Clock;
  random?: Random;
  /** Where the config came from (the file, or the last-known-good copy and why). Default: the file. */
  configSource?: ConfigSource;
  /** The device's own identity (identity.json); a configured `device.uuid` / `api.localApiKey` wins. */
  identity: Identity;
  /** The data dir's disk state and reserve, checked in a loop and shown in the API and metrics. */
  disk?: DataDirDisk;
  /** After the store is closed (the data dir lock is released here). */
  onStopped?: () => void;
}

/** Where agents before `identity.json` kept a generated uuid; read once at the upgrade (see loadIdentity). */
export const LEGACY_UUID_KEY = 'device.uuid';
/** The latest shadow reportedVersion whose report is on disk in the outbox. */
const SHADOW_QUEUED_KEY = 'shadow.reportQueuedVersion';
/** Whether the last run told the cloud it ran on the last-known-good config. */
const FALLBACK_ANNOUNCED_KEY = 'config.fallbackAnnounced';

/**
 * The composition root: builds every part from the config, starts the loops and the local API, and
 * stops them in order. Parts get what they need through their constructors; nothing is global.
 */
export class Agent {
  readonly uuid: string;
  readonly localKey: string;
  apiUrl = '';
  private readonly loops: LoopRunner;
  private readonly monitor: ConnectionMonitor;
  private readonly degradation: DegradationController;
  private readonly http: CloudHttpClient | undefined;
  private readonly poller: TargetStatePoller | undefined;
  private readonly reporter: StateReporter | undefined;
  private readonly health: HealthReporter | undefined;
  private readonly probes: ChannelProbes;
  private api: Awaited<ReturnType<typeof startApi>> | undefined;
  private readonly targets: MemoryTargetSource;
  private readonly reconciler: Reconciler;
  private readonly policy: WorkloadPolicy;
  readonly outbox: Outbox;
  private readonly flushers: Flusher[] = [];
  private readonly mqtt: MqttSession | undefined;
  private readonly sampler: MetricsSampler | undefined;
  private readonly clock: Clock;
  private readonly localBroker: LocalBroker | undefined;
  private readonly jobs: JobRunner | undefined;
  readonly shadow: Shadow | undefined;
  private readonly shadowPoller: ShadowDesiredPoller | undefined;
  private readonly jobPoller: JobPoller | undefined;
  private stopped = false;
  private salvageNeeded: (() => void) | undefined;

  constructor(private readonly deps: AgentDeps) {
    const { config, store, logger } = deps;
    const clock = deps.clock ?? systemClock;
    this.clock = clock;
    const random = deps.random ?? systemRandom;
    const offline = config.settings.offline;
    this.uuid = config.device.uuid ?? deps.identity.uuid;
    this.localKey = config.api.localApiKey ?? deps.identity.localApiKey;
    // A loop that fails on a damaged page makes the store check the whole file.
    this.loops = new LoopRunner({ logger, clock, onFailure: (_name, err) => isCorruptionError(err) && store.suspectCorruption(errorMessage(err)) });
    const ids = new IdGenerator(() => clock.now());
    this.monitor = new ConnectionMonitor({
      clock,
      offlineAfterFailures: offline.offlineAfterFailures,
      outageLog: new SqliteOutageLog(store),
      channels: [...(config.cloud.apiUrl ? ['api'] : []), ...(config.mqtt.url ? ['mqtt'] : [])],
      logger: logger.child({ part: 'connection' }),
    });
    // Each channel is probed and woken on its own: the API down while MQTT works is still probed.
    const endpoints = { ...(config.cloud.apiUrl ? { api: config.cloud.apiUrl } : {}), ...(config.mqtt.url ? { mqtt: config.mqtt.url } : {}) };
    this.probes = new ChannelProbes({ monitor: this.monitor, endpoints, clock, random, logger, maxIntervalMs: offline.probeMaxIntervalSeconds * 1000 });
    this.degradation = new DegradationController({
      status: this.monitor,
      clock,
      random,
      logger,
      enabled: offline.enableGracefulDegradation,
      thresholdMs: offline.offlineThresholdSeconds * 1000,
    });
    const w = config.workloads;
    this.policy = { allowHostMounts: w.allowHostMounts, allowPrivileged: w.allowPrivileged, allowHostNetwork: w.allowHostNetwork, allowDevices: w.allowDevices };
    // The stored target is in force at once, offline or not; it is validated again in case this
    // agent's rules (or the device's policy) changed since it was stored.
    const stored = store.getTarget();
    let initial: TargetState | undefined;
    if (stored) {
      const v = validateTarget(stored.document, { policy: this.policy });
      if (v.ok) initial = v.target;
      else logger.error({ issues: v.issues }, `the stored target no longer validates and is not applied: ${v.message}`);
    }
    this.targets = new MemoryTargetSource(initial);
    const settingsNow = (): AgentConfig['settings'] => ({ ...config.settings, ...(this.targets.current()?.config.settings ?? {}) });
    this.reconciler = new Reconciler({
      source: this.targets,
      docker: new DockerRuntime({
        clock,
        random,
        logger: logger.child({ part: 'docker' }),
        ...(w.dockerHost ? { host: w.dockerHost } : {}),
        stopTimeoutSeconds: w.stopTimeoutSeconds,
        containerLog: { maxBytes: w.containerLogMaxBytes, files: w.containerLogFiles },
      }),
      process: new ProcessRuntime({
        dataDir: join(config.dataDir, 'services'),
        clock,
        logger: logger.child({ part: 'process' }),
        logMaxBytes: w.processLogMaxBytes,
        logFiles: w.processLogFiles,
        stopTimeoutMs: w.stopTimeoutSeconds * 1000,
        user: resolveProcessUser(w.processUser),
      }),
      clock,
      random,
      logger: logger.child({ part: 'reconciler' }),
      reconciliationIntervalMs: () => settingsNow().reconciliationIntervalMs,
      policy: this.policy,
    });

    // Everything bound for the cloud waits here, on disk, until a sink has delivered it.
    this.outbox = new Outbox({
      store,
      clock,
      ids,
      logger: logger.child({ part: 'outbox' }),
      ...outboxSettings(offline),
      onCommit: () => {
        for (const f of this.flushers) f.kick();
      },
    });
    if (config.features.metrics && offline.enableQueue) {
      this.sampler = new MetricsSampler({
        metrics: new SystemMetrics({ dataDir: config.dataDir }),
        buffer: new MetricsBuffer({ outbox: this.outbox, maxSamples: offline.maxOfflineMetricsBuffer, logger: logger.child({ part: 'metrics' }) }),
        clock,
        logger: logger.child({ part: 'metrics' }),
        intervalMs: () => settingsNow().metricsIntervalMs,
      });
      this.degradation.register(this.sampler, { order: 10 });
    }
    // Offline for want of a connection, the probe's handshakes are the way back; the loops' own
    // requests slow to one per offlineRetryIntervalSeconds so a returning cloud is not met by them.
    const offlineFloorMs = (channel: string) => (): number =>
      this.monitor.channelStatus(channel) === 'offline' && this.monitor.lastFailureKind(channel) === 'transport' ? offline.offlineRetryIntervalSeconds * 1000 : 0;
    const retryFor = (channel: string): RetryPolicy =>
      new RetryPolicy({ backoff: backoffFromSettings(offline, { clock, random }), sleeper: this.probes.wakeup(channel), clock, floorMs: offlineFloorMs(channel) });
    const flusherFor = (sink: HttpSink | MqttSink): Flusher =>
      new Flusher({
        outbox: this.outbox,
        sink,
        monitor: this.monitor,
        retry: retryFor(sink.monitorChannel),
        clock,
        logger: logger.child({ part: `flush-${sink.name}` }),
        ...flusherSettings(offline),
      });

    if (config.features.shadow) {
      this.shadow = new Shadow({ db: store.db, clock, logger: logger.child({ part: 'shadow' }) });
      // Every change of the reported state is queued, coalesced: offline, only the latest is kept.
      this.shadow.on('changed', (e) => {
        if (e.reportedChanged) this.queueShadowReport(e.document);
      });
    }

    if (config.features.localBroker) {
      // Local apps publish on local/telemetry/{stream}; the PUBACK goes out once it is on disk.
      const shadow = this.shadow;
      this.localBroker = new LocalBroker({
        host: config.localBroker.host,
        port: config.localBroker.port,
        ingest: (stream, payload) => this.ingest([{ stream, payload }]).then(() => undefined),
        maxPacketBytes: config.limits.maxLocalPacketBytes,
        maxConnections: config.limits.maxLocalConnections,
        maxJsonDepth: config.limits.maxJsonDepth,
        ...(shadow ? { shadowReported: (patch: Json) => void shadow.patch({ reported: patch }) } : {}),
        logger: logger.child({ part: 'local-broker' }),
      });
      // Local apps follow the desired state on a retained topic, offline as well.
      shadow?.on('changed', (e) => this.publishLocalDesired(e.document));
    }

    if (config.mqtt.url) {
      this.mqtt = new MqttSession({
        config: { mqtt: config.mqtt, uuid: this.uuid, apiKey: config.device.apiKey, limits: config.limits },
        store,
        monitor: this.monitor,
        backoff: backoffFromSettings(offline, { clock, random }),
        wakeup: this.probes.wakeup('mqtt'),
        floorMs: offlineFloorMs('mqtt'),
        clock,
        random,
        logger: logger.child({ part: 'mqtt' }),
      });
      this.flushers.push(flusherFor(new MqttSink(this.mqtt)));
    }

    if (config.cloud.apiUrl) {
      this.http = new CloudHttpClient({
        baseUrl: config.cloud.apiUrl,
        ...(config.device.apiKey ? { apiKey: config.device.apiKey } : {}),
        timeoutMs: config.cloud.requestTimeoutMs,
        clock,
        ...(config.cloud.caFile ? { caFile: config.cloud.caFile } : {}),
        userAgent: `iotistic-agent/${AGENT_VERSION}`,
        maxResponseBytes: config.limits.maxCloudResponseBytes,
        maxJsonDepth: config.limits.maxJsonDepth,
      });
      const settings = settingsNow;
      const http = this.http;
      // What every cloud loop is built with; each gets a retry policy (a backoff) of its own.
      const cloudLoop = (part: string): CloudLoopDeps => ({ http, uuid: this.uuid, monitor: this.monitor, retry: retryFor('api'), clock, logger: logger.child({ part }) });
      this.poller = new TargetStatePoller({
        ...cloudLoop('target-state'),
        store,
        random,
        pollIntervalMs: () => settings().pollIntervalMs,
        policy: this.policy,
        maxTargetBytes: config.limits.maxTargetBytes,
        onTarget: (t) => {
          this.targets.set(t);
          this.reporter?.markDirty();
        },
        onRejected: () => this.reporter?.markDirty(),
      });
      this.reporter = new StateReporter({
        outbox: this.outbox,
        clock,
        logger: logger.child({ part: 'state-report' }),
        intervalMs: () => settings().reportIntervalMs,
        current: () => this.currentState(),
      });
      this.health = new HealthReporter({
        ...cloudLoop('health-report'),
        health: () => ({ ...this.connectionHealth(), config: this.configStatus() }),
      });
      if (config.features.jobs) {
        const handlers: Record<string, JobHandler> = {
          'run-command': runCommandHandler({ allowed: config.jobs.allowedCommands, maxOutputBytes: config.jobs.maxOutputBytes, user: resolveProcessUser(w.processUser) }),
          'poll-target': pollTargetHandler((s) => this.poller!.pollOnce(s)),
          'restart-service': restartServiceHandler((app, service, s) => this.reconciler.restartService(app, service, s)),
        };
        this.jobs = new JobRunner({ db: store.db, outbox: this.outbox, handlers, clock, logger: logger.child({ part: 'jobs' }), history: config.jobs.history });
        this.jobPoller = new JobPoller({
          ...cloudLoop('jobs'),
          random,
          runner: this.jobs,
          pollIntervalMs: () => config.jobs.pollIntervalMs,
        });
      }
      // Without MQTT the shadow's desired state is polled over HTTP; with it, it arrives retained.
      if (this.shadow && !config.mqtt.url) {
        this.shadowPoller = new ShadowDesiredPoller({
          ...cloudLoop('shadow'),
          random,
          shadow: this.shadow,
          pollIntervalMs: () => settings().pollIntervalMs,
        });
      }
      // With MQTT, the channels it carries go to the broker; everything else (and all of it without
      // MQTT) goes to the device API: state reports and job updates each to an endpoint of their own.
      this.flushers.push(
        flusherFor(
          new HttpSink(this.http, this.uuid, config.mqtt.url ? MQTT_CHANNELS : undefined, {
            [STATE_CHANNEL]: new StateDelivery(this.http, this.uuid, store, this.monitor),
            [JOBS_CHANNEL]: new JobUpdateDelivery(this.http, this.uuid, this.monitor),
          }),
        ),
      );
    }
    this.monitor.on('status', (e) => {
      logger.info({ from: e.from, to: e.to, cause: e.cause }, `connection ${e.from} -> ${e.to}`);
      this.reporter?.markDirty();
      if (e.from === 'offline') this.health?.request();
      this.event('connection', { from: e.from, to: e.to, cause: e.cause ?? null });
    });
    this.monitor.on('channel', (e) => {
      if (e.to !== 'online') return;
      for (const f of this.flushers) if (f.stats().sink === (e.channel === 'mqtt' ? 'mqtt' : 'http')) f.channelOnline();
    });
    this.mqtt?.on('message', (m) => {
      if (m.kind === 'target-notify') this.poller?.pollNow();
      else if (m.kind === 'jobs-notify') this.jobPoller?.pollNow();
      else if (m.kind === 'shadow-desired') this.shadow?.applyCloudDesired(m.payload);
    });
    this.watchServiceTransitions();
  }

  /**
   * A state transition worth keeping, queued durably on the `events` channel so that transitions
   * during an outage reach the cloud after it. A refused enqueue (disk full) is logged, never thrown.
   */
  event(type: string, data: Record<string, unknown>): void {
    if (!this.deps.config.settings.offline.enableQueue) return;
    this.outbox.enqueue({ channel: 'events', payload: JSON.parse(JSON.stringify({ type, ...data })) as Json }).catch((err: unknown) => {
      this.deps.logger.warn({ err: errorMessage(err), type }, 'could not queue an event');
    });
  }

  /** Services that crash, back off or fail, and applies that fail, become events. */
  private watchServiceTransitions(): void {
    const last = new Map<string, string>();
    let lastApply: string | undefined;
    this.reconciler.on('changed', (state) => {
      if (state.status !== lastApply && state.status === 'failed') this.event('apply-failed', { targetVersion: state.targetVersion });
      lastApply = state.status;
      for (const [app, { services }] of Object.entries(state.apps)) {
        for (const [name, svc] of Object.entries(services)) {
          const key = `${app}/${name}`;
          const before = last.get(key);
          last.set(key, svc.status);
          if (before !== undefined && before !== svc.status && ['exited', 'backoff', 'failed'].includes(svc.status)) {
            this.event('service-status', { app, service: name, from: before, to: svc.status, restarts: svc.restarts, lastError: svc.lastError });
          }
        }
      }
    });
  }

  /** Local ingestion (`POST /v2/telemetry`): resolves once every item is on disk. */
  ingest(items: { stream: string; payload: Json }[]): Promise<EnqueueResult[]> {
    if (!this.deps.config.settings.offline.enableQueue) {
      return Promise.reject(new OutboxError('OUTBOX_CLOSED', 'settings.offline.enableQueue is false: this agent does not queue telemetry'));
    }
    const full = this.deps.disk?.refusal();
    if (full) return Promise.reject(new OutboxError('OUTBOX_DISK_FULL', full));
    const msgs: EnqueueMessage[] = items.map((i) => ({ channel: 'telemetry', payload: { stream: i.stream, payload: i.payload } }));
    return this.outbox.enqueueMany(msgs);
  }

  /** The current state as reported to the cloud (PROTOCOL.md "Current state"). */
  currentState(): Json {
    const health = this.monitor.health();
    const workloads = this.reconciler.currentState();
    return JSON.parse(
      JSON.stringify({
        ...workloads,
        connection: { status: health.status, offlineSince: health.offlineSince },
        agent: { version: AGENT_VERSION },
      }),
    ) as Json;
  }

  /** Local mode: a target set on the device. It stays in force (the cloud's is not fetched) until cleared. */
  setLocalTarget(doc: unknown): TargetValidation {
    const v = validateTarget(doc, { policy: this.policy });
    if (!v.ok) return v;
    this.deps.store.setTarget({ etag: null, version: v.target.version, document: v.target, source: 'local' });
    this.targets.set(v.target);
    this.deps.logger.info({ version: v.target.version }, 'local target set: local mode until it is cleared');
    this.reporter?.markDirty();
    return v;
  }

  /** Ends local mode: the cloud's target is fetched at once. Returns false when not in local mode. */
  clearLocalTarget(): boolean {
    const { store } = this.deps;
    if (store.getTarget()?.source !== 'local') return false;
    store.clearTarget();
    this.deps.logger.info('local mode ended');
    this.poller?.pollNow();
    return true;
  }

  connectionHealth(): ReturnType<ConnectionMonitor['health']> & { degradation: { mode: string; since: number | null }; mqtt: unknown } {
    const q = this.outbox.stats();
    return {
      ...this.monitor.health({ queue: { depth: q.depth, bytes: q.bytes, oldestAgeMs: q.oldestAgeMs, dropped: q.dropped, expired: q.expired } }),
      degradation: { mode: this.degradation.mode(), since: this.degradation.since() },
      mqtt: this.mqtt?.stats() ?? null,
    };
  }

  /** `GET /v2/queue`: the outbox per channel, the flushers, and what is parked. */
  queueView(): unknown {
    return {
      ...this.outbox.stats(),
      dataDisk: this.deps.disk?.view() ?? null,
      flushers: this.flushers.map((f) => f.stats()),
      parkedMessages: this.outbox.parked({ limit: 20 }),
    };
  }

  /**
   * The reported state goes to the cloud as `{ version, state }` on the shadow channel (MQTT
   * `shadow/reported`, or in an HTTP messages batch), one coalesced message: the latest wins.
   */
  private queueShadowReport(doc: ShadowDocument): void {
    if (!this.deps.config.settings.offline.enableQueue) return;
    const version = doc.reportedVersion;
    this.outbox
      .enqueue({ channel: SHADOW_CHANNEL, coalesceKey: 'reported', payload: { version, state: doc.reported } })
      .then(() => {
        // Versions are queued in order; a late resolve of an older one must not lower the mark.
        if (version > (this.deps.store.getKv<number>(SHADOW_QUEUED_KEY) ?? 0)) this.deps.store.setKv(SHADOW_QUEUED_KEY, version);
      })
      .catch((err: unknown) => this.deps.logger.warn({ err: errorMessage(err) }, `could not queue the shadow report: ${errorMessage(err)}`));
  }

  /**
   * A reported change committed to the shadow whose report was not yet on disk in the outbox when the
   * agent died (the two are separate commits) is queued at the next start.
   */
  private requeueShadowReport(): void {
    const doc = this.shadow?.get();
    if (!doc || doc.reportedVersion <= (this.deps.store.getKv<number>(SHADOW_QUEUED_KEY) ?? 0)) return;
    this.deps.logger.info({ version: doc.reportedVersion }, 'shadow: queuing the reported state the last run did not get to queue');
    this.queueShadowReport(doc);
  }

  private publishLocalDesired(doc: ShadowDocument): void {
    this.localBroker?.publishRetained(LOCAL_SHADOW_DESIRED, JSON.stringify({ version: doc.desiredVersion, desired: doc.desired, delta: doc.delta }));
  }

  /** `GET /v2/jobs`: whether jobs run here, the one running, the latest ones. */
  jobsView(): unknown {
    const cfg = this.deps.config;
    if (!this.jobs) {
      const why = !cfg.features.jobs ? 'features.jobs is false' : 'there is no cloud.apiUrl to take jobs from';
      return { enabled: false, reason: why, types: [], running: null, counts: null, recent: [] };
    }
    return {
      enabled: true,
      types: this.jobs.types,
      allowedCommands: cfg.jobs.allowedCommands,
      lastPollAt: this.jobPoller?.lastPollAt ?? null,
      lastPollError: this.jobPoller?.lastError ?? null,
      running: this.jobs.running ?? null,
      counts: this.jobs.counts(),
      recent: this.jobs.list(20),
    };
  }

  /** The config's source and, on a fallback, why: in `/v2/state`, health reports and metrics. */
  configStatus(): ConfigStatus {
    return configStatus(this.deps.configSource ?? { source: 'file', file: null }, this.clock.now());
  }

  stateView(): unknown {
    const stored = this.deps.store.getTarget();
    return {
      config: this.configStatus(),
      target: stored ?? null,
      lastRejection: this.poller?.lastRejection ?? null,
      lastPollAt: this.poller?.lastPollAt ?? null,
      lastPollError: this.poller?.lastError ?? null,
      lastReportError: this.reporter?.lastError ?? null,
      current: this.currentState(),
      mode: stored?.source === 'local' || !this.deps.config.cloud.apiUrl ? 'local' : 'cloud',
      database: this.deps.store.databaseHealth(),
    };
  }

  /**
   * A database quarantined at this start is reported with what was salvaged. Damage the background
   * check finds later is reported too, and `onSalvageNeeded`'s handler (`run`: an in-process restart)
   * makes the start that salvages it.
   */
  private watchDatabase(): void {
    const { store } = this.deps;
    if (store.quarantine) this.event('database-quarantined', quarantineEvent(store.quarantine));
    store.onIntegrityFailure((r) => {
      if (this.stopped) return;
      this.event('database-corrupt', { detail: r.detail, salvageAtNextStart: true });
      this.salvageNeeded?.();
    });
  }

  onSalvageNeeded(handler: () => void): void {
    this.salvageNeeded = handler;
  }

  async start(): Promise<void> {
    const { config, logger } = this.deps;
    const signal = this.loops.signal;
    this.degradation.start(signal);
    this.reconciler.on('changed', () => this.reporter?.markDirty());
    this.requeueShadowReport();
    this.watchDatabase();
    this.loops.start('reconciler', (s) => this.reconciler.run(s));
    for (const f of this.flushers) this.loops.start(`flush-${f.stats().sink}`, (s) => f.run(s));
    if (this.mqtt) this.loops.start('mqtt', (s) => this.mqtt!.start(s));
    if (this.sampler) this.loops.start('metrics', (s) => this.sampler!.run(s));
    this.loops.start('outbox-expiry', async (s) => {
      // TTLs lapse whether or not anything is enqueued or sent.
      while (!s.aborted) {
        await this.clock.sleep(60_000, s).catch(() => undefined);
        if (!s.aborted) this.outbox.expire();
      }
    });
    const disk = this.deps.disk;
    if (disk) {
      disk.check();
      this.loops.start('disk', async (s) => {
        while (!s.aborted) {
          await this.clock.sleep(5_000, s).catch(() => undefined);
          if (!s.aborted) disk.check();
        }
      });
    }
    if (this.poller) this.loops.start('target-state', (s) => this.poller!.run(s));
    if (this.jobPoller) this.loops.start('jobs', (s) => this.jobPoller!.run(s));
    if (this.shadowPoller) this.loops.start('shadow-desired', (s) => this.shadowPoller!.run(s));
    if (this.reporter) this.loops.start('state-report', (s) => this.reporter!.run(s));
    if (this.health) this.loops.start('health-report', (s) => this.health!.run(s));
    void this.probes.start(signal);
    announceConfigSource({
      status: this.configStatus(),
      announced: { get: () => this.deps.store.getKv<boolean>(FALLBACK_ANNOUNCED_KEY) === true, set: (v) => this.deps.store.setKv(FALLBACK_ANNOUNCED_KEY, v) },
      event: (type, data) => this.event(type, data),
      healthReport: () => this.health?.request(),
      logger,
    });
    const metrics = createMetrics({
      connection: () => this.monitor.health(),
      queue: () => this.outbox.stats(),
      disk: () => this.deps.disk?.view() ?? null,
      mqtt: () => this.mqtt?.stats() ?? null,
      targetVersion: () => this.targets.current()?.version ?? null,
      loops: () => this.loops.status(),
      degraded: () => this.degradation.mode() === 'degraded',
      configFallback: () => this.configStatus().fallback?.reason ?? null,
      database: () => this.deps.store.databaseHealth(),
      jobs: () => this.jobs?.counts() ?? null,
      shadow: () => {
        const d = this.shadow?.get();
        return d ? { reportedVersion: d.reportedVersion, desiredVersion: d.desiredVersion, deltaKeys: Object.keys(d.delta).length, conflicts: d.conflicts.length } : null;
      },
    });
    this.api = await startApi({
      host: config.api.host,
      port: config.api.port,
      key: this.localKey,
      logger,
      dashboard: config.features.dashboard,
      limits: config.limits,
      view: {
        version: AGENT_VERSION,
        uuid: this.uuid,
        loops: () => this.loops.status(),
        healthy: () => this.loops.healthy(),
        connection: () => this.connectionHealth(),
        state: () => this.stateView(),
        config: () => configView(config, this.deps.configSource ?? { source: 'file', file: null }, this.clock.now()),
        pollNow: () => {
          if (!this.poller) return false;
          this.poller.pollNow();
          return true;
        },
        setLocalTarget: (doc) => this.setLocalTarget(doc),
        ingest: (items) => this.ingest(items),
        queue: () => this.queueView(),
        jobs: () => this.jobsView(),
        shadow: this.shadow
          ? {
              get: () => this.shadow!.get(),
              patch: (body) => this.shadow!.patch(body).document,
              clearOverrides: () => this.shadow!.clearOverrides(),
            }
          : undefined,
        retryParked: () => this.outbox.retryParked(),
        clearLocalTarget: () => this.clearLocalTarget(),
        metrics,
      },
    });
    this.apiUrl = this.api.url;
    // The full check reads every page: it starts once the API is up, so the start stays short.
    this.deps.store.startIntegrityCheck();
    if (this.localBroker) {
      const { port } = await this.localBroker.start();
      logger.info({ host: config.localBroker.host, port }, 'local MQTT broker listening for local apps');
      const doc = this.shadow?.get();
      if (doc) this.publishLocalDesired(doc);
    }
    logger.info(
      { uuid: this.uuid, api: this.apiUrl, cloud: config.cloud.apiUrl ?? null, dataDir: config.dataDir, version: AGENT_VERSION },
      config.cloud.apiUrl ? 'agent started' : 'agent started in local mode (no cloud.apiUrl)',
    );
  }

  /** Stops every loop, closes the API and the cloud client, and closes the database. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const { logger, store } = this.deps;
    const stuck = await this.loops.stop(3_000);
    if (stuck.length > 0) logger.warn({ loops: stuck }, 'loops did not stop in time');
    // Native processes stop with the agent; containers keep running and are re-adopted at start.
    await this.reconciler.close().catch((err: unknown) => logger.error({ err: String(err) }, 'stopping native services failed'));
    await this.api?.app.close();
    await this.localBroker?.stop().catch(() => undefined);
    await this.mqtt?.stop().catch(() => undefined);
    await this.outbox.close();
    await this.http?.close();
    store.close();
    this.deps.onStopped?.();
    logger.info('agent stopped');
  }
}

export function databasePath(dataDir: string): string {
  return join(dataDir, 'agent.db');
}
