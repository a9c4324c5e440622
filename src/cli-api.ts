import { readLocalApiKey } from './boot/identity.js';
import { resolveDataDir } from './config/load.js';
import { defaultConfig } from './config/schema.js';
import type { ApiAccess } from './cli-client.js';
import { statusConfig } from './status-target.js';

/** Exit code for a configuration error (sysexits' EX_CONFIG), as `run` uses it. */
const EXIT_CONFIG = 78;

/** How a CLI command finds the local API of a running agent (`status`, `queue`, `logs`). */
export interface ApiAccessOptions {
  config?: string;
  dataDir?: string;
  api?: string;
  key?: string;
}

/**
 * The local API's base URL and key: `--api`, else the config's address (127.0.0.1 for 0.0.0.0);
 * `--key`, else IOTISTIC_API_LOCAL_API_KEY, the config's, or the one in the data dir. Warnings go to
 * stderr; without a usable config or a key it exits, saying why.
 */
export function localApiAccess(opts: ApiAccessOptions): ApiAccess {
  const found = statusConfig(opts.config, process.env);
  if (!found.ok && !opts.api) {
    process.stderr.write(`iotistic-agent: ${found.message}\n`);
    process.exit(EXIT_CONFIG);
  }
  const cfg = found.ok ? found.config : defaultConfig();
  if (!found.ok) process.stderr.write(`warning: ${found.message.split('\n')[0]} (see \`config check\`); using --api ${opts.api}\n`);
  else if (found.config.warning) process.stderr.write(`warning: ${found.config.warning}\n`);
  const dataDir = resolveDataDir({ flag: opts.dataDir, file: opts.config, env: process.env, fallback: cfg.dataDir });
  const apiHost = cfg.api.host === '0.0.0.0' ? '127.0.0.1' : cfg.api.host;
  const base = (opts.api ?? `http://${apiHost.includes(':') ? `[${apiHost}]` : apiHost}:${cfg.api.port}`).replace(/\/$/, '');
  const [key, keyFrom] = pickKey(opts.key, process.env.IOTISTIC_API_LOCAL_API_KEY, cfg.api.localApiKey, opts.config, dataDir);
  if (!key) {
    process.stderr.write(`iotistic-agent: no local API key: none in ${dataDir} (use --data-dir or --key)\n`);
    process.exit(1);
  }
  return { base, key, keyFrom };
}

/** The key and where it was read from, first found: the flag, the environment, the config, the data dir. */
function pickKey(flag: string | undefined, env: string | undefined, configured: string | undefined, file: string | undefined, dataDir: string): [string | undefined, string] {
  if (flag) return [flag, '--key'];
  if (env) return [env, 'IOTISTIC_API_LOCAL_API_KEY'];
  if (configured) return [configured, `api.localApiKey in ${file ?? 'the config'}`];
  return [readLocalApiKey(dataDir), `${dataDir}/identity.json`];
}
