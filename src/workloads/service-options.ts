import { z } from 'zod';

/**
 * A service's container options (issue #18): limits, user, entrypoint, read-only root, tmpfs. All are
 * optional without defaults, so a target that does not set them hashes as before (no recreation on upgrade).
 */

const UNITS: Readonly<Record<string, number>> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
const SIZE_RE = /^(?<n>\d+(?:\.\d+)?)\s*(?<unit>[bkmg]?)(?:i?b)?$/i;
export const SIZE_EXPECTED = 'a size: bytes as an integer, or a string like "64m", "256m", "1g" (units b, k, m, g; 1024-based)';

/** Bytes of a size ("256m", "1g", 1048576), or undefined when it is not one. */
export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = SIZE_RE.exec(value.trim());
  const unit = UNITS[(m?.groups?.unit ?? '').toLowerCase()];
  if (!m?.groups?.n || unit === undefined) return undefined;
  const bytes = Math.floor(Number(m.groups.n) * unit);
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : undefined;
}

// The engine refuses a memory limit under 6 MiB; said here so the target is refused, not the create.
const MIN_MEMORY = 6 * 1024 ** 2;
const memorySchema = z.union([z.number(), z.string()]).refine((v) => (parseSize(v) ?? 0) >= MIN_MEMORY, `${SIZE_EXPECTED}, at least 6m (the engine's minimum)`);

const USER_RE = /^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}|\d{1,10})(?::(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}|\d{1,10}))?$/;
const ABS_PATH = /^\/[^\s:,]*$/;
const TMPFS_OPT = /^(?:size=(?:\d+(?:\.\d+)?[bkmg]?)|mode=[0-7]{3,4}|uid=\d+|gid=\d+|noexec|exec|nosuid|suid|nodev|dev|ro|rw)$/i;
export const TMPFS_EXPECTED = 'a tmpfs "/path[:size=64m,mode=1777]" (options: size, mode, uid, gid, noexec, nosuid, nodev, ro) or { "path": "/path", "size": "64m", "mode": "1777" }';

/** A tmpfs as a path and the engine's option string, or undefined when it is not one. */
export function parseTmpfs(value: unknown): { path: string; options: string } | undefined {
  if (typeof value === 'string') {
    const i = value.indexOf(':');
    const path = i < 0 ? value : value.slice(0, i);
    const options = i < 0 ? '' : value.slice(i + 1);
    if (!ABS_PATH.test(path) || path.split('/').includes('..')) return undefined;
    if (options !== '' && !options.split(',').every((o) => TMPFS_OPT.test(o))) return undefined;
    return { path, options };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const { path, size, mode, ...rest } = value as Record<string, unknown>;
  if (Object.keys(rest).length > 0 || typeof path !== 'string') return undefined;
  const opts: string[] = [];
  if (size !== undefined) {
    const bytes = parseSize(size);
    if (bytes === undefined) return undefined;
    opts.push(`size=${bytes}`);
  }
  if (mode !== undefined) {
    if (typeof mode !== 'string' || !/^[0-7]{3,4}$/.test(mode)) return undefined;
    opts.push(`mode=${mode}`);
  }
  return parseTmpfs(opts.length > 0 ? `${path}:${opts.join(',')}` : path);
}

const tmpfsEntry = z.union([z.string(), z.record(z.string(), z.unknown())]).refine((v) => parseTmpfs(v) !== undefined, TMPFS_EXPECTED);

/** Spread into the service schema (target-schema.ts). */
export const serviceOptionFields = {
  /** CPUs the container may use, e.g. 0.5 (the engine's NanoCpus). */
  cpus: z.number().positive().max(1024).optional(),
  memory: memorySchema.optional(),
  memoryReservation: memorySchema.optional(),
  user: z.string().regex(USER_RE, 'a user "uid[:gid]" or "name[:group]"').optional(),
  entrypoint: z.array(z.string()).min(1).optional(),
  readOnly: z.boolean().optional(),
  tmpfs: z.array(tmpfsEntry).max(32).optional(),
};

/** The options only a container can have, each with why a process does not take it. */
const NOT_FOR_PROCESSES: Readonly<Record<keyof typeof serviceOptionFields, string>> = {
  cpus: 'a process has no CPU limit here (a cgroup limit needs a container; nice or rlimits would not hold it)',
  memory: 'a process has no memory limit here (RLIMIT_AS counts address space, not memory, and breaks runtimes that reserve it)',
  memoryReservation: 'a process has no memory reservation (containers only)',
  user: 'a process runs as workloads.processUser, set in the device\'s local config; a target cannot choose it',
  entrypoint: 'a process has no entrypoint: its command is the program and its arguments',
  readOnly: 'a process has no root file system of its own (containers only)',
  tmpfs: 'a process has no mounts of its own (containers only)',
};

/** Issues for the container options a process service sets (raw or parsed spec). */
export function processOptionIssues(svc: Readonly<Record<string, unknown>>, which: string): { path: string[]; message: string }[] {
  return Object.entries(NOT_FOR_PROCESSES)
    .filter(([key]) => svc[key] !== undefined && !(key === 'readOnly' && svc[key] === false))
    .map(([key, why]) => ({ path: [key], message: `no ${key} ${which}: ${why}` }));
}
