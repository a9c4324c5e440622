import { realpathSync } from 'node:fs';
import { dirname } from 'node:path';
import { loadConfig, resolveDataDir } from '../config/load.js';
import { defaultConfig } from '../config/schema.js';
import { systemClock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { createLogger } from '../util/logger.js';
import { systemRandom } from '../util/random.js';
import { Launcher } from './launcher.js';

/** `iotistic-agent launch`: runs the launcher until SIGTERM or SIGINT; resolves with the exit code. */
export async function runLauncher(o: { configFile: string; dataDir: string | undefined; env: NodeJS.ProcessEnv; entry: string }): Promise<number> {
  process.umask(0o077);
  const defaults = defaultConfig();
  // A config that fails is the agent's to report (it falls back to its last-known-good one): the launcher runs it all the same.
  const loaded = loadConfig({ file: o.configFile, env: o.env });
  const config = loaded.ok ? loaded.config : defaults;
  const dataDir = resolveDataDir({ flag: o.dataDir, file: o.configFile, env: o.env, fallback: defaults.dataDir });
  const logger = createLogger({ level: config.logging.level, format: config.logging.format }).child({ part: 'launcher' });
  // <root>/dist/bundle/cli.js (or dist/src/cli.js in a source tree): the install this launcher belongs to.
  const ownRoot = dirname(dirname(dirname(realpathSync(o.entry))));
  const launcher = new Launcher({
    configFile: o.configFile,
    dataDir,
    ...(o.dataDir ? { dataDirFlag: o.dataDir } : {}),
    ownRoot,
    nodePath: process.execPath,
    nodeArgs: process.execArgv,
    update: (file = o.configFile) => {
      const now = loadConfig({ file, env: o.env });
      return now.ok ? now.config.update : config.update;
    },
    logger,
    clock: systemClock,
    random: systemRandom,
    env: o.env,
  });
  const stop = new AbortController();
  process.on('SIGTERM', () => stop.abort());
  process.on('SIGINT', () => stop.abort());
  let code = 0;
  try {
    await launcher.run(stop.signal);
    logger.info('the agent stopped; the launcher exits');
  } catch (err) {
    logger.error({ err: errorMessage(err) }, `the launcher failed: ${errorMessage(err)}`);
    code = 1;
  }
  // A pretty log on a terminal goes through a worker: its last lines are written before the exit.
  await new Promise<void>((resolve) => logger.flush(() => resolve()));
  return code;
}
