import type { z } from 'zod';
import { agentConfigSchema } from './schema.js';

/**
 * `IOTISTIC_*` environment overrides, derived from the schema so every setting has one and no
 * list can drift from it: `settings.offline.maxQueueSize` is `IOTISTIC_SETTINGS_OFFLINE_MAX_QUEUE_SIZE`.
 */

export const ENV_PREFIX = 'IOTISTIC_';
/** Variables with the prefix that are not settings (read by the CLI itself). */
const NOT_SETTINGS = new Set(['IOTISTIC_CONFIG']);

type LeafKind = 'number' | 'boolean' | 'string' | 'json';

export interface EnvKey {
  name: string;
  path: string[];
  kind: LeafKind;
}

interface ZodInternals {
  _zod: { def: { type: string; innerType?: unknown; shape?: Record<string, unknown> } };
}

function unwrap(schema: unknown): ZodInternals {
  let s = schema as ZodInternals;
  // Stryker disable next-line LogicalOperator: every wrapper of the list has an inner type and no other node of the schema has one
  while (['default', 'prefault', 'optional', 'nullable'].includes(s._zod.def.type) && s._zod.def.innerType) {
    s = s._zod.def.innerType as ZodInternals;
  }
  return s;
}

export function envName(path: readonly string[]): string {
  return ENV_PREFIX + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

function collect(schema: unknown, path: string[], out: EnvKey[]): void {
  const s = unwrap(schema);
  const { type, shape } = s._zod.def;
  if (type === 'object' && shape) {
    for (const [key, child] of Object.entries(shape)) {
      if (key.startsWith('$')) continue;
      collect(child, [...path, key], out);
    }
    return;
  }
  const kind: LeafKind = type === 'number' ? 'number' : type === 'boolean' ? 'boolean' : type === 'string' || type === 'enum' ? 'string' : 'json';
  out.push({ name: envName(path), path, kind });
}

export function envKeys(schema: z.ZodType = agentConfigSchema): EnvKey[] {
  const out: EnvKey[] = [];
  collect(schema, [], out);
  return out;
}

function coerce(raw: string, kind: LeafKind): unknown {
  switch (kind) {
    case 'number': {
      // Leave non-numbers as strings so validation names the variable and shows what it held.
      const n = raw.trim() === '' ? NaN : Number(raw);
      return Number.isFinite(n) ? n : raw;
    }
    case 'boolean': {
      const v = raw.trim().toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return true;
      if (['false', '0', 'no', 'off'].includes(v)) return false;
      return raw;
    }
    case 'json':
      try {
        return JSON.parse(raw) as unknown;
      } catch {
        return raw;
      }
    default:
      return raw;
  }
}

export interface EnvOverrides {
  /** Dotted path → the variable that set it. */
  applied: Map<string, string>;
  /** Prefixed variables that match no setting: likely typos, reported as warnings. */
  unknown: string[];
}

/** Writes every `IOTISTIC_*` override into `target` (mutated) and says which keys came from where. */
export function applyEnvOverrides(target: Record<string, unknown>, env: NodeJS.ProcessEnv, keys = envKeys()): EnvOverrides {
  const byName = new Map(keys.map((k) => [k.name, k]));
  const applied = new Map<string, string>();
  const unknown: string[] = [];
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || raw === undefined || NOT_SETTINGS.has(name)) continue;
    const key = byName.get(name);
    if (!key) {
      unknown.push(name);
      continue;
    }
    let node = target;
    for (const part of key.path.slice(0, -1)) {
      const next = node[part];
      if (next === null || typeof next !== 'object' || Array.isArray(next)) node[part] = {};
      node = node[part] as Record<string, unknown>;
    }
    node[key.path[key.path.length - 1] as string] = coerce(raw, key.kind);
    applied.set(key.path.join('.'), name);
  }
  return { applied, unknown: unknown.sort() };
}
