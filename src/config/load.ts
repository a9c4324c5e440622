import { readFileSync } from 'node:fs';
import { applyEnvOverrides } from './env.js';
import { describeValue, formatIssue, fromZodIssues, type ConfigIssue } from './issues.js';
import { agentConfigSchema, LIMIT_DEFAULTS, mqttBrokerUrls, SECRET_KEYS, type AgentConfig } from './schema.js';
import { jsonDeeperThan } from '../util/json-limits.js';

/** Why a file failed: unreadable, not JSON, not an object, or values the schema refuses. */
export type ConfigFailure = 'unreadable' | 'not-json' | 'not-an-object' | 'invalid';

export type ConfigResult =
  | { ok: true; config: AgentConfig; warnings: string[] }
  | { ok: false; failure: ConfigFailure; issues: ConfigIssue[]; warnings: string[] };

export interface LoadOptions {
  /** Path of the JSON config file; undefined means "embedded defaults plus environment". */
  file?: string;
  env?: NodeJS.ProcessEnv;
}

function isSecretPath(path: string): boolean {
  // A registries value of the wrong shape (an array, a string, broken JSON in its variable) may hold a password.
  if (path === 'workloads.registries' || path.startsWith('workloads.registries.')) return true;
  return SECRET_KEYS.has(path.split('.').pop() ?? '');
}

/** Reads and validates a config: file, then `IOTISTIC_*` overrides, then the schema's defaults. */
export function loadConfig(opts: LoadOptions): ConfigResult {
  const warnings: string[] = [];
  let raw: unknown = {};
  if (opts.file !== undefined) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      // Stryker disable next-line LogicalOperator,StringLiteral: equivalent: every error of readFileSync carries a code (ENOENT, EACCES, EISDIR...)
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      return { ok: false, failure: 'unreadable', warnings, issues: [{ path: '', source: 'file', expected: `a readable file at ${opts.file} (${code})` }] };
    }
    // Copying and describing a value recurses: a file nested past any real config is refused first.
    if (jsonDeeperThan(text, LIMIT_DEFAULTS.maxJsonDepth)) {
      return { ok: false, failure: 'invalid', warnings, issues: [{ path: '', source: 'file', expected: `a JSON object nested at most ${LIMIT_DEFAULTS.maxJsonDepth} levels deep in ${opts.file}` }] };
    }
    try {
      raw = JSON.parse(text) as unknown;
    } catch (err) {
      return {
        ok: false,
        failure: 'not-json',
        warnings,
        issues: [{ path: '', source: 'file', expected: `valid JSON in ${opts.file} (${(err as Error).message})` }],
      };
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      return { ok: false, failure: 'not-an-object', warnings, issues: [{ path: '', source: 'file', value: raw, expected: 'a JSON object' }] };
    }
  }
  const merged = structuredClone(raw) as Record<string, unknown>;
  const env = applyEnvOverrides(merged, opts.env ?? {});
  for (const name of env.unknown) warnings.push(`${name} is not a setting and was ignored`);
  const parsed = agentConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const sourceOf = (path: string): string => {
      for (const [key, name] of env.applied) if (path === key || path.startsWith(`${key}.`)) return name;
      return 'file';
    };
    return { ok: false, failure: 'invalid', warnings, issues: fromZodIssues(parsed.error.issues, merged, sourceOf, isSecretPath) };
  }
  return { ok: true, config: parsed.data, warnings: [...warnings, ...unusedSettings(parsed.data)] };
}

/** Settings that are valid alone but do nothing with the rest of the config: said, never silently ignored. */
function unusedSettings(c: AgentConfig): string[] {
  const out: string[] = [];
  if (c.cloud.caFile !== undefined && !c.cloud.apiUrl?.startsWith('https:')) {
    out.push(`cloud.caFile is set but cloud.apiUrl is ${c.cloud.apiUrl ? 'not https://' : 'not set'}: the CA is not used`);
  }
  const tlsFiles = (['caFile', 'certFile', 'keyFile'] as const).filter((k) => c.mqtt[k] !== undefined);
  const brokers = mqttBrokerUrls(c.mqtt);
  if (tlsFiles.length > 0 && !brokers.some((u) => u.startsWith('mqtts:'))) {
    const what = brokers.length === 0 ? 'mqtt.url is not set' : c.mqtt.urls ? 'no URL of mqtt.urls is mqtts://' : 'mqtt.url is not mqtts://';
    out.push(`${tlsFiles.map((k) => `mqtt.${k}`).join(', ')} ${tlsFiles.length === 1 ? 'is' : 'are'} set but ${what}: not used`);
  }
  return out;
}

export function formatIssues(issues: readonly ConfigIssue[]): string {
  return issues.map((i) => `  - ${formatIssue(i)}`).join('\n');
}

/** A copy of a config that is safe to log or show: secret values replaced. */
export function redactConfig<T>(value: T): T {
  if (Array.isArray(value)) return value.map((v: unknown) => redactConfig(v)) as T;
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEYS.has(k) && v !== undefined ? '[redacted]' : redactConfig(v);
  return out as T;
}

/**
 * The data dir is needed before a config is known to be good (the last-known-good copy lives
 * there), so it is found on its own: CLI flag, then environment, then the file's `dataDir` if the
 * file can be read that far, then the default.
 */
export function resolveDataDir(opts: { flag?: string; file?: string; env?: NodeJS.ProcessEnv; fallback: string }): string {
  if (opts.flag) return opts.flag;
  const fromEnv = opts.env?.IOTISTIC_DATA_DIR;
  if (fromEnv) return fromEnv;
  if (opts.file) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch {
      // An unreadable file is reported by loadConfig; here it just does not name a data dir.
      return opts.fallback;
    }
    try {
      const raw = JSON.parse(text) as { dataDir?: unknown };
      if (typeof raw === 'object' && raw !== null && typeof raw.dataDir === 'string' && raw.dataDir !== '') return raw.dataDir;
    } catch {
      // A syntax error elsewhere in the file must not move the agent to the default data dir, away
      // from its database and the last-known-good config in it: the one "dataDir" string still counts.
      const salvaged = dataDirIn(text);
      if (salvaged !== undefined) return salvaged;
    }
  }
  return opts.fallback;
}

/** The value of the one `"dataDir": "..."` member in text that is not valid JSON; undefined when not exactly one. */
function dataDirIn(text: string): string | undefined {
  const found = [...text.matchAll(/"dataDir"\s*:\s*("(?:[^"\\\n]|\\.)*")/g)];
  const literal = found.length === 1 ? found[0]?.[1] : undefined;
  if (literal === undefined) return undefined;
  try {
    const value = JSON.parse(literal) as string;
    return value === '' ? undefined : value;
  } catch {
    return undefined;
  }
}

export { describeValue };
