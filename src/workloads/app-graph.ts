import { z } from 'zod';
import type { ConfigIssue } from '../config/issues.js';
import { rawApps } from './raw-target.js';

/**
 * Apps as a unit: the `dependsOn` and `healthcheck` fields of a service, their checks across the
 * services of one app (same app only, no cycles, "healthy" only on a service with a health check),
 * and the start order they give. Pure: no I/O.
 */

export const DEPENDENCY_CONDITIONS = ['started', 'healthy'] as const;
export type DependencyCondition = (typeof DEPENDENCY_CONDITIONS)[number];

const timing = {
  intervalSeconds: z.number().positive().max(86_400).optional(),
  timeoutSeconds: z.number().positive().max(3_600).optional(),
  retries: z.number().int().min(1).max(100).optional(),
  startPeriodSeconds: z.number().min(0).max(86_400).optional(),
};

/**
 * One object for both runtimes: `test` (the engine's, containers) or `http` / `tcp` / `command`
 * (probed by the agent, processes). Which one fits the runtime is checked by appGraphIssues.
 */
export const healthcheckSchema = z
  .strictObject({
    test: z
      .array(z.string())
      .min(1)
      .refine((t) => ['CMD', 'CMD-SHELL', 'NONE'].includes(t[0] ?? '') && (t[0] === 'NONE' ? t.length === 1 : t.length >= 2), '["CMD", "prog", ...], ["CMD-SHELL", "command line"] or ["NONE"]')
      .optional(),
    http: z.string().refine(isLoopbackHttp, 'an http:// URL on the loopback interface (127.0.0.0/8, [::1] or localhost): the agent probes no other host').optional(),
    tcp: z.string().refine(isLoopbackTcp, 'a loopback "HOST:PORT" (127.0.0.0/8, [::1] or localhost): the agent probes no other host').optional(),
    command: z
      .array(z.string())
      .min(1)
      .refine((c) => c[0]?.startsWith('/') === true, 'an absolute path to the program first (no shell, no PATH lookup)')
      .optional(),
    ...timing,
  })
  .refine((h) => [h.test, h.http, h.tcp, h.command].filter((v) => v !== undefined).length === 1, 'exactly one of "test" (containers), "http", "tcp" or "command" (processes)');

export type Healthcheck = z.output<typeof healthcheckSchema>;

export const dependsOnSchema = z.union([
  z.array(z.string().min(1)),
  z.record(z.string().min(1), z.strictObject({ condition: z.enum(DEPENDENCY_CONDITIONS).default('started') })),
]);

export type DependsOn = z.output<typeof dependsOnSchema>;

function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

export function isLoopbackHttp(url: string): boolean {
  try {
    const u = new URL(url);
    return u.protocol === 'http:' && u.username === '' && u.password === '' && isLoopbackHost(u.hostname);
  } catch {
    return false;
  }
}

export function isLoopbackTcp(spec: string): boolean {
  const m = /^(?<host>\[[^\]]+\]|[^:]+):(?<port>\d{1,5})$/.exec(spec);
  const port = Number(m?.groups?.port);
  return m?.groups?.host !== undefined && isLoopbackHost(m.groups.host) && port >= 1 && port <= 65535;
}

/** The dependencies of a service, with their conditions, in a stable order. */
export function dependencies(dependsOn: DependsOn | undefined): { service: string; condition: DependencyCondition }[] {
  if (dependsOn === undefined) return [];
  if (Array.isArray(dependsOn)) return dependsOn.map((service) => ({ service, condition: 'started' as const }));
  return Object.entries(dependsOn).map(([service, v]) => ({ service, condition: v.condition }));
}

/** Whether a health check is set and is not `["NONE"]`. */
export function hasHealthcheck(h: Healthcheck | undefined): h is Healthcheck {
  return h !== undefined && h.test?.[0] !== 'NONE';
}

type RawService = { runtime?: unknown; image?: unknown; dependsOn?: unknown; healthcheck?: unknown };

function rawDependencies(raw: unknown): { service: string; condition: unknown }[] {
  if (Array.isArray(raw)) return raw.filter((s): s is string => typeof s === 'string').map((service) => ({ service, condition: 'started' }));
  if (raw === null || typeof raw !== 'object') return [];
  return Object.entries(raw as Record<string, unknown>).map(([service, v]) => ({ service, condition: (v as { condition?: unknown } | null)?.condition ?? 'started' }));
}

/** A cycle in the app's graph, as the service names along it ("a -> b -> a"), or undefined. */
export function findCycle(edges: ReadonlyMap<string, readonly string[]>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (n: string): string[] | undefined => {
    if (state.get(n) === 'done') return undefined;
    if (state.get(n) === 'open') return [...path.slice(path.indexOf(n)), n];
    state.set(n, 'open');
    path.push(n);
    for (const next of edges.get(n) ?? []) {
      const found = visit(next);
      if (found) return found;
    }
    path.pop();
    state.set(n, 'done');
    return undefined;
  };
  for (const n of [...edges.keys()].sort()) {
    const found = visit(n);
    if (found) return found;
  }
  return undefined;
}

/**
 * On the raw target: dependencies on services that are not in the same app, cycles (the message
 * names the cycle), "healthy" on a service without a health check, and a health check of the wrong
 * kind for the runtime. Reported together with the schema's problems.
 */
export function appGraphIssues(doc: unknown): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  for (const [app, services] of rawApps(doc)) {
    const all = services as Record<string, RawService | null>;
    const edges = new Map<string, string[]>();
    for (const [name, svc] of Object.entries(all)) {
      const path = `apps.${app}.services.${name}`;
      healthKindIssues(path, svc, issues);
      const deps = rawDependencies(svc?.dependsOn);
      edges.set(name, deps.map((d) => d.service));
      for (const d of deps) {
        const other = Object.hasOwn(all, d.service) ? all[d.service] : undefined;
        if (other === undefined) {
          issues.push({ path: `${path}.dependsOn`, source: 'target', value: d.service, expected: `a service of app "${app}" (${Object.keys(all).sort().join(', ')})` });
        } else if (d.service === name) {
          issues.push({ path: `${path}.dependsOn`, source: 'target', value: d.service, expected: 'another service (a service cannot wait for itself)' });
        } else if (d.condition === 'healthy' && (other?.healthcheck === undefined || (other.healthcheck as { test?: unknown[] }).test?.[0] === 'NONE')) {
          issues.push({ path: `${path}.dependsOn.${d.service}.condition`, source: 'target', value: 'healthy', expected: `"started", or a health check on ${d.service} (it has none to wait for)` });
        }
      }
    }
    const cycle = findCycle(new Map([...edges].map(([n, to]) => [n, to.filter((t) => t !== n && Object.hasOwn(all, t))])));
    if (cycle) issues.push({ path: `apps.${app}.services`, source: 'target', value: cycle.join(' -> '), expected: 'dependsOn without a cycle (each service waits for the next one along it)' });
  }
  return issues;
}

function healthKindIssues(path: string, svc: RawService | null, issues: ConfigIssue[]): void {
  const h = svc?.healthcheck as Record<string, unknown> | undefined;
  if (h === null || typeof h !== 'object') return;
  const asProcess = svc?.runtime === 'process' || (svc?.runtime === 'auto' && svc.image === undefined);
  if (asProcess && h.test !== undefined) {
    issues.push({ path: `${path}.healthcheck.test`, source: 'target', value: h.test, expected: 'for a process, "http", "tcp" or "command" (the agent probes it; "test" is the container engine\'s)' });
  }
  for (const key of ['http', 'tcp', 'command'] as const) {
    if (!asProcess && h[key] !== undefined) {
      issues.push({ path: `${path}.healthcheck.${key}`, source: 'target', value: h[key], expected: 'for a container, "test": ["CMD", ...] or ["CMD-SHELL", "..."] (run by the engine inside the container)' });
    }
  }
}

/** What keeps a service from starting: the first dependency not yet running (or healthy where asked). */
export function waitingFor(deps: readonly { service: string; condition: DependencyCondition }[], statusOf: (service: string) => string | undefined): string | undefined {
  for (const d of deps) {
    const s = statusOf(d.service);
    if (d.condition === 'healthy' ? s !== 'running' : s !== 'running' && s !== 'starting' && s !== 'unhealthy') {
      return `waiting for ${d.service} to be ${d.condition === 'healthy' ? 'healthy' : 'running'}`;
    }
  }
  return undefined;
}
