import { z } from 'zod';
import { fromZodIssues, formatIssue, type ConfigIssue } from '../config/issues.js';
import { parseImageReference } from './image-ref.js';
import { NAME_EXPECTED, NAME_PATTERN } from './names.js';
import { rawApps } from './raw-target.js';
import { registryIssues } from './registry-auth.js';
import { processOptionIssues, serviceOptionFields } from './service-options.js';
import { appGraphIssues, dependsOnSchema, healthcheckSchema } from './app-graph.js';

/**
 * The target-state document of PROTOCOL.md. A document that fails here is rejected whole: the
 * last good target stays in force and the reasons (each naming the path) are reported.
 */

export { isSafeName, NAME_EXPECTED, NAME_PATTERN } from './names.js';
const NAME = NAME_PATTERN;

const PORT_RE = /^(?:(?<ip>[0-9.]+):)?(?<host>\d{1,5})(?::(?<container>\d{1,5}))(?:\/(?<proto>tcp|udp))?$/;

function portValid(spec: string): boolean {
  const m = PORT_RE.exec(spec);
  if (!m?.groups) return false;
  const host = Number(m.groups.host);
  const container = Number(m.groups.container);
  return host >= 1 && host <= 65535 && container >= 1 && container <= 65535;
}

/** A port mapping split into its parts, or undefined when it does not follow the grammar. */
export function parsePort(spec: string): { ip: string | undefined; host: number; container: number; proto: 'tcp' | 'udp' } | undefined {
  const m = PORT_RE.exec(spec);
  if (!m?.groups || !portValid(spec)) return undefined;
  return { ip: m.groups.ip, host: Number(m.groups.host), container: Number(m.groups.container), proto: m.groups.proto === 'udp' ? 'udp' : 'tcp' };
}

/** The host side of a port mapping, for the duplicate check: `ip:port/proto`. */
export function hostPortKey(spec: string): string | undefined {
  const m = PORT_RE.exec(spec);
  if (!m?.groups) return undefined;
  return `${m.groups.ip ?? '0.0.0.0'}:${m.groups.host}/${m.groups.proto ?? 'tcp'}`;
}

export const RESTART_POLICIES = ['no', 'always', 'on-failure', 'unless-stopped'] as const;
export const RUNTIMES = ['docker', 'process', 'auto'] as const;
export const NETWORK_MODES = ['bridge', 'none', 'host'] as const;
export const UPDATE_STRATEGIES = ['download-then-kill', 'kill-then-download'] as const;
export type UpdateStrategy = (typeof UPDATE_STRATEGIES)[number];

/** Labels under this prefix are the agent's own (it finds its containers by them). */
export const LABEL_PREFIX = 'io.iotistic.';
/** The one label a target may set under the agent's prefix: the service's update strategy. */
export const UPDATE_STRATEGY_LABEL = 'io.iotistic.update-strategy';

const VOLUME_RE = /^(?<source>[^:]+):(?<target>\/[^:]*)(?::(?<mode>ro|rw))?$/;
const volumeMsg = `a volume "NAME:/container/path[:ro|rw]" (NAME ${NAME_EXPECTED}) or a host bind mount "/host/path:/container/path[:ro|rw]"`;

/** A volume entry split into its parts, or undefined when it does not follow the grammar. */
export function parseVolume(spec: string): { source: string; target: string; readOnly: boolean; hostPath: boolean } | undefined {
  const m = VOLUME_RE.exec(spec);
  if (!m?.groups?.source || !m.groups.target) return undefined;
  const { source, target, mode } = m.groups;
  const hostPath = source.startsWith('/');
  if (!hostPath && !NAME.test(source)) return undefined;
  return { source, target, readOnly: mode === 'ro', hostPath };
}

const DEVICE_RE = /^\/dev\/[^:\s]+(?::\/dev\/[^:\s]+)?(?::[rwm]{1,3})?$/;

function imageRefinement(value: string, ctx: z.core.$RefinementCtx<string>): void {
  const parsed = parseImageReference(value);
  if ('error' in parsed) ctx.addIssue({ code: 'custom', message: parsed.error });
}

const labelsSchema = z.record(z.string().min(1), z.string()).superRefine((labels, ctx) => {
  for (const [key, value] of Object.entries(labels)) {
    if (key === UPDATE_STRATEGY_LABEL) {
      if (!(UPDATE_STRATEGIES as readonly string[]).includes(value)) {
        ctx.addIssue({ code: 'custom', path: [key], message: `one of ${UPDATE_STRATEGIES.map((v) => JSON.stringify(v)).join(', ')}` });
      }
    } else if (key.startsWith(LABEL_PREFIX)) {
      ctx.addIssue({ code: 'custom', path: [key], message: `no label under "${LABEL_PREFIX}" other than "${UPDATE_STRATEGY_LABEL}" (the agent's own labels)` });
    }
  }
});

/** Fields that only mean something for a container. */
const CONTAINER_ONLY = ['ports', 'volumes', 'devices', 'privileged', 'network_mode'] as const;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * A secret the service is given (the target names it; the value comes from the device's store):
 * `env` is the environment variable that holds the value; `file` is, for a container, the absolute
 * path it is mounted at, and for a process the environment variable that holds the path of the file.
 */
const secretRefSchema = z
  .strictObject({
    name: z.string().regex(NAME, NAME_EXPECTED),
    env: z.string().regex(ENV_NAME, 'an environment variable name').optional(),
    file: z.string().min(1).max(4096).optional(),
  })
  .refine((r) => r.env !== undefined || r.file !== undefined, 'an "env" or a "file" (or both) saying how the service gets the secret');

const serviceSchema = z
  .strictObject({
    runtime: z.enum(RUNTIMES).default('docker'),
    image: z.string().min(1).max(512).superRefine(imageRefinement).optional(),
    command: z.array(z.string()).min(1).optional(),
    environment: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name'), z.string()).default({}),
    ports: z.array(z.string().refine(portValid, 'a port mapping "HOST:CONTAINER[/tcp|udp]" with ports 1-65535')).default([]),
    volumes: z.array(z.string().min(1).refine((v) => parseVolume(v) !== undefined, volumeMsg)).default([]),
    restart: z.enum(RESTART_POLICIES).default('always'),
    labels: labelsSchema.default({}),
    workingDir: z.string().regex(/^\//, 'an absolute path').optional(),
    privileged: z.boolean().default(false),
    network_mode: z.enum(NETWORK_MODES).optional(),
    devices: z.array(z.string().regex(DEVICE_RE, 'a device "/dev/HOST[:/dev/CONTAINER][:rwm]"')).default([]),
    secrets: z.array(secretRefSchema).max(64).default([]),
    ...serviceOptionFields,
    // Apps as a unit (app-graph.ts); optional so targets without them hash as before.
    dependsOn: dependsOnSchema.optional(),
    healthcheck: healthcheckSchema.optional(),
  })
  .superRefine((svc, ctx) => {
    // "auto" without an image can only ever run as a process, so it follows the process rules.
    const asProcess = svc.runtime === 'process' || (svc.runtime === 'auto' && svc.image === undefined);
    if (asProcess) {
      const which = svc.runtime === 'process' ? 'for runtime "process"' : 'for runtime "auto" without an image (it runs as a process)';
      // Here an image is only ever set with runtime "process" ("auto" with one runs as a container).
      if (svc.image !== undefined) ctx.addIssue({ code: 'custom', path: ['image'], message: 'no image for runtime "process"' });
      if (!svc.command) ctx.addIssue({ code: 'custom', path: ['command'], message: `a command (an array, first item an absolute path) ${which}` });
      else if (!svc.command[0]?.startsWith('/')) {
        ctx.addIssue({ code: 'custom', path: ['command', 0], message: 'an absolute path to the program (no shell, no PATH lookup)' });
      }
      for (const key of CONTAINER_ONLY) {
        const v = svc[key];
        const set = Array.isArray(v) ? v.length > 0 : key === 'privileged' ? v === true : v !== undefined;
        if (set) ctx.addIssue({ code: 'custom', path: [key], message: `no ${key} ${which} (containers only)` });
      }
      for (const issue of processOptionIssues(svc, which)) ctx.addIssue({ code: 'custom', ...issue });
    } else if (svc.image === undefined) {
      // Not a process and no image: runtime "docker" ("auto" without an image is a process).
      ctx.addIssue({ code: 'custom', path: ['image'], message: 'an image reference for runtime "docker"' });
    }
    secretRefIssues(svc.secrets, asProcess, ctx);
  });

function secretRefIssues(refs: readonly { name: string; env?: string | undefined; file?: string | undefined }[], asProcess: boolean, ctx: z.core.$RefinementCtx<unknown>): void {
  const seen = new Set<string>();
  refs.forEach((r, i) => {
    if (seen.has(r.name)) ctx.addIssue({ code: 'custom', path: ['secrets', i, 'name'], message: `a secret named once per service (${r.name} is named twice)` });
    seen.add(r.name);
    if (r.file === undefined) return;
    if (asProcess && !ENV_NAME.test(r.file)) {
      ctx.addIssue({ code: 'custom', path: ['secrets', i, 'file'], message: 'for a process, an environment variable name (it is given the path of the file the agent writes)' });
    } else if (!asProcess && (!r.file.startsWith('/') || r.file.split('/').includes('..'))) {
      ctx.addIssue({ code: 'custom', path: ['secrets', i, 'file'], message: 'for a container, an absolute path without ".." (where the file is mounted read-only)' });
    }
  });
}

const appSchema = z.strictObject({
  services: z.record(z.string().regex(NAME, NAME_EXPECTED), serviceSchema),
});

/** The settings a target may override: a documented subset, never identity, keys or addresses. */
const targetConfigSchema = z.strictObject({
  settings: z
    .strictObject({
      pollIntervalMs: z.number().int().min(1_000).optional(),
      reportIntervalMs: z.number().int().min(100).optional(),
      metricsIntervalMs: z.number().int().min(1_000).optional(),
      reconciliationIntervalMs: z.number().int().min(1_000).optional(),
    })
    .optional(),
});

/** Its problems are reported by registryIssues (on the raw input, never showing a password); this gives the type. */
const registryEntrySchema = z.union([
  z.strictObject({ username: z.string().min(1), password: z.string().min(1) }),
  z.strictObject({ username: z.string().min(1), passwordSecret: z.string().regex(NAME) }),
  z.strictObject({ device: z.literal(true) }),
]);

export const targetStateSchema = z.strictObject({
  version: z.number().int().min(0),
  /** Opaque: when it differs from the version of the secrets the device holds, it fetches them again. */
  secretsVersion: z.string().min(1).max(128).optional(),
  config: targetConfigSchema.default({}),
  apps: z.record(z.string().regex(NAME, NAME_EXPECTED), appSchema).default({}),
  /** Credentials per registry host[:port] for image pulls (registry-auth.ts); optional so targets without them hash as before. */
  registries: z.record(z.string(), registryEntrySchema).optional(),
});

/**
 * App and service names that do not follow NAME_PATTERN, on the raw input: zod reports a bad record
 * key as "Invalid key in record" without the key; this names the field, the value and the pattern.
 */
function nameIssues(doc: unknown): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const apps = (doc as { apps?: unknown } | null)?.apps;
  if (apps === null || typeof apps !== 'object' || Array.isArray(apps)) return issues;
  const check = (path: string, name: string): void => {
    if (!NAME.test(name)) issues.push({ path, source: 'target', value: name, expected: NAME_EXPECTED });
  };
  for (const [app, appDoc] of Object.entries(apps)) {
    check(`apps.${app}`, app);
    const services = (appDoc as { services?: unknown } | null)?.services;
    if (services === null || typeof services !== 'object' || Array.isArray(services)) continue;
    for (const name of Object.keys(services)) check(`apps.${app}.services.${name}`, name);
  }
  return issues;
}

/** `apps.<app>` or `apps.<app>.services.<service>`: where a record key is a name. */
function isNameKeyPath(path: readonly PropertyKey[]): boolean {
  // Stryker disable next-line ConditionalExpression,BooleanLiteral: no record but apps checks its keys at depth 2 or 4 (environment and label keys sit at depth 6), so this never returns: "false" and the value are equivalent; "true" fails the name tests
  if (path[0] !== 'apps') return false;
  if (path.length === 2) return true;
  if (path.length !== 4) return false;
  // Stryker disable next-line ConditionalExpression: under apps only services sit at depth 4, so "true" is equivalent; "false" fails the service-name test
  return path[2] === 'services';
}

/**
 * Host ports used twice in the whole document. Checked on the raw input, apart from the schema, so
 * the problem is reported together with any others (zod skips refinements of invalid objects).
 */
function duplicatePortIssues(doc: unknown): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const seen = new Map<string, { path: string; spec: string }>();
  const apps = (doc as { apps?: unknown } | null)?.apps;
  if (apps === null || typeof apps !== 'object') return issues;
  for (const [app, appDoc] of Object.entries(apps)) {
    const services = (appDoc as { services?: unknown } | null)?.services;
    if (services === null || typeof services !== 'object') continue;
    for (const [name, svc] of Object.entries(services)) {
      const ports = (svc as { ports?: unknown } | null)?.ports;
      if (!Array.isArray(ports)) continue;
      ports.forEach((spec: unknown, i) => {
        if (typeof spec !== 'string') return;
        const key = hostPortKey(spec);
        if (!key) return;
        const path = `apps.${app}.services.${name}.ports.${i}`;
        const owner = seen.get(key);
        if (owner) {
          issues.push({ path, source: 'target', value: spec, expected: `a host port not already used (${owner.path} uses ${owner.spec})` });
        } else seen.set(key, { path, spec });
      });
    }
  }
  return issues;
}

/**
 * What the device's own config lets a target do to the host. Everything is refused by default: a
 * cloud (or whoever holds its credentials) must not be able to take over the host by sending a target.
 */
export interface WorkloadPolicy {
  /** Volumes whose source is a host path ("/host:/in/container"). */
  allowHostMounts: boolean;
  /** `privileged: true`. */
  allowPrivileged: boolean;
  /** `network_mode: host`. */
  allowHostNetwork: boolean;
  /** `devices: [...]`. */
  allowDevices: boolean;
}

export const DEFAULT_WORKLOAD_POLICY: Readonly<WorkloadPolicy> = Object.freeze({
  allowHostMounts: false,
  allowPrivileged: false,
  allowHostNetwork: false,
  allowDevices: false,
});

/** The local config key that grants each permission, named in every refusal. */
export const POLICY_SETTINGS: Readonly<Record<keyof WorkloadPolicy, string>> = Object.freeze({
  allowHostMounts: 'workloads.allowHostMounts',
  allowPrivileged: 'workloads.allowPrivileged',
  allowHostNetwork: 'workloads.allowHostNetwork',
  allowDevices: 'workloads.allowDevices',
});

function refusal(what: string, key: keyof WorkloadPolicy): string {
  return `${what}: refused unless the device's local config sets ${POLICY_SETTINGS[key]}: true (a target cannot grant it)`;
}

/**
 * What one service (raw or parsed) asks of the host beyond the policy. Works on raw input so it can
 * be reported together with schema problems; `path` is the service's dotted path.
 */
export function servicePolicyIssues(path: string, svc: unknown, policy: Readonly<WorkloadPolicy> = DEFAULT_WORKLOAD_POLICY, source = 'target'): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  if (svc === null) return issues;
  // Stryker disable next-line ConditionalExpression: a string or number has none of the fields read below: no issue either way
  if (typeof svc !== 'object') return issues;
  const s = svc as Record<string, unknown>;
  if (!policy.allowHostMounts && Array.isArray(s.volumes)) {
    s.volumes.forEach((v: unknown, i) => {
      if (typeof v === 'string' && v.startsWith('/')) {
        issues.push({ path: `${path}.volumes.${i}`, source, value: v, expected: refusal('a named volume, not a host bind mount', 'allowHostMounts') });
      }
    });
  }
  if (!policy.allowPrivileged && s.privileged === true) {
    issues.push({ path: `${path}.privileged`, source, value: true, expected: refusal('false (a privileged container owns the host)', 'allowPrivileged') });
  }
  if (!policy.allowHostNetwork && s.network_mode === 'host') {
    issues.push({ path: `${path}.network_mode`, source, value: 'host', expected: refusal('"bridge" or "none", not "host"', 'allowHostNetwork') });
  }
  if (!policy.allowDevices && Array.isArray(s.devices) && s.devices.length > 0) {
    issues.push({ path: `${path}.devices`, source, value: s.devices, expected: refusal('no host devices', 'allowDevices') });
  }
  return issues;
}

function policyIssues(doc: unknown, policy: Readonly<WorkloadPolicy>): ConfigIssue[] {
  return rawApps(doc).flatMap(([app, services]) => Object.entries(services).flatMap(([name, svc]) => servicePolicyIssues(`apps.${app}.services.${name}`, svc, policy)));
}

export type TargetState = z.output<typeof targetStateSchema>;
export type ServiceSpec = TargetState['apps'][string]['services'][string];

/** The update strategy of a service: its label, or download-then-kill. */
export function updateStrategyOf(spec: Pick<ServiceSpec, 'labels'>): UpdateStrategy {
  const v = spec.labels[UPDATE_STRATEGY_LABEL];
  return v === 'kill-then-download' ? v : 'download-then-kill';
}

export type TargetValidation = { ok: true; target: TargetState } | { ok: false; issues: ConfigIssue[]; message: string };

export interface ValidateTargetOptions {
  /** What the device's local config allows; anything not given is refused. */
  policy?: Partial<WorkloadPolicy>;
}

/**
 * Validates a target document (already parsed JSON) and returns it with defaults, or every reason it
 * is refused: schema problems, host ports used twice, and whatever the local policy does not allow.
 */
export function validateTarget(doc: unknown, opts: ValidateTargetOptions = {}): TargetValidation {
  const policy = { ...DEFAULT_WORKLOAD_POLICY, ...opts.policy };
  const parsed = targetStateSchema.safeParse(doc);
  const names = nameIssues(doc);
  const extra = [...names, ...registryIssues(doc), ...duplicatePortIssues(doc), ...policyIssues(doc, policy), ...appGraphIssues(doc)];
  if (parsed.success && extra.length === 0) return { ok: true, target: parsed.data };
  // Bad keys are reported by nameIssues, with the key and the pattern; registries by registryIssues.
  const zodIssues = parsed.success ? [] : parsed.error.issues.filter((i) => !(i.code === 'invalid_key' && isNameKeyPath(i.path)) && i.path[0] !== 'registries');
  const issues = [...fromZodIssues(zodIssues, doc, () => 'target', () => false), ...extra];
  return { ok: false, issues, message: issues.map((i) => formatIssue(i)).join('; ') };
}
