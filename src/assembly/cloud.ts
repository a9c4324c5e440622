import { HEALTH_CHANNEL, HealthDelivery, HealthReporter } from '../cloud/health-report.js';
import { CloudHttpClient } from '../cloud/http-client.js';
import { HttpSink } from '../cloud/http-sink.js';
import type { CloudLoopDeps } from '../cloud/loop-deps.js';
import { StateDelivery } from '../cloud/state-delivery.js';
import { STATE_CHANNEL, StateReporter } from '../cloud/state-report.js';
import { TargetStatePoller } from '../cloud/target-state.js';
import { SecretsFetcher } from '../cloud/secrets-fetch.js';
import { JobUpdateDelivery } from '../jobs/delivery.js';
import type { JobPoller } from '../jobs/poller.js';
import type { JobRunner } from '../jobs/runner.js';
import { JOBS_CHANNEL } from '../jobs/types.js';
import { MQTT_CHANNELS } from '../mqtt/sink.js';
import { ShadowDesiredPoller } from '../shadow/poller.js';
import type { Shadow } from '../shadow/shadow.js';
import { ShadowSync } from '../shadow/sync.js';
import type { Registrar } from '../cloud/registration.js';
import type { AgentStatus } from '../views/agent-status.js';
import type { Core } from './core.js';
import type { ActionParts } from './actions.js';
import { buildJobs } from './jobs.js';
import { addFlusher, type Queueing } from './outbox.js';
import type { Workloads } from './workloads.js';
import { mqttBrokerUrls } from '../config/schema.js';

/** Everything that talks to the device API over HTTP (`cloud.apiUrl`). */
export interface CloudParts {
  http: CloudHttpClient;
  poller: TargetStatePoller;
  secrets: SecretsFetcher;
  reporter: StateReporter;
  health: HealthReporter;
  jobs: { runner: JobRunner; poller: JobPoller } | undefined;
  shadowPoller: ShadowDesiredPoller | undefined;
  registrar: Registrar;
}

export interface CloudNeeds {
  workloads: Workloads;
  queueing: Queueing;
  status: AgentStatus;
  shadow: Shadow | undefined;
  registration: { registrar: Registrar; http: CloudHttpClient } | undefined;
  actions: ActionParts;
}

export function buildCloud(core: Core, needs: CloudNeeds): CloudParts | undefined {
  const { config, store, random, logger } = core;
  if (!needs.registration) return undefined;
  const { workloads, queueing, status } = needs;
  const { registrar, http } = needs.registration;
  // What every cloud loop is built with; each gets a retry policy (a backoff) of its own.
  const cloudLoop = (part: string): CloudLoopDeps => ({ http, uuid: core.uuid, monitor: core.monitor, retry: core.retryFor('api'), clock: core.clock, logger: logger.child({ part }) });
  const reporter = new StateReporter({
    outbox: queueing.outbox,
    clock: core.clock,
    logger: logger.child({ part: 'state-report' }),
    intervalMs: () => workloads.settings().reportIntervalMs,
    current: () => status.currentState(),
  });
  const secrets = new SecretsFetcher({
    ...cloudLoop('secrets'),
    store: workloads.secrets,
    random,
    target: () => workloads.targets.current(),
    pollIntervalMs: () => workloads.settings().pollIntervalMs,
    maxBytes: config.limits.maxCloudResponseBytes,
  });
  workloads.targets.onChange(() => secrets.check());
  const poller = new TargetStatePoller({
    ...cloudLoop('target-state'),
    store,
    random,
    pollIntervalMs: () => workloads.settings().pollIntervalMs,
    policy: workloads.policy,
    maxTargetBytes: config.limits.maxTargetBytes,
    onTarget: (t) => {
      workloads.targets.set(t);
      reporter.markDirty();
    },
    onRejected: () => reporter.markDirty(),
  });
  const health = new HealthReporter({
    outbox: queueing.outbox,
    // The ledger says which channels went over MQTT: a cloud that sees only the device API cannot check those.
    health: () => ({ ...status.connectionHealth(), config: status.configStatus(), ledger: { ...queueing.outbox.ledger(), mqttChannels: mqttBrokerUrls(config.mqtt).length > 0 ? [...MQTT_CHANNELS] : [] } }),
    logger: logger.child({ part: 'health-report' }),
    clock: core.clock,
    intervalMs: () => workloads.settings().healthReportIntervalMs,
  });
  const jobs = config.features.jobs ? buildJobs(core, { loop: cloudLoop('jobs'), outbox: queueing.outbox, poller, reconciler: workloads.reconciler, http, actions: needs.actions }) : undefined;
  // Without MQTT the shadow's desired state is polled over HTTP; with it, it arrives retained.
  const shadowPoller =
    needs.shadow && mqttBrokerUrls(config.mqtt).length === 0
      ? new ShadowDesiredPoller({ ...cloudLoop('shadow'), random, shadow: needs.shadow, pollIntervalMs: () => workloads.settings().pollIntervalMs })
      : undefined;
  const shadowSync = needs.shadow ? new ShadowSync({ ...(shadowPoller ? { poller: shadowPoller } : {}), logger: logger.child({ part: 'shadow' }) }) : undefined;
  // Shed in this order after offlineThresholdSeconds offline (system metrics, order 10, go first).
  if (jobs) core.degradation.register(jobs.poller, { order: 20 });
  if (shadowSync) core.degradation.register(shadowSync, { order: 30 });
  addHttpFlusher(core, queueing, http);
  return { http, poller, secrets, reporter, health, jobs, shadowPoller, registrar };
}

export function buildHttpClient(core: Core, baseUrl: string, key: { apiKey(): string | undefined; keyRefused(key: string): void; keyAccepted(key: string): void }): CloudHttpClient {
  const { config, clock } = core;
  return new CloudHttpClient({
    baseUrl,
    apiKey: () => key.apiKey(),
    onKeyRefused: (k) => key.keyRefused(k),
    onKeyAccepted: (k) => key.keyAccepted(k),
    timeoutMs: config.cloud.requestTimeoutMs,
    connectTimeoutMs: config.cloud.connectTimeoutMs,
    clock,
    ...(config.cloud.caFile ? { caFile: config.cloud.caFile } : {}),
    userAgent: `iotistic-agent/${core.version}`,
    maxResponseBytes: config.limits.maxCloudResponseBytes,
    maxJsonDepth: config.limits.maxJsonDepth,
    clockSynced: () => core.clockSync.synced,
  });
}

/**
 * With MQTT, the channels it carries go to the broker; everything else (and all of it without MQTT)
 * goes to the device API: state reports and job updates each to an endpoint of their own.
 */
function addHttpFlusher(core: Core, q: Queueing, http: CloudHttpClient): void {
  const { config, store, monitor, uuid } = core;
  const sink = new HttpSink(http, uuid, mqttBrokerUrls(config.mqtt).length > 0 ? MQTT_CHANNELS : undefined, {
    [STATE_CHANNEL]: new StateDelivery(http, uuid, store, monitor),
    [JOBS_CHANNEL]: new JobUpdateDelivery(http, uuid, monitor),
    [HEALTH_CHANNEL]: new HealthDelivery(http, uuid, monitor),
  });
  addFlusher(core, q, sink);
}
