import { readFileSync } from 'node:fs';
import { applyEnvOverrides } from './config/env.js';
import { formatIssues, loadConfig } from './config/load.js';
import { agentConfigSchema, defaultConfig } from './config/schema.js';
import { NETWORK_REASONS } from './util/network-errors.js';

/** What `status` needs from a config: where the local API listens, its key, the data dir. */
export interface StatusConfig {
  api: { host: string; port: number; localApiKey?: string | undefined };
  dataDir: string;
  /** Set when the file is broken and only its `api` section is used: said on stderr, never silent. */
  warning?: string;
}

/**
 * The config as `status` reads it. A broken file is never passed over in silence: when its `api`
 * section is still valid that section is used with a warning naming it (a running agent on its
 * last-known-good config is what `status` is for), otherwise this is an error with every issue.
 */
export function statusConfig(file: string | undefined, env: NodeJS.ProcessEnv): { ok: true; config: StatusConfig } | { ok: false; message: string } {
  if (file === undefined) return { ok: true, config: defaultConfig() };
  const loaded = loadConfig({ file, env });
  if (loaded.ok) return { ok: true, config: loaded.config };
  const issues = `the config ${file} is invalid:\n${formatIssues(loaded.issues)}`;
  let raw: Record<string, unknown>;
  try {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) raw = parsed as Record<string, unknown>;
    else throw new Error('not an object');
  } catch {
    return { ok: false, message: `${issues}\nthe local API address cannot be read from it: fix it or pass --api <url> (and --key or --data-dir)` };
  }
  applyEnvOverrides(raw, env);
  const api = agentConfigSchema.shape.api.safeParse(raw.api);
  const dataDir = typeof raw.dataDir === 'string' && raw.dataDir !== '' ? raw.dataDir : defaultConfig().dataDir;
  if (!api.success || loaded.issues.some((i) => i.path === 'dataDir' || i.path === 'api' || i.path.startsWith('api.'))) {
    return { ok: false, message: `${issues}\nits api section cannot be used: fix it or pass --api <url> (and --key or --data-dir)` };
  }
  const where = `${api.data.host}:${api.data.port}`;
  return {
    ok: true,
    config: {
      api: api.data,
      dataDir,
      warning: `${issues}\nusing only its api section (${where}) and data dir (${dataDir}); an agent that started since the edit runs on its last-known-good config`,
    },
  };
}

/** Why a request to the local API got no answer, for people: "no agent answers at ... (connection refused, ECONNREFUSED): is it running? ...". */
export function noAnswer(base: string, err: unknown): string | undefined {
  const e = err as { name?: string; cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return `the agent at ${base} did not answer within 5 s (is it stuck, or is something else listening there?)`;
  if (e.name !== 'TypeError' || !e.cause) return undefined;
  const code = e.cause.code;
  const words = code ? NETWORK_REASONS[code] : undefined;
  const cause = words ? `${words}, ${code}` : code ?? e.cause.message ?? 'no answer';
  return `no agent answers at ${base} (${cause}): is it running? (systemctl status iotistic-agent) Is the address right? (--api, or the config's api section)`;
}
