import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ensureLocalKey } from './api/local-key.js';
import { createMetrics } from './api/metrics.js';
import { startApi } from './api/server.js';
import { HealthReporter } from './cloud/health-report.js';
import { CloudHttpClient } from './cloud/http-client.js';
import { RetryPolicy } from './cloud/retry.js';
import { StateReporter } from './cloud/state-report.js';
import { TargetStatePoller } from './cloud/target-state.js';
import type { AgentConfig } from './config/schema.js';
import { backoffFromSettings } from './resilience/backoff.js';
import { ConnectionMonitor } from './resilience/connection-monitor.js';
import { DegradationController } from './resilience/degradation.js';
import { SqliteOutageLog } from './resilience/outage-log.js';
import { ConnectivityProbe, probeTargetsFromUrls } from './resilience/probe.js';
import { Wakeup } from './resilience/wakeup.js';
import type { Store } from './store/store.js';
import { systemClock, type Clock } from './util/clock.js';
import { IdGenerator } from './util/ids.js';
import type { Json } from './util/json-diff.js';
import type { Logger } from './util/logger.js';
import { LoopRunner } from './util/loops.js';
import { systemRandom, type Random } from './util/random.js';
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
}

const UUID_KEY = 'device.uuid';

/** The device id: configured, else the one generated at first start and kept in the store. */
export function deviceUuid(config: AgentConfig, store: Store): string {
  if (config.device.uuid) return config.device.uuid;
  const kept = store.getKv<string>(UUID_KEY);
  if (kept) return kept;
  const generated = randomBytes(16).toString('hex');
  store.setKv(UUID_KEY, generated);
  return generated;
}

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
  private readonly probe: ConnectivityProbe | undefined;
  private api: Awaited<ReturnType<typeof startApi>> | undefined;
  private readonly targets: MemoryTargetSource;
  private readonly reconciler: Reconciler;
  private readonly policy: WorkloadPolicy;
  private stopped = false;

  constructor(private readonly deps: AgentDeps) {
    const { config, store, logger } = deps;
    const clock = deps.clock ?? systemClock;
    const random = deps.random ?? systemRandom;
    const offline = config.settings.offline;
    this.uuid = deviceUuid(config, store);
    this.localKey = ensureLocalKey(config.dataDir, config.api.localApiKey);
    this.loops = new LoopRunner({ logger, clock });
    const ids = new IdGenerator(() => clock.now());
    this.monitor = new ConnectionMonitor({
      clock,
      offlineAfterFailures: offline.offlineAfterFailures,
      outageLog: new SqliteOutageLog(store),
      channels: config.cloud.apiUrl ? ['api'] : [],
      logger: logger.child({ part: 'connection' }),
    });
    const wakeup = new Wakeup({ clock, random });
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

    if (config.cloud.apiUrl) {
      this.http = new CloudHttpClient({
        baseUrl: config.cloud.apiUrl,
        ...(config.device.apiKey ? { apiKey: config.device.apiKey } : {}),
        timeoutMs: config.cloud.requestTimeoutMs,
        clock,
        ...(config.cloud.caFile ? { caFile: config.cloud.caFile } : {}),
        userAgent: `iotistic-agent/${AGENT_VERSION}`,
      });
      const settings = settingsNow;
      // Offline for want of a connection, the probe's handshakes are the way back; the loops' own
      // requests slow to one per offlineRetryIntervalSeconds so a returning cloud is not met by them.
      const offlineFloorMs = (): number =>
        this.monitor.status() === 'offline' && this.monitor.lastFailureKind('api') === 'transport' ? offline.offlineRetryIntervalSeconds * 1000 : 0;
      const retry = (): RetryPolicy =>
        new RetryPolicy({ backoff: backoffFromSettings(offline, { clock, random }), sleeper: wakeup, clock, floorMs: offlineFloorMs });
      this.poller = new TargetStatePoller({
        http: this.http,
        uuid: this.uuid,
        store,
        monitor: this.monitor,
        retry: retry(),
        clock,
        random,
        logger: logger.child({ part: 'target-state' }),
        pollIntervalMs: () => settings().pollIntervalMs,
        policy: this.policy,
        onTarget: (t) => {
          this.targets.set(t);
          this.reporter?.markDirty();
        },
        onRejected: () => this.reporter?.markDirty(),
      });
      this.reporter = new StateReporter({
        http: this.http,
        uuid: this.uuid,
        store,
        monitor: this.monitor,
        retry: retry(),
        clock,
        logger: logger.child({ part: 'state-report' }),
        ids,
        intervalMs: () => settings().reportIntervalMs,
        current: () => this.currentState(),
      });
      this.health = new HealthReporter({
        http: this.http,
        uuid: this.uuid,
        monitor: this.monitor,
        retry: retry(),
        clock,
        logger: logger.child({ part: 'health-report' }),
        health: () => this.connectionHealth(),
      });
      this.probe = new ConnectivityProbe({
        targets: probeTargetsFromUrls([config.cloud.apiUrl]),
        status: this.monitor,
        // Offline because the cloud answered 503s is not a closed way: a handshake proves nothing new.
        wayClosed: () => this.monitor.lastFailureKind('api') !== 'answer',
        wakeup,
        clock,
        random,
        logger: logger.child({ part: 'probe' }),
        maxIntervalMs: offline.probeMaxIntervalSeconds * 1000,
      });
      // Degradable features, paused in this order after offlineThresholdSeconds offline.
      this.degradation.register(this.reporter, { order: 50 });
      this.monitor.on('status', (e) => {
        logger.info({ from: e.from, to: e.to, cause: e.cause }, `connection ${e.from} -> ${e.to}`);
        this.reporter?.markDirty();
        if (e.from === 'offline') this.health?.request();
      });
    }
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
    store.db.prepare('DELETE FROM target_state WHERE id = 1').run();
    this.deps.logger.info('local mode ended');
    this.poller?.pollNow();
    return true;
  }

  connectionHealth(): ReturnType<ConnectionMonitor['health']> & { degradation: { mode: string; since: number | null } } {
    return { ...this.monitor.health(), degradation: { mode: this.degradation.mode(), since: this.degradation.since() } };
  }

  stateView(): unknown {
    const stored = this.deps.store.getTarget();
    return {
      target: stored ?? null,
      lastRejection: this.poller?.lastRejection ?? null,
      lastPollAt: this.poller?.lastPollAt ?? null,
      lastPollError: this.poller?.lastError ?? null,
      lastReportError: this.reporter?.lastError ?? null,
      current: this.currentState(),
      mode: stored?.source === 'local' || !this.deps.config.cloud.apiUrl ? 'local' : 'cloud',
    };
  }

  async start(): Promise<void> {
    const { config, logger } = this.deps;
    const signal = this.loops.signal;
    this.degradation.start(signal);
    this.reconciler.on('changed', () => this.reporter?.markDirty());
    this.loops.start('reconciler', (s) => this.reconciler.run(s));
    if (this.poller) this.loops.start('target-state', (s) => this.poller!.run(s));
    if (this.reporter) this.loops.start('state-report', (s) => this.reporter!.run(s));
    if (this.health) this.loops.start('health-report', (s) => this.health!.run(s));
    if (this.probe) this.probe.start(signal);
    const metrics = createMetrics({
      connection: () => this.monitor.health(),
      targetVersion: () => this.targets.current()?.version ?? null,
      loops: () => this.loops.status(),
      degraded: () => this.degradation.mode() === 'degraded',
    });
    this.api = await startApi({
      host: config.api.host,
      port: config.api.port,
      key: this.localKey,
      logger,
      dashboard: config.features.dashboard,
      view: {
        version: AGENT_VERSION,
        uuid: this.uuid,
        loops: () => this.loops.status(),
        healthy: () => this.loops.healthy(),
        connection: () => this.connectionHealth(),
        state: () => this.stateView(),
        pollNow: () => {
          if (!this.poller) return false;
          this.poller.pollNow();
          return true;
        },
        setLocalTarget: (doc) => this.setLocalTarget(doc),
        clearLocalTarget: () => this.clearLocalTarget(),
        metrics,
      },
    });
    this.apiUrl = this.api.url;
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
    await this.http?.close();
    store.close();
    logger.info('agent stopped');
  }
}

export function databasePath(dataDir: string): string {
  return join(dataDir, 'agent.db');
}
