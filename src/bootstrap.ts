import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Agent } from './agent.js';
import { prepareDataDir, trustedFile } from './boot/data-dir.js';
import { DataDirDisk, RESERVE_FILE } from './boot/disk.js';
import { IDENTITY_FILE, LEGACY_KEY_FILE, loadIdentity } from './boot/identity.js';
import { lockDataDir, type DataDirLock } from './boot/lock.js';
import type { ConfigSource } from './config/fallback.js';
import { resolveWithLastKnownGood } from './config/last-known-good.js';
import { formatIssues, loadConfig, redactConfig, resolveDataDir, type ConfigResult } from './config/load.js';
import { defaultConfig, type AgentConfig } from './config/schema.js';
import { MIGRATIONS } from './database-schema.js';
import { COUNTER_MIRROR_FILE, restoreCounters } from './outbox/counter-mirror.js';
import { countCorruptLosses, rebaseLedger } from './outbox/salvage-losses.js';
import { isCorruptionError } from './store/integrity.js';
import { writePendingSalvage } from './store/quarantine.js';
import { Store } from './store/store.js';
import { TARGET_MIRROR_FILE } from './store/target-mirror.js';
import { systemClock } from './util/clock.js';
import { AgentError, errorMessage } from './util/errors.js';
import { HeldListener } from './util/held-listener.js';
import { createLogger, type Logger, type LoggerOptions } from './util/logger.js';
import { AgentLogTap } from './logs/agent-tap.js';
import type { LauncherLink } from './lifecycle/child-link.js';
import { latestVersion } from './store/migrations.js';

/** Where agents before `identity.json` kept a generated uuid; read once at the upgrade (see loadIdentity). */
export const LEGACY_UUID_KEY = 'device.uuid';

export function databasePath(dataDir: string): string {
  return join(dataDir, 'agent.db');
}

/** The local API's and the local broker's ports, bound before the rest of the start (see HeldListener). */
export interface EarlyListeners {
  api?: HeldListener;
  broker?: HeldListener;
}

export interface BootOptions {
  configFile?: string;
  dataDir?: string;
  env: NodeJS.ProcessEnv;
  /** Overrides applied after validation (the demo uses it to point at its own cloud). */
  logDestination?: NodeJS.WritableStream;
  /** Ports bound before this was even loaded (cli.ts); else they are bound here, once the config is read. */
  listeners?: EarlyListeners;
  /** The launcher that started this agent (`iotistic-agent launch`), if any. */
  launcher?: LauncherLink;
  /** The process's stdout stream, shared across in-process restarts (createLogger's `stdout`). */
  stdout?: LoggerOptions['stdout'];
}

export interface Booted {
  agent: Agent;
  config: AgentConfig;
  logger: Logger;
  source: 'file' | 'last-known-good';
}

/**
 * Loads the config, opens the store and builds the agent. A config that fails falls back to the
 * last-known-good one kept in the store; with none, this throws CONFIG_INVALID with every reason.
 */
export async function bootAgent(opts: BootOptions): Promise<Booted> {
  // Files the agent creates (database, keys, logs) are private to it.
  process.umask(0o077);
  const dataDir = resolveDataDir({ flag: opts.dataDir, file: opts.configFile, env: opts.env, fallback: defaultConfig().dataDir });
  const loaded = loadConfig({ file: opts.configFile, env: opts.env });
  const logging = loaded.ok ? loaded.config.logging : defaultConfig().logging;
  // The agent's own records at or above logs.agentLevel are kept for the `agent` log from the first one on.
  const agentLevel = loaded.ok ? loaded.config.logs.agentLevel : defaultConfig().logs.agentLevel;
  const shipsOwn = agentLevel !== 'off' && (loaded.ok ? loaded.config.logs.enabled : true);
  const logTap = shipsOwn ? new AgentLogTap(agentLevel) : undefined;
  const logger = createLogger({
    level: logging.level,
    format: logging.format,
    ...(opts.logDestination ? { destination: opts.logDestination } : {}),
    ...(opts.stdout ? { stdout: opts.stdout } : {}),
    ...(logTap ? { tap: { level: logTap.level, stream: logTap.stream } } : {}),
  });
  for (const w of loaded.warnings) logger.warn(w);

  // Local apps connecting during the start wait for their answer instead of being refused. Only for
  // the config file's ports: a config that fails is replaced by the last-known-good one, read later.
  const listeners = opts.listeners ?? (loaded.ok ? await bindEarly(loaded.config) : {});
  try {
    return await bootWithRetry({ opts, dataDir, loaded, logger, listeners, logTap });
  } catch (err) {
    await Promise.all([listeners.api?.close(), listeners.broker?.close()]);
    throw err;
  }
}

async function bindEarly(config: AgentConfig): Promise<EarlyListeners> {
  const [api, broker] = await Promise.all([
    HeldListener.bind(config.api.host, config.api.port),
    config.features.localBroker ? HeldListener.bind(config.localBroker.host, config.localBroker.port) : undefined,
  ]);
  return { ...(api ? { api } : {}), ...(broker ? { broker } : {}) };
}

async function bootWithRetry(args: { opts: BootOptions; dataDir: string; loaded: ConfigResult; logger: Logger; listeners: EarlyListeners; logTap: AgentLogTap | undefined }): Promise<Booted> {
  const { dataDir, logger } = args;
  // Nothing touches the data dir's files before it is checked and locked.
  prepareDataDir(dataDir, logger);
  for (let attempt = 1; ; attempt++) {
    const lock = lockDataDir(dataDir, logger, systemClock.now());
    try {
      return await bootLocked({ ...args, lock });
    } catch (err) {
      lock.release();
      // Damage the quick checks at open did not see (they do not read every page) surfaced while
      // starting: without this, every start would fail on the same page and the device would stay
      // down. The salvage marker makes the next open quarantine and salvage the file: start once more.
      if (attempt > 1 || !corruptionIn(err)) throw err;
      const db = databasePath(dataDir);
      logger.error({ file: db, err: errorMessage(err) }, `the database is damaged (${errorMessage(err)}, found while starting): quarantining and salvaging it`);
      writePendingSalvage(db, { reason: `found while starting: ${errorMessage(err)}`, at: new Date(systemClock.now()).toISOString() });
    }
  }
}

/** Whether `err`, or an error it wraps, says the database file is damaged. */
function corruptionIn(err: unknown): boolean {
  for (let e = err, depth = 0; e !== undefined && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (isCorruptionError(e)) return true;
  }
  return false;
}

/**
 * Opens the database on any disk. Full (less free than the reserve, or the open says so): the
 * reserve is given back first; with none left, the database is opened in exclusive locking mode,
 * which needs no `-shm` file (this process holds the data dir lock anyway).
 */
function openStore(path: string, logger: Logger, disk: DataDirDisk, loaded: ConfigResult): Store {
  const open = (exclusive = false): Store =>
    Store.open({
      path,
      logger,
      clock: systemClock,
      migrations: MIGRATIONS,
      synchronous: loaded.ok ? loaded.config.store.synchronous : 'full',
      checkpoint: loaded.ok ? loaded.config.store.checkpoint : 'background',
      exclusive,
      // The full check reads every page: it runs once the agent is up (Agent.start), so a start stays short.
      integrityCheck: 'background',
      // The outbox's counters come back from their copy if the damage took them; then the messages
      // lost with the corrupt database become its `corrupt` drops, per channel, and the loss ledger balances again.
      onSalvaged: (db, salvage) => {
        restoreCounters(db, join(dirname(path), COUNTER_MIRROR_FILE), logger);
        countCorruptLosses(db, salvage, logger);
        rebaseLedger(db, logger);
      },
      targetMirror: join(dirname(path), TARGET_MIRROR_FILE),
    });
  disk.releaseIfFull();
  try {
    return open();
  } catch (err) {
    if (!isDiskFull(err)) throw err;
    if (disk.release(errorMessage(err))) {
      try {
        return open();
      } catch (again) {
        if (!isDiskFull(again)) throw again;
      }
    }
    logger.warn({ file: path, err: errorMessage(err) }, `the disk is full: opened ${path} in exclusive locking mode (WAL index in memory, checkpoints inline) until the next start`);
    return open(true);
  }
}

function isDiskFull(err: unknown): boolean {
  const seen = [err, (err as { cause?: unknown }).cause];
  return seen.some((e) => {
    const code = String((e as { code?: unknown } | undefined)?.code ?? '');
    return code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'SQLITE_IOERR_SHMSIZE' || /database or disk is full|ENOSPC/.test(errorMessage(e));
  });
}

async function bootLocked(args: { opts: BootOptions; dataDir: string; loaded: ConfigResult; logger: Logger; lock: DataDirLock; listeners: EarlyListeners; logTap: AgentLogTap | undefined }): Promise<Booted> {
  const { opts, dataDir, loaded, logger, lock, listeners, logTap } = args;
  // The agent's modules (the API, the brokers, the runtimes' clients) load after the ports are bound.
  const { Agent } = await import('./agent.js');
  // A state file someone else owns or may write (planted before the dir was repaired) is moved aside:
  // a planted database could carry a target that runs their commands.
  const db = databasePath(dataDir);
  for (const path of [db, `${db}-wal`, `${db}-shm`, `${db}.clean`, join(dataDir, RESERVE_FILE), join(dataDir, IDENTITY_FILE), join(dataDir, LEGACY_KEY_FILE), join(dataDir, TARGET_MIRROR_FILE)]) {
    if (existsSync(path)) trustedFile(path, logger, systemClock.now());
  }
  const defaults = defaultConfig();
  const disk = new DataDirDisk({
    dataDir,
    reserveBytes: (loaded.ok ? loaded.config : defaults).store.diskReserveBytes,
    minFreeBytes: (loaded.ok ? loaded.config : defaults).settings.offline.minFreeDiskBytes,
    logger,
    now: () => systemClock.now(),
  });
  const store = openStore(db, logger, disk, loaded);
  let agent: Agent;
  let source: Booted['source'];
  let config: AgentConfig;
  try {
    ({ agent, source, config } = buildAgent({ opts, dataDir, loaded, logger, lock, store, disk, listeners, Agent, logTap }));
  } catch (err) {
    // Closed, so that a retry can move the file aside.
    closeQuietly(store);
    throw err;
  }
  try {
    await agent.start();
  } catch (err) {
    await agent.stop().catch(() => undefined);
    throw err;
  }
  return { agent, config, logger, source };
}

/** The config in force (the file's, or the last-known-good one), the identity, and the agent on `store`. */
function buildAgent(args: {
  opts: BootOptions;
  dataDir: string;
  loaded: ConfigResult;
  logTap: AgentLogTap | undefined;
  logger: Logger;
  lock: DataDirLock;
  store: Store;
  disk: DataDirDisk;
  listeners: EarlyListeners;
  Agent: typeof Agent;
}): { agent: Agent; source: Booted['source']; config: AgentConfig } {
  const { opts, dataDir, loaded, logger, lock, store, disk, listeners, Agent, logTap } = args;
  const resolved = resolveWithLastKnownGood(loaded, store, opts.configFile, systemClock.now(), (err) =>
    logger.warn({ err: errorMessage(err) }, `could not save the last-known-good config (${errorMessage(err)}); the next start tries again`),
  );
  if (resolved.source === 'none') {
    throw new AgentError('CONFIG_INVALID', `the config ${opts.configFile ?? '(environment)'} is invalid and there is no last-known-good config to fall back on:\n${formatIssues(resolved.issues)}`);
  }
  if (resolved.source === 'last-known-good') {
    logger.error(
      { file: opts.configFile, issues: resolved.issues, lastKnownGoodSavedAt: new Date(resolved.savedAt).toISOString() },
      `the config ${opts.configFile ?? '(environment)'} is invalid; running on the last-known-good config:\n${formatIssues(resolved.issues)}`,
    );
  }
  const identity = loadIdentity({ dataDir, logger, now: systemClock.now(), legacyUuid: () => store.getKv<string>(LEGACY_UUID_KEY) });
  const config: AgentConfig = { ...resolved.config, dataDir };
  logger.debug({ config: redactConfig(config) }, 'effective config');
  const file = opts.configFile ?? null;
  // Shown in the API, status, dashboard, metrics and the health report, not only in this log.
  const configSource: ConfigSource =
    resolved.source === 'last-known-good' && !loaded.ok
      ? { source: 'last-known-good', file, reason: loaded.failure, issues: resolved.issues, lastKnownGoodSavedAt: resolved.savedAt, since: systemClock.now() }
      : { source: 'file', file };
  const lifecycle = { link: opts.launcher, configFile: opts.configFile, schemaVersion: latestVersion(MIGRATIONS), env: opts.env };
  const agent = new Agent({ config, store, logger, configSource, identity, disk, listeners, lifecycle, ...(logTap ? { logTap } : {}), onStopped: () => lock.release() });
  return { agent, source: resolved.source, config };
}

function closeQuietly(store: Store): void {
  try {
    store.close();
  } catch {
    // A damaged file may fail its last checkpoint: it is closed all the same.
  }
}
