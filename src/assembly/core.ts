import type { PowerControl } from '../actions/power.js';
import type { DataDirDisk } from '../boot/disk.js';
import type { Identity } from '../boot/identity.js';
import { RetryPolicy } from '../resilience/retry-policy.js';
import type { ConfigSource } from '../config/fallback.js';
import { mqttBrokerUrls, type AgentConfig } from '../config/schema.js';
import { backoffFromSettings } from '../resilience/backoff.js';
import { ChannelProbes, offlineFloorApplies } from '../resilience/channel-probes.js';
import { ClockSync, wakeOnClockSync } from '../resilience/clock-sync.js';
import { ConnectionMonitor } from '../resilience/connection-monitor.js';
import { DegradationController } from '../resilience/degradation.js';
import { SqliteOutageLog } from '../resilience/outage-log.js';
import { isCorruptionError } from '../store/integrity.js';
import type { AgentLogTap } from '../logs/agent-tap.js';
import type { LauncherLink } from '../lifecycle/child-link.js';
import type { Store } from '../store/store.js';
import { systemClock, type Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { HeldListener } from '../util/held-listener.js';
import { IdGenerator } from '../util/ids.js';
import type { Logger } from '../util/logger.js';
import { LoopRunner } from '../util/loops.js';
import { systemRandom, type Random } from '../util/random.js';
import type { SinkChannel } from './flusher-router.js';

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
  /** The local API's and the local broker's ports, bound early in the start (bootstrap.ts); adopted by them. */
  listeners?: { api?: HeldListener; broker?: HeldListener };
  /** Whether the wall clock is synced (default: timesyncd, timedatectl, else the build date). */
  clockSync?: ClockSync;
  /** After the store is closed (the data dir lock is released here). */
  onStopped?: () => void;
  /** The logger's tap of the agent's own records (bootstrap.ts), shipped as the `agent` log. */
  logTap?: AgentLogTap;
  /** Self-update and config update (docs/lifecycle.md): the launcher's link when there is one, the config file. */
  lifecycle?: LifecycleDeps;
  /** What reboots or powers off the device; default: the command of actions.rebootCommand / shutdownCommand. */
  power?: PowerControl;
}

export interface LifecycleDeps {
  link: LauncherLink | undefined;
  configFile: string | undefined;
  /** The newest schema version this agent knows (its migrations'). */
  schemaVersion: number;
  env: NodeJS.ProcessEnv;
}

/** What every part is built with: the deps, defaults filled in, and the connection's watchers. */
export interface Core {
  config: AgentConfig;
  store: Store;
  logger: Logger;
  clock: Clock;
  random: Random;
  configSource: ConfigSource;
  disk: DataDirDisk | undefined;
  uuid: string;
  localKey: string;
  /** This agent's version (in reports, the API, the user agent). */
  version: string;
  loops: LoopRunner;
  ids: IdGenerator;
  monitor: ConnectionMonitor;
  probes: ChannelProbes;
  degradation: DegradationController;
  /** Whether the wall clock is synced: the outbox's timestamps, TLS errors and the API read it. */
  clockSync: ClockSync;
  /** A retry policy of its own (a backoff) for a loop whose requests go over `channel`. */
  retryFor(channel: SinkChannel): RetryPolicy;
  /** The offline floor of a channel's loops, read at each failure (see offlineFloorApplies). */
  offlineFloorMs(channel: SinkChannel): () => number;
  lifecycle: LifecycleDeps | undefined;
}

/** `builtAt`: this agent's build date, the earliest wall time that can be right (clock-sync.ts). */
export function buildCore(deps: AgentDeps, version: string, builtAt: number): Core {
  const { config, store, logger } = deps;
  const clock = deps.clock ?? systemClock;
  const random = deps.random ?? systemRandom;
  const offline = config.settings.offline;
  // A loop that fails on a damaged page makes the store check the whole file.
  const loops = new LoopRunner({ logger, clock, onFailure: (_name, err) => isCorruptionError(err) && store.suspectCorruption(errorMessage(err)) });
  const ids = new IdGenerator(() => clock.now());
  const brokers = mqttBrokerUrls(config.mqtt);
  const monitor = new ConnectionMonitor({
    clock,
    offlineAfterFailures: offline.offlineAfterFailures,
    outageLog: new SqliteOutageLog(store),
    channels: [...(config.cloud.apiUrl ? ['api'] : []), ...(brokers.length > 0 ? ['mqtt'] : [])],
    logger: logger.child({ part: 'connection' }),
  });
  // Each channel is probed and woken on its own: the API down while MQTT works is still probed. The
  // `mqtt` probe handshakes with every broker of mqtt.urls: the session moves to whichever is up.
  const endpoints = { ...(config.cloud.apiUrl ? { api: config.cloud.apiUrl } : {}), ...(brokers.length > 0 ? { mqtt: brokers } : {}) };
  const probes = new ChannelProbes({
    monitor,
    endpoints,
    clock,
    random,
    logger,
    maxIntervalMs: offline.probeMaxIntervalSeconds * 1000,
    wakeSpreadMs: offline.wakeSpreadSeconds * 1000,
  });
  const degradation = new DegradationController({
    status: monitor,
    clock,
    random,
    logger,
    enabled: offline.enableGracefulDegradation,
    thresholdMs: offline.offlineThresholdSeconds * 1000,
  });
  // Offline for want of a connection, the probe's handshakes are the way back; the loops' own
  // requests slow to one per offlineRetryIntervalSeconds so a returning cloud is not met by them.
  const offlineFloorMs = (channel: SinkChannel) => (): number =>
    offlineFloorApplies({ offline: monitor.channelStatus(channel) === 'offline', lastFailureKind: monitor.lastFailureKind(channel), wayOpen: probes.wayOpen(channel) })
      ? offline.offlineRetryIntervalSeconds * 1000
      : 0;
  const clockSync = deps.clockSync ?? new ClockSync({ clock, logger: logger.child({ part: 'clock' }), notBefore: builtAt });
  wakeOnClockSync(clockSync, Object.keys(endpoints).map((channel) => probes.wakeup(channel)));
  const retryFor = (channel: SinkChannel): RetryPolicy =>
    new RetryPolicy({ backoff: backoffFromSettings(offline, { clock, random }), sleeper: probes.wakeup(channel), clock, floorMs: offlineFloorMs(channel) });
  return {
    config,
    store,
    logger,
    clock,
    random,
    configSource: deps.configSource ?? { source: 'file', file: null },
    disk: deps.disk,
    uuid: config.device.uuid ?? deps.identity.uuid,
    localKey: config.api.localApiKey ?? deps.identity.localApiKey,
    version,
    loops,
    ids,
    monitor,
    probes,
    degradation,
    clockSync,
    retryFor,
    offlineFloorMs,
    lifecycle: deps.lifecycle,
  };
}
