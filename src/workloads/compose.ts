import { parseDocument } from 'yaml';
import { isMap, onlyKeys, readCommand, readDeploy, readHealthcheck, readPairs, type ComposeIssue, type Report } from './compose-values.js';
import { NAME_EXPECTED, NAME_PATTERN } from './names.js';
import { parsePort, parseVolume, RESTART_POLICIES } from './target-schema.js';

export type { ComposeIssue } from './compose-values.js';

/**
 * The Compose subset (docs/workloads.md, "The Compose subset"): a Compose file becomes one app of a
 * target. Every key outside the subset is refused by its path, never ignored; only `x-*` keys (Compose's
 * own extension mechanism, mostly anchors for `<<` merges) and the obsolete top-level `version` are skipped.
 * The result is a target document still to be validated (validateTarget) like any other.
 */

export interface ComposeOptions {
  /** The app's name; else the file's top-level `name`. */
  app?: string;
  /** The target's version; 1 unless told. */
  version?: number;
}

export type ComposeResult = { ok: true; app: string; target: { version: number; apps: Record<string, { services: Record<string, Record<string, unknown>> }> } } | { ok: false; issues: ComposeIssue[]; message: string };

// Aliases expand: a few anchors are normal, thousands are a "billion laughs" bomb.
const MAX_ALIASES = 100;

const TOP_KEYS = ['version', 'name', 'services', 'networks', 'volumes'] as const;
const TOP_HINTS: Readonly<Record<string, string>> = {
  secrets: 'use the target\'s secrets (the device\'s secret store: docs/secrets.md)',
  configs: 'put the file in an image or a named volume',
  include: 'give one file with every service',
};
const SERVICE_KEYS = [
  'image', 'command', 'entrypoint', 'environment', 'ports', 'volumes', 'restart', 'depends_on', 'healthcheck', 'deploy',
  'working_dir', 'user', 'read_only', 'tmpfs', 'labels', 'networks', 'network_mode',
] as const;
const SERVICE_HINTS: Readonly<Record<string, string>> = {
  build: 'build the image and push it to a registry (or import it: docs/workloads.md)',
  privileged: 'write the target as JSON, where privileged is allowed only by the device\'s local config',
  devices: 'write the target as JSON, where devices are allowed only by the device\'s local config',
  env_file: 'put the variables in environment',
  container_name: 'the agent names its containers itself',
  extends: 'write the service out in full',
  secrets: 'use the target\'s secrets (the device\'s secret store)',
  profiles: 'leave the service out of the file instead',
  cap_add: 'not offered to a target',
};

export function convertCompose(text: string, opts: ComposeOptions = {}): ComposeResult {
  const issues: ComposeIssue[] = [];
  const report: Report = (path, message) => issues.push({ path, message });
  const doc = readYaml(text, report);
  if (doc === undefined) return failed(issues);
  onlyKeys(doc, '', TOP_KEYS, report, TOP_HINTS);
  const app = opts.app ?? (typeof doc.name === 'string' ? doc.name : undefined);
  if (app === undefined) report('name', 'an app name: give --app NAME (or "app" in the API body), or a top-level name');
  else if (!NAME_PATTERN.test(app)) report(opts.app === undefined ? 'name' : 'app', `${NAME_EXPECTED}, got ${JSON.stringify(app)}`);
  const volumes = declared(doc.volumes, 'volumes', report, 'no driver options: the agent makes a local volume <app>_<name>');
  const networks = declared(doc.networks, 'networks', report, 'no driver options: the app has a network of its own');
  if (networks.size > 1) report('networks', `at most one network: an app has one network of its own (got ${[...networks].join(', ')})`);
  const services: Record<string, Record<string, unknown>> = {};
  if (!isMap(doc.services) || Object.keys(doc.services).length === 0) report('services', 'a map of at least one service');
  else {
    for (const [name, svc] of Object.entries(doc.services)) {
      if (name.startsWith('x-')) continue;
      const path = `services.${name}`;
      if (!NAME_PATTERN.test(name)) report(path, `a service name: ${NAME_EXPECTED}`);
      if (!isMap(svc)) report(path, 'a map of the service\'s settings');
      else services[name] = convertService(svc, path, { volumes, networks, services: Object.keys(doc.services) }, report);
    }
  }
  if (issues.length > 0 || app === undefined) return failed(issues);
  return { ok: true, app, target: { version: opts.version ?? 1, apps: { [app]: { services } } } };
}

function failed(issues: ComposeIssue[]): { ok: false; issues: ComposeIssue[]; message: string } {
  return { ok: false, issues, message: issues.map((i) => `${i.path}: ${i.message}`).join('; ') };
}

function readYaml(text: string, report: Report): Record<string, unknown> | undefined {
  // YAML 1.2 core schema (no custom or YAML 1.1 tags such as !!binary; "no" is a string); merge keys on, as Compose files use them.
  const doc = parseDocument(text, { schema: 'core', merge: true, uniqueKeys: true, customTags: [], resolveKnownTags: false, prettyErrors: false });
  for (const e of [...doc.errors, ...doc.warnings]) report('(document)', `YAML: ${e.message}`);
  if (doc.errors.length > 0 || doc.warnings.length > 0) return undefined;
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_ALIASES });
  } catch (err) {
    report('(document)', `YAML: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  }
  if (isMap(value)) return value;
  report('(document)', 'a Compose file: a map with services');
  return undefined;
}

/** Names declared under top-level `volumes` or `networks`; each must be a name with no options. */
function declared(value: unknown, key: string, report: Report, why: string): Set<string> {
  const names = new Set<string>();
  if (value === undefined || value === null) return names;
  if (!isMap(value)) {
    report(key, 'a map of names');
    return names;
  }
  for (const [name, opts] of Object.entries(value)) {
    if (name.startsWith('x-')) continue;
    if (!NAME_PATTERN.test(name)) report(`${key}.${name}`, `a name: ${NAME_EXPECTED}`);
    if (isMap(opts)) onlyKeys(opts, `${key}.${name}`, [], report, Object.fromEntries(Object.keys(opts).map((k) => [k, why])));
    else if (opts !== null) report(`${key}.${name}`, 'an empty entry (name: {} or just name:)');
    names.add(name);
  }
  return names;
}

interface Declared {
  volumes: Set<string>;
  networks: Set<string>;
  services: string[];
}

function convertService(svc: Record<string, unknown>, path: string, known: Declared, report: Report): Record<string, unknown> {
  onlyKeys(svc, path, SERVICE_KEYS, report, SERVICE_HINTS);
  const out: Record<string, unknown> = {};
  const set = (key: string, value: unknown): void => {
    if (value !== undefined) out[key] = value;
  };
  set('image', svc.image);
  if (svc.command !== undefined) set('command', readCommand(svc.command, `${path}.command`, report));
  if (svc.entrypoint !== undefined) set('entrypoint', readCommand(svc.entrypoint, `${path}.entrypoint`, report));
  if (svc.environment !== undefined) set('environment', readPairs(svc.environment, `${path}.environment`, report, 'environment'));
  if (svc.labels !== undefined) set('labels', readPairs(svc.labels, `${path}.labels`, report, 'labels'));
  if (svc.ports !== undefined) set('ports', readPorts(svc.ports, `${path}.ports`, report));
  if (svc.volumes !== undefined) set('volumes', readVolumes(svc.volumes, `${path}.volumes`, known.volumes, report));
  if (svc.restart !== undefined) {
    if ((RESTART_POLICIES as readonly unknown[]).includes(svc.restart)) set('restart', svc.restart);
    else report(`${path}.restart`, `one of ${RESTART_POLICIES.map((p) => JSON.stringify(p)).join(', ')} (no retry count: the agent's CrashLoopBackOff applies)`);
  }
  if (svc.depends_on !== undefined) set('dependsOn', readDependsOn(svc.depends_on, `${path}.depends_on`, known.services, report));
  if (svc.healthcheck !== undefined) set('healthcheck', readHealthcheck(svc.healthcheck, `${path}.healthcheck`, report));
  if (svc.deploy !== undefined) Object.assign(out, readDeploy(svc.deploy, `${path}.deploy`, report));
  set('workingDir', svc.working_dir);
  if (svc.user !== undefined) set('user', typeof svc.user === 'number' ? String(svc.user) : svc.user);
  set('readOnly', svc.read_only);
  if (svc.tmpfs !== undefined) set('tmpfs', typeof svc.tmpfs === 'string' ? [svc.tmpfs] : svc.tmpfs);
  if (svc.networks !== undefined) readNetworks(svc.networks, `${path}.networks`, known.networks, report);
  if (svc.network_mode !== undefined) {
    if (svc.network_mode === 'bridge' || svc.network_mode === 'none' || svc.network_mode === 'host') set('network_mode', svc.network_mode);
    else report(`${path}.network_mode`, '"bridge", "none" or "host" (host only where the device\'s local config allows it)');
  }
  return out;
}

/** Short syntax only, with the host port: "HOST:CONTAINER[/proto]" or "IP:HOST:CONTAINER[/proto]". */
function readPorts(value: unknown, path: string, report: Report): string[] | undefined {
  if (!Array.isArray(value)) {
    report(path, 'a list of "HOST:CONTAINER[/tcp|udp]"');
    return undefined;
  }
  return value.map((p: unknown, i) => {
    const spec = typeof p === 'number' ? String(p) : p;
    if (typeof spec !== 'string' || !parsePort(spec)) {
      report(`${path}.${i}`, `a port "HOST:CONTAINER[/tcp|udp]" or "IP:HOST:CONTAINER" (the short syntax with a host port; no ranges), got ${JSON.stringify(p)}`);
    }
    return String(spec);
  });
}

/** Short syntax only: "NAME:/path[:ro|rw]" with NAME declared at the top, or "/host/path:/path[:ro|rw]". */
function readVolumes(value: unknown, path: string, declaredVolumes: Set<string>, report: Report): string[] | undefined {
  if (!Array.isArray(value)) {
    report(path, 'a list of "NAME:/container/path[:ro]"');
    return undefined;
  }
  return value.map((v: unknown, i) => {
    const at = `${path}.${i}`;
    const parsed = typeof v === 'string' ? parseVolume(v) : undefined;
    if (typeof v !== 'string') report(at, 'the short syntax "NAME:/container/path[:ro]" (the long syntax is not supported)');
    else if (v.startsWith('.') || v.startsWith('~')) report(at, `an absolute host path (a relative one depends on where the file is read), got ${JSON.stringify(v)}`);
    else if (!parsed) report(at, `a volume "NAME:/container/path[:ro|rw]" (NAME ${NAME_EXPECTED}) or "/host/path:/container/path[:ro|rw]"; no anonymous volumes, got ${JSON.stringify(v)}`);
    else if (!parsed.hostPath && !declaredVolumes.has(parsed.source)) report(at, `a volume declared under the top-level volumes ("${parsed.source}" is not)`);
    return String(v);
  });
}

/**
 * `depends_on` as the target's `dependsOn`: service name → { condition: "started" | "healthy" }.
 * (The field is apps-as-a-unit's, issue #18; its shape is decided there.)
 */
function readDependsOn(value: unknown, path: string, services: readonly string[], report: Report): Record<string, { condition: 'started' | 'healthy' }> {
  const out: Record<string, { condition: 'started' | 'healthy' }> = {};
  const add = (name: unknown, condition: 'started' | 'healthy', at: string): void => {
    if (typeof name !== 'string' || !services.includes(name)) report(at, `a service of this file, got ${JSON.stringify(name)}`);
    else out[name] = { condition };
  };
  if (Array.isArray(value)) value.forEach((name, i) => add(name, 'started', `${path}.${i}`));
  else if (isMap(value)) {
    for (const [name, opts] of Object.entries(value)) {
      const at = `${path}.${name}`;
      if (!isMap(opts)) {
        report(at, 'a map with condition');
        continue;
      }
      onlyKeys(opts, at, ['condition'], report);
      const c = opts.condition ?? 'service_started';
      if (c === 'service_started' || c === 'service_healthy') add(name, c === 'service_healthy' ? 'healthy' : 'started', at);
      else report(`${at}.condition`, `"service_started" or "service_healthy", got ${JSON.stringify(c)}`);
    }
  } else report(path, 'a list of service names or a map of service: { condition }');
  return out;
}

/** A service's networks: the default, or the one declared network (the app's own); nothing else to say. */
function readNetworks(value: unknown, path: string, declaredNetworks: Set<string>, report: Report): void {
  const names = Array.isArray(value) ? value : isMap(value) ? Object.keys(value) : undefined;
  if (!names) return report(path, 'a list of network names');
  if (isMap(value)) {
    for (const [name, opts] of Object.entries(value)) if (opts !== null) report(`${path}.${name}`, 'no options (aliases, addresses): services reach each other by service name');
  }
  names.forEach((n: unknown, i) => {
    if (n !== 'default' && !(typeof n === 'string' && declaredNetworks.has(n))) report(`${path}.${Array.isArray(value) ? i : String(n)}`, `"default" or the network declared at the top (the app's own), got ${JSON.stringify(n)}`);
  });
}
