import { z } from 'zod';
import { fromZodIssues, formatIssue, type ConfigIssue } from '../config/issues.js';

/**
 * The target-state document of PROTOCOL.md. A document that fails here is rejected whole: the
 * last good target stays in force and the reasons (each naming the path) are reported.
 */

const NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const nameMsg = 'a name of 1-63 lowercase letters, digits, "_", "." or "-", starting with a letter or digit';

const PORT_RE = /^(?:(?<ip>[0-9.]+):)?(?<host>\d{1,5})(?::(?<container>\d{1,5}))(?:\/(?<proto>tcp|udp))?$/;

function portValid(spec: string): boolean {
  const m = PORT_RE.exec(spec);
  if (!m?.groups) return false;
  const host = Number(m.groups.host);
  const container = Number(m.groups.container);
  return host >= 1 && host <= 65535 && container >= 1 && container <= 65535;
}

/** The host side of a port mapping, for the duplicate check: `ip:port/proto`. */
export function hostPortKey(spec: string): string | undefined {
  const m = PORT_RE.exec(spec);
  if (!m?.groups) return undefined;
  return `${m.groups.ip ?? '0.0.0.0'}:${m.groups.host}/${m.groups.proto ?? 'tcp'}`;
}

export const RESTART_POLICIES = ['no', 'always', 'on-failure', 'unless-stopped'] as const;
export const RUNTIMES = ['docker', 'process', 'auto'] as const;

const serviceSchema = z
  .strictObject({
    runtime: z.enum(RUNTIMES).default('docker'),
    image: z.string().min(1).max(512).optional(),
    command: z.array(z.string()).min(1).optional(),
    environment: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name'), z.string()).default({}),
    ports: z.array(z.string().refine(portValid, 'a port mapping "HOST:CONTAINER[/tcp|udp]" with ports 1-65535')).default([]),
    volumes: z.array(z.string().min(1)).default([]),
    restart: z.enum(RESTART_POLICIES).default('always'),
    labels: z.record(z.string(), z.string()).default({}),
    workingDir: z.string().optional(),
  })
  .superRefine((svc, ctx) => {
    if (svc.runtime === 'process') {
      if (svc.image !== undefined) ctx.addIssue({ code: 'custom', path: ['image'], message: 'no image for runtime "process"' });
      if (!svc.command) ctx.addIssue({ code: 'custom', path: ['command'], message: 'a command (an array, first item an absolute path) for runtime "process"' });
      else if (!svc.command[0]?.startsWith('/')) {
        ctx.addIssue({ code: 'custom', path: ['command', 0], message: 'an absolute path to the program (no shell, no PATH lookup)' });
      }
    } else if (svc.image === undefined && svc.runtime === 'docker') {
      ctx.addIssue({ code: 'custom', path: ['image'], message: 'an image reference for runtime "docker"' });
    }
  });

const appSchema = z.strictObject({
  services: z.record(z.string().regex(NAME, nameMsg), serviceSchema),
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

export const targetStateSchema = z.strictObject({
  version: z.number().int().min(0),
  config: targetConfigSchema.default({}),
  apps: z.record(z.string().regex(NAME, nameMsg), appSchema).default({}),
});

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

export type TargetState = z.output<typeof targetStateSchema>;
export type ServiceSpec = TargetState['apps'][string]['services'][string];

export type TargetValidation = { ok: true; target: TargetState } | { ok: false; issues: ConfigIssue[]; message: string };

/** Validates a target document (already parsed JSON) and returns it with defaults, or every reason it is refused. */
export function validateTarget(doc: unknown): TargetValidation {
  const parsed = targetStateSchema.safeParse(doc);
  const ports = duplicatePortIssues(doc);
  if (parsed.success && ports.length === 0) return { ok: true, target: parsed.data };
  const issues = [...(parsed.success ? [] : fromZodIssues(parsed.error.issues, doc, () => 'target', () => false)), ...ports];
  return { ok: false, issues, message: issues.map((i) => formatIssue(i)).join('; ') };
}
