import { createHash } from 'node:crypto';
import type { ConfigIssue } from '../config/issues.js';
import { AgentError } from '../util/errors.js';
import { canonicalRegistry, DOCKER_HUB, isRegistryHost, REGISTRY_HOST_EXPECTED } from '../util/registry-host.js';
import { parseImageReference } from './image-ref.js';
import { isSafeName, NAME_EXPECTED } from './names.js';

/**
 * Registry credentials for image pulls. A target may carry a login per registry, or ask for the
 * device's own (`workloads.registries` in the local config); the target's entry wins, else the
 * device's, else the pull is anonymous. Passwords are never shown: every view of a target goes
 * through `redactTargetDocument`, and validation issues never carry one.
 */

/** A username and password for one registry. */
export interface RegistryLogin {
  username: string;
  password: string;
}

/** What a target says for one registry: its own login (the password inline or one of the device's secrets), or "use the device's". */
export type TargetRegistryEntry = RegistryLogin | { username: string; passwordSecret: string } | { device: true };

export type CredentialSource = 'target' | 'device';

export interface RegistryCredential extends RegistryLogin {
  source: CredentialSource;
}

/**
 * Where pulls get their credentials. A small interface so the lookup can move (an encrypted
 * secrets store) without the pulls knowing. `for` returns undefined for an anonymous pull and
 * throws `REGISTRY_CREDENTIALS_MISSING` when the target asks for device-local ones that are not there.
 */
export interface RegistryCredentials {
  for(registry: string): RegistryCredential | undefined;
}

export const REDACTED = '[redacted]';

/** The registry an image is pulled from: its domain, or Docker Hub for a reference without one. */
export function registryOfImage(image: string): string {
  const ref = parseImageReference(image);
  if ('error' in ref || ref.registry === undefined) return DOCKER_HUB;
  return canonicalRegistry(ref.registry);
}

/** Looks a registry up in a record keyed by host[:port], matching Docker Hub's aliases and letter case. */
function lookup<T>(record: Readonly<Record<string, T>> | undefined, registry: string): T | undefined {
  if (!record) return undefined;
  for (const [key, value] of Object.entries(record)) if (canonicalRegistry(key) === registry) return value;
  return undefined;
}

/** The rule: the target's login, else the device's (asked for or not), else anonymous. */
export class TargetRegistryCredentials implements RegistryCredentials {
  constructor(
    private readonly target: Readonly<Record<string, TargetRegistryEntry>> | undefined,
    private readonly device: Readonly<Record<string, RegistryLogin>> | undefined,
    /** The device's secrets, for a login whose password is one of them (kept encrypted, out of the target). */
    private readonly secrets?: { get(name: string): string | undefined },
  ) {}

  for(registry: string): RegistryCredential | undefined {
    const wanted = canonicalRegistry(registry);
    const inline = lookup(this.target, wanted);
    if (inline && 'passwordSecret' in inline) {
      const password = this.secrets?.get(inline.passwordSecret);
      if (password === undefined) {
        throw new AgentError(
          'REGISTRY_CREDENTIALS_MISSING',
          `waiting for secret ${inline.passwordSecret}: the target's login for ${registry} takes its password from it, and the device does not hold it yet (it comes from the cloud, or set it with iotistic-agent secret set ${inline.passwordSecret})`,
        );
      }
      return { username: inline.username, password, source: 'target' };
    }
    if (inline && 'username' in inline) return { username: inline.username, password: inline.password, source: 'target' };
    const local = lookup(this.device, wanted);
    if (local) return { username: local.username, password: local.password, source: 'device' };
    if (inline) {
      throw new AgentError(
        'REGISTRY_CREDENTIALS_MISSING',
        `the target asks for the device's own credentials for ${registry} ({"device": true}), but the device's config has none: set workloads.registries["${registry}"] to { "username", "password" }`,
      );
    }
    return undefined;
  }
}

/** Tells credentials apart without keeping them readable: a changed password gives a new fingerprint. */
export function credentialFingerprint(c: RegistryCredential | undefined): string {
  if (!c) return 'anonymous';
  return createHash('sha256').update(JSON.stringify([c.source, c.username, c.password])).digest('hex');
}

const SOURCE_WORDS: Readonly<Record<CredentialSource, string>> = { target: 'from the target', device: "from the device's config" };

/** A registry's refusal (HTTP 401/403) in the engine's words. */
const REFUSED_RE = /unauthori[sz]ed|authentication required|no basic auth credentials|denied|\b401\b|\b403\b/i;

/**
 * A pull error in words for the service's `lastError`: a registry's refusal says whether credentials
 * were sent and where they came from; anything else is the engine's reason.
 */
export function pullErrorMessage(image: string, registry: string, credential: RegistryCredential | undefined, reason: string): string {
  if (!REFUSED_RE.test(reason)) return `pull of ${image} failed: ${reason}`;
  const why = credential
    ? `wrong credentials for ${registry} (user "${credential.username}", ${SOURCE_WORDS[credential.source]})`
    : `authentication required: no credentials for ${registry} (set "registries" in the target or workloads.registries in the device's config)`;
  return `pull of ${image} was refused by the registry: ${why}; the registry said: ${reason}`;
}

/** A copy of a value with every `password` under `registries` replaced (usernames and hosts stay: an operator needs them). */
function redactEntries(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(redactEntries);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = k === 'password' && v !== undefined ? REDACTED : redactEntries(v);
  return out;
}

/** A target document as it may be shown (API, logs, reports): the registries' passwords redacted. */
export function redactTargetDocument<T>(doc: T): T {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc) || !('registries' in doc)) return doc;
  return { ...doc, registries: redactEntries((doc as { registries: unknown }).registries) } as T;
}

/** A misshapen entry as it may be shown: a string or an array in its place may be the password itself. */
function shownEntry(value: unknown): unknown {
  return typeof value === 'string' || Array.isArray(value) ? REDACTED : redactEntries(value);
}

/** An entry is exactly `{ username, password }` (non-empty strings), `{ username, passwordSecret }` or `{ device: true }`. */
function entryIssues(path: string, entry: unknown): ConfigIssue[] {
  const expected = 'an object { "username": "...", "password": "..." }, { "username": "...", "passwordSecret": "<secret name>" } or { "device": true }';
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) return [{ path, source: 'target', value: shownEntry(entry), expected }];
  const e = entry as Record<string, unknown>;
  const issues: ConfigIssue[] = [];
  if ('device' in e) {
    if (e.device !== true) issues.push({ path: `${path}.device`, source: 'target', value: e.device, expected: 'true (use the device\'s own credentials for this registry)' });
    for (const k of Object.keys(e)) {
      if (k !== 'device') issues.push({ path: `${path}.${k}`, source: 'target', expected: 'no other key beside "device": true (give either { "device": true } or a username and password)' });
    }
    return issues;
  }
  const fromSecret = 'passwordSecret' in e;
  if (fromSecret && 'password' in e) issues.push({ path: `${path}.password`, source: 'target', expected: 'no password beside passwordSecret (give one of the two)' });
  for (const k of ['username', ...(fromSecret ? [] : ['password'])]) {
    const v = e[k];
    if (typeof v !== 'string' || v === '') {
      const shown = k === 'password' && v !== undefined ? REDACTED : v;
      issues.push({ path: `${path}.${k}`, source: 'target', ...(v !== undefined ? { value: shown } : {}), expected: `a non-empty string (the registry's ${k})` });
    }
  }
  if (fromSecret && !isSafeName(e.passwordSecret)) issues.push({ path: `${path}.passwordSecret`, source: 'target', value: e.passwordSecret, expected: `the name of one of the device's secrets: ${NAME_EXPECTED}` });
  for (const k of Object.keys(e)) {
    if (!['username', 'password', 'passwordSecret'].includes(k)) issues.push({ path: `${path}.${k}`, source: 'target', expected: 'no such key (an entry is { "username", "password" }, { "username", "passwordSecret" } or { "device": true })' });
  }
  return issues;
}

/**
 * The problems of a target's `registries`, on the raw input: zod's own would show the entry
 * (password included) and say "Invalid input" for a bad key; these name the path and never a password.
 */
export function registryIssues(doc: unknown): ConfigIssue[] {
  if (doc === null || typeof doc !== 'object' || !('registries' in doc)) return [];
  const regs = (doc as { registries: unknown }).registries;
  if (regs === undefined) return [];
  if (regs === null || typeof regs !== 'object' || Array.isArray(regs)) {
    return [{ path: 'registries', source: 'target', value: shownEntry(regs), expected: `an object keyed by ${REGISTRY_HOST_EXPECTED}` }];
  }
  const issues: ConfigIssue[] = [];
  const seen = new Map<string, string>();
  for (const [key, entry] of Object.entries(regs)) {
    const path = `registries[${JSON.stringify(key)}]`;
    if (!isRegistryHost(key)) {
      issues.push({ path, source: 'target', value: key, expected: `a key that is ${REGISTRY_HOST_EXPECTED}` });
      continue;
    }
    const same = seen.get(canonicalRegistry(key));
    if (same !== undefined) issues.push({ path, source: 'target', value: key, expected: `one entry per registry ("${same}" names the same one)` });
    else seen.set(canonicalRegistry(key), key);
    issues.push(...entryIssues(path, entry));
  }
  return issues;
}

/** The secrets a target's registry logins take their passwords from. */
export function registrySecretNames(registries: Readonly<Record<string, TargetRegistryEntry>> | undefined): string[] {
  return Object.values(registries ?? {}).flatMap((e) => ('passwordSecret' in e ? [e.passwordSecret] : []));
}
