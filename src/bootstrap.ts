import { mkdirSync } from 'node:fs';
import { Agent, databasePath } from './agent.js';
import { resolveWithLastKnownGood } from './config/last-known-good.js';
import { formatIssues, loadConfig, redactConfig, resolveDataDir } from './config/load.js';
import { defaultConfig, type AgentConfig } from './config/schema.js';
import { Store } from './store/store.js';
import { systemClock } from './util/clock.js';
import { AgentError } from './util/errors.js';
import { createLogger, type Logger } from './util/logger.js';

export interface BootOptions {
  configFile?: string;
  dataDir?: string;
  env: NodeJS.ProcessEnv;
  /** Overrides applied after validation (the demo uses it to point at its own cloud). */
  logDestination?: NodeJS.WritableStream;
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
  const logger = createLogger({ level: logging.level, format: logging.format, ...(opts.logDestination ? { destination: opts.logDestination } : {}) });
  for (const w of loaded.warnings) logger.warn(w);

  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const store = Store.open({
    path: databasePath(dataDir),
    logger,
    clock: systemClock,
    synchronous: loaded.ok ? loaded.config.store.synchronous : 'full',
    checkpoint: loaded.ok ? loaded.config.store.checkpoint : 'background',
    // The full check reads every page: it runs once the agent is up (Agent.start), so a start stays short.
    integrityCheck: 'background',
  });
  const resolved = resolveWithLastKnownGood(loaded, store, opts.configFile, systemClock.now());
  if (resolved.source === 'none') {
    store.close();
    throw new AgentError('CONFIG_INVALID', `the config ${opts.configFile ?? '(environment)'} is invalid and there is no last-known-good config to fall back on:\n${formatIssues(resolved.issues)}`);
  }
  if (resolved.source === 'last-known-good') {
    logger.error(
      { file: opts.configFile, issues: resolved.issues, lastKnownGoodSavedAt: new Date(resolved.savedAt).toISOString() },
      `the config ${opts.configFile ?? '(environment)'} is invalid; running on the last-known-good config:\n${formatIssues(resolved.issues)}`,
    );
  }
  const config: AgentConfig = { ...resolved.config, dataDir };
  logger.debug({ config: redactConfig(config) }, 'effective config');
  const agent = new Agent({ config, store, logger });
  try {
    await agent.start();
  } catch (err) {
    await agent.stop().catch(() => undefined);
    throw err;
  }
  return { agent, config, logger, source: resolved.source };
}
