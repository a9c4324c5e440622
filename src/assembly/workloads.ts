import { join } from 'node:path';
import type { AgentConfig } from '../config/schema.js';
import type { Store } from '../store/store.js';
import type { Logger } from '../util/logger.js';
import { LocalTarget } from '../workloads/local-target.js';
import { Reconciler } from '../workloads/reconciler.js';
import { DockerRuntime } from '../workloads/runtimes/docker.js';
import { ProcessRuntime, resolveProcessUser } from '../workloads/runtimes/process.js';
import { validateTarget, type TargetState, type WorkloadPolicy } from '../workloads/target-schema.js';
import { MemoryTargetSource } from '../workloads/target-source.js';
import { SecretStore } from '../secrets/secret-store.js';
import { errorMessage } from '../util/errors.js';
import { pruneSecretDirs } from '../workloads/runtimes/secret-files.js';
import type { Core } from './core.js';

export interface Workloads {
  policy: WorkloadPolicy;
  /** The runtimes the reconciler drives (the log collector follows their output). */
  runtimes: { docker: DockerRuntime; process: ProcessRuntime };
  targets: MemoryTargetSource;
  reconciler: Reconciler;
  /** The device's secrets (cloud and local), encrypted at rest. */
  secrets: SecretStore;
  /** The config's settings with the target's `config.settings` over them, read at each use. */
  settings(): AgentConfig['settings'];
}

export function buildWorkloads(core: Core): Workloads {
  const { config, store, logger } = core;
  const w = config.workloads;
  const policy: WorkloadPolicy = { allowHostMounts: w.allowHostMounts, allowPrivileged: w.allowPrivileged, allowHostNetwork: w.allowHostNetwork, allowDevices: w.allowDevices };
  const targets = new MemoryTargetSource(storedTarget(store, policy, logger));
  const settings = (): AgentConfig['settings'] => ({ ...config.settings, ...(targets.current()?.config.settings ?? {}) });
  const secrets = new SecretStore({
    file: config.secrets.file ?? join(config.dataDir, 'secrets.enc'),
    keyFile: config.secrets.keyFile ?? join(config.dataDir, 'secrets.key'),
    clock: core.clock,
    logger: logger.child({ part: 'secrets' }),
  });
  secrets.open();
  const runtimes = buildRuntimes(core);
  // The secret files of services no longer in the target go (at start, and on every new target).
  const prune = (): void => {
    for (const root of new Set([runtimes.docker.secretsDir ?? runtimes.process.secretsDir, runtimes.process.secretsDir])) {
      try {
        pruneSecretDirs(root, targets.current());
      } catch (err) {
        logger.warn({ dir: root, err: errorMessage(err) }, 'could not remove the secret files of services gone');
      }
    }
  };
  prune();
  targets.onChange(prune);
  return { policy, targets, settings, runtimes, secrets, reconciler: buildReconciler(core, runtimes, targets, policy, settings, secrets) };
}

/**
 * The stored target is in force at once, offline or not; it is validated again in case this
 * agent's rules (or the device's policy) changed since it was stored.
 */
function storedTarget(store: Pick<Store, 'getTarget'>, policy: WorkloadPolicy, logger: Logger): TargetState | undefined {
  const stored = store.getTarget();
  if (!stored) return undefined;
  const v = validateTarget(stored.document, { policy });
  if (v.ok) return v.target;
  logger.error({ issues: v.issues }, `the stored target no longer validates and is not applied: ${v.message}`);
  return undefined;
}

function buildRuntimes(core: Core): Workloads['runtimes'] {
  const { config, clock, random, logger } = core;
  const w = config.workloads;
  const user = resolveProcessUser(w.processUser);
  // A process run as another user cannot enter the agent's 0700 data dir: its secret files live on /run (a tmpfs).
  const processSecrets = config.secrets.processDir ?? (typeof user === 'object' ? '/run/iotistic-agent/secrets' : join(config.dataDir, 'run-secrets'));
  return {
    docker: new DockerRuntime({
      clock,
      random,
      logger: logger.child({ part: 'docker' }),
      ...(w.dockerHost ? { host: w.dockerHost } : {}),
      stopTimeoutSeconds: w.stopTimeoutSeconds,
      containerLog: { maxBytes: w.containerLogMaxBytes, files: w.containerLogFiles },
      secretsDir: join(config.dataDir, 'run-secrets'),
    }),
    process: new ProcessRuntime({
      dataDir: join(config.dataDir, 'services'),
      clock,
      logger: logger.child({ part: 'process' }),
      logMaxBytes: w.processLogMaxBytes,
      logFiles: w.processLogFiles,
      stopTimeoutMs: w.stopTimeoutSeconds * 1000,
      user,
      secretsDir: processSecrets,
    }),
  };
}

function buildReconciler(core: Core, runtimes: Workloads['runtimes'], targets: MemoryTargetSource, policy: WorkloadPolicy, settings: () => AgentConfig['settings'], secrets: SecretStore): Reconciler {
  const { clock, random, logger } = core;
  return new Reconciler({
    source: targets,
    docker: runtimes.docker,
    process: runtimes.process,
    clock,
    random,
    logger: logger.child({ part: 'reconciler' }),
    reconciliationIntervalMs: () => settings().reconciliationIntervalMs,
    policy,
    deviceRegistries: core.config.workloads.registries,
    secrets,
  });
}

/** Local mode (`/v2/local/target-state`): a set target is reported; a cleared one makes the cloud's fetched. */
export function buildLocalTarget(core: Core, workloads: Workloads, on: { set(): void; cleared(): void }): LocalTarget {
  return new LocalTarget({ store: core.store, targets: workloads.targets, policy: workloads.policy, logger: core.logger, onSet: on.set, onCleared: on.cleared });
}
