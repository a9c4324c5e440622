import { startApi } from './api/server.js';
import { buildApiView } from './assembly/api.js';
import { buildCloud } from './assembly/cloud.js';
import { buildCore, type AgentDeps } from './assembly/core.js';
import { announceConfig, watchConnection, watchDatabase, watchServiceTransitions } from './assembly/events.js';
import { startLoops } from './assembly/loops.js';
import { buildMqtt, routeMqttMessages } from './assembly/mqtt.js';
import { buildLogs } from './assembly/logs.js';
import { buildQueueing } from './assembly/outbox.js';
import { buildRegistration } from './assembly/registration.js';
import type { AgentParts } from './assembly/parts.js';
import { buildLocalBroker, buildShadow, publishLocalDesired } from './assembly/shadow.js';
import { buildLocalTarget, buildWorkloads } from './assembly/workloads.js';
import { buildActions } from './assembly/actions.js';
import { CommandPowerControl, type PowerAction } from './actions/power.js';
import { settleLifecycleJobs } from './lifecycle/settle.js';
import { AgentStatus } from './views/agent-status.js';
import { AGENT_BUILT_AT, AGENT_VERSION } from './version.js';

export type { AgentDeps } from './assembly/core.js';

/**
 * The composition root: builds every part from the config (the factories of assembly/, in this
 * order), wires their events, starts the loops and the local API, and stops them in order. Parts get
 * what they need through their constructors; nothing is global.
 */
export class Agent {
  readonly uuid: string;
  readonly localKey: string;
  apiUrl = '';
  private readonly p: AgentParts;
  private api: Awaited<ReturnType<typeof startApi>> | undefined;
  private stopped = false;
  private salvageNeeded: (() => void) | undefined;
  private poweredOff: ((action: PowerAction, err?: unknown) => void) | undefined;

  constructor(private readonly deps: AgentDeps) {
    this.p = assemble(deps, (action) => void this.powerOff(action));
    this.uuid = this.p.core.uuid;
    this.localKey = this.p.core.localKey;
    this.wire();
  }

  /** Events between parts, subscribed in this order (listeners of one event run in it). */
  private wire(): void {
    const { core, workloads, queueing, mqtt, cloud, shadow } = this.p;
    const { monitor, logger } = core;
    watchConnection(monitor, { logger, events: queueing.events, onChange: () => cloud?.reporter.markDirty(), onBackFromOffline: () => cloud?.health.request() });
    monitor.on('channel', (e) => {
      if (e.to === 'online') queueing.flushers.channelOnline(e.channel);
    });
    if (mqtt) {
      routeMqttMessages(mqtt, { pollTarget: () => cloud?.poller.pollNow(), pollJobs: () => cloud?.jobs?.poller.pollNow(), shadow: shadow?.shadow });
    }
    watchServiceTransitions(workloads.reconciler, queueing.events);
    // Rows counted again after the start: the ledger may show a loss; the cloud hears of it now.
    queueing.whenRecounted(() => cloud?.health.request());
    // Another link to the cloud: new connections, so nothing goes on leaving from the old link's address.
    queueing.link?.onRouteChange(() => cloud?.http.renewConnections());
  }

  /** `handler` (`run`: an in-process restart) makes the start that salvages a database found damaged. */
  onSalvageNeeded(handler: () => void): void {
    this.salvageNeeded = handler;
  }

  async start(): Promise<void> {
    const { core, workloads, queueing, cloud, shadow, status } = this.p;
    const { config, logger, store } = core;
    core.degradation.start(core.loops.signal);
    workloads.reconciler.on('changed', () => cloud?.reporter.markDirty());
    if (shadow) shadow.reports.requeueUnsent(shadow.shadow);
    watchDatabase(store, queueing.events, { stopped: () => this.stopped, salvageNeeded: () => this.salvageNeeded?.() });
    startLoops(this.p);
    this.settleLifecycle();
    void core.probes.start(core.loops.signal);
    announceConfig({ status: status.configStatus(), kv: store, events: queueing.events, healthReport: () => cloud?.health.request(), logger });
    const view = buildApiView(this.p);
    const listener = this.deps.listeners?.api;
    this.api = await startApi({ host: config.api.host, port: config.api.port, key: this.localKey, logger, dashboard: config.features.dashboard, limits: config.limits, view, ingestGate: queueing.share, ...(listener ? { listener } : {}) });
    this.apiUrl = this.api.url;
    // The full check reads every page: it starts once the API is up, so the start stays short.
    store.startIntegrityCheck();
    await this.startLocalBroker();
    logger.info(
      { uuid: this.uuid, api: this.apiUrl, cloud: config.cloud.apiUrl ?? null, dataDir: config.dataDir, version: AGENT_VERSION },
      config.cloud.apiUrl ? 'agent started' : 'agent started in local mode (no cloud.apiUrl)',
    );
  }

  /** Whether /v1/healthy says healthy: every loop up. */
  healthy(): boolean {
    return this.p.core.loops.healthy();
  }

  /** Self-update and config-update jobs a switch left RUNNING are reported as their trial ended (now, and at its confirmation). */
  private settleLifecycle(): void {
    const { core, cloud } = this.p;
    const runner = cloud?.jobs?.runner;
    if (!runner) return;
    const settle = (): void => {
      if (this.stopped) return;
      settleLifecycleJobs(core.config.dataDir, runner, core.logger).catch((err: unknown) => core.logger.error({ err: String(err) }, 'reporting the end of a self-update failed'));
    };
    settle();
    core.lifecycle?.link?.onConfirmed(settle);
  }

  private async startLocalBroker(): Promise<void> {
    const { localBroker, shadow, core } = this.p;
    const held = this.deps.listeners?.broker;
    if (!localBroker) return held?.close();
    const { port } = await localBroker.start(held);
    core.logger.info({ host: core.config.localBroker.host, port }, 'local MQTT broker listening for local apps');
    if (shadow) publishLocalDesired(localBroker, shadow.shadow.get());
  }

  /** `handler` (`run`) ends the process once the agent has stopped and the power action ran. */
  onPoweredOff(handler: (action: PowerAction, err?: unknown) => void): void {
    this.poweredOff = handler;
  }

  /** A reboot or shutdown: the agent stops cleanly (workloads' state recorded, queue closed), then the device's power action runs. */
  private async powerOff(action: PowerAction): Promise<void> {
    const { core } = this.p;
    await this.stop();
    const power = this.deps.power ?? new CommandPowerControl(core.config.actions);
    try {
      await power.run(action);
      this.poweredOff?.(action);
    } catch (err) {
      core.logger.error({ err: String(err) }, `the ${action} command failed`);
      this.poweredOff?.(action, err);
    }
  }

  /** Stops every loop, closes the API and the cloud client, and closes the database. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const { core, workloads, queueing, localBroker, mqtt, cloud } = this.p;
    const { logger, store } = core;
    const stuck = await core.loops.stop(3_000);
    if (stuck.length > 0) logger.warn({ loops: stuck }, 'loops did not stop in time');
    // A pause under way ends now (its timer with it): producers held by it get the stop's refusals.
    queueing.share.stop();
    // Native processes stop with the agent; containers keep running and are re-adopted at start.
    await workloads.reconciler.close().catch((err: unknown) => logger.error({ err: String(err) }, 'stopping native services failed'));
    // What the services printed up to their stop is committed before the outbox closes.
    await this.p.logs.close();
    await this.api?.app.close();
    await localBroker?.stop().catch(() => undefined);
    // Ports bound early and not adopted (the start failed before them) are let go too.
    await Promise.all([this.deps.listeners?.api?.close(), this.deps.listeners?.broker?.close()]);
    await mqtt?.stop().catch(() => undefined);
    await queueing.outbox.close();
    await cloud?.http.close();
    store.close();
    this.deps.onStopped?.();
    logger.info('agent stopped');
  }
}

/** Builds the parts, each factory given what the earlier ones built. */
function assemble(deps: AgentDeps, power: (action: PowerAction) => void): AgentParts {
  const core = buildCore(deps, AGENT_VERSION, AGENT_BUILT_AT);
  const workloads = buildWorkloads(core);
  const queueing = buildQueueing(core, workloads.settings);
  const logs = buildLogs(core, workloads, queueing, deps.logTap);
  const shadow = buildShadow(core, queueing);
  const localBroker = buildLocalBroker(core, queueing.ingest, shadow?.shadow, queueing.share);
  const registration = buildRegistration(core, deps.identity);
  const mqtt = buildMqtt(core, queueing, registration?.registrar);
  const { version, configSource, clock, monitor, degradation } = core;
  const status = new AgentStatus({ version, configSource, clock, monitor, reconciler: workloads.reconciler, outbox: queueing.outbox, degradation, mqtt, clockSync: core.clockSync });
  const actions = buildActions(core, workloads, queueing, power);
  const cloud = buildCloud(core, { workloads, queueing, status, shadow: shadow?.shadow, registration, actions });
  // Local mode: a target set is reported; a cleared one makes the cloud's fetched at once.
  const localTarget = buildLocalTarget(core, workloads, { set: () => cloud?.reporter.markDirty(), cleared: () => cloud?.poller.pollNow() });
  return { core, workloads, queueing, logs, shadow, localBroker, mqtt, status, cloud, localTarget, actions };
}
