import { errorMessage } from '../util/errors.js';
import { Kick } from '../util/kick.js';
import type { Random } from '../util/random.js';
import { failureKind } from '../resilience/outcome.js';
import { SECRET_LIMITS, secretIssue, type SecretStore } from '../secrets/secret-store.js';
import type { TargetState } from '../workloads/target-schema.js';
import type { CloudLoopDeps } from './loop-deps.js';
import { pollLoop } from './poll-loop.js';
import { registrySecretNames } from '../workloads/registry-auth.js';

export interface SecretsFetcherOptions extends CloudLoopDeps {
  store: Pick<SecretStore, 'cloudVersion' | 'has' | 'replaceCloud'>;
  random: Random;
  /** The target in force (its references and `secretsVersion`). */
  target: () => TargetState | undefined;
  pollIntervalMs: () => number;
  /** `limits.maxCloudResponseBytes`. */
  maxBytes: number;
}

/** Why the held secrets are not enough for the target in force, or undefined. */
export function fetchReason(target: TargetState | undefined, store: Pick<SecretStore, 'cloudVersion' | 'has'>, started: boolean): string | undefined {
  if (!target) return undefined;
  const names = [...Object.values(target.apps).flatMap((a) => Object.values(a.services).flatMap((s) => s.secrets.map((r) => r.name))), ...registrySecretNames(target.registries)];
  if (target.secretsVersion !== undefined && target.secretsVersion !== store.cloudVersion) return 'a new secretsVersion';
  const missing = names.find((n) => !store.has(n));
  if (missing) return `secret ${missing} is not held`;
  if (!started && names.length > 0) return 'start';
  return undefined;
}

/**
 * Fetches the device's secrets (`GET /device/v1/{uuid}/secrets`) when the target in force needs
 * them: a name the device does not hold, a `secretsVersion` other than the one held, or at start.
 * Through the one HTTP client and the cloud loop (backoff, offline floor); offline the held values stay.
 */
export class SecretsFetcher {
  private readonly kick = new Kick();
  private fetchedOnce = false;
  lastError: string | undefined;

  constructor(private readonly o: SecretsFetcherOptions) {}

  /** Looks again now (the target changed). */
  check(): void {
    this.kick.kick();
  }

  async run(signal: AbortSignal): Promise<void> {
    const o = this.o;
    await pollLoop(
      { retry: o.retry, random: o.random, logger: o.logger, intervalMs: o.pollIntervalMs, kick: this.kick, what: 'secrets fetch' },
      async (s) => {
        await this.fetchIfNeeded(s);
        return 'wait';
      },
      signal,
    );
  }

  /** Fetches when needed; whether it fetched a new set. Throws a CloudError on transport or HTTP failure. */
  async fetchIfNeeded(signal?: AbortSignal): Promise<boolean> {
    const { http, uuid, monitor, store } = this.o;
    const why = fetchReason(this.o.target(), store, this.fetchedOnce);
    if (!why) return false;
    const held = store.cloudVersion;
    let res;
    try {
      res = await http.request({
        method: 'GET',
        path: `/device/v1/${encodeURIComponent(uuid)}/secrets`,
        headers: held !== null ? { 'if-none-match': JSON.stringify(held) } : {},
        accept: [304],
        maxBytes: { bytes: this.o.maxBytes, setting: 'limits.maxCloudResponseBytes' },
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      if (!signal?.aborted) {
        this.lastError = errorMessage(err);
        monitor.markFailure('api', 'secrets', this.lastError, failureKind(err));
      }
      throw err;
    }
    monitor.markSuccess('api', 'secrets');
    this.fetchedOnce = true;
    this.lastError = undefined;
    if (res.status === 304) return false;
    const parsed = parseSecrets(res.body);
    if (typeof parsed === 'string') {
      this.lastError = parsed;
      // Never the body: it holds the values.
      this.o.logger.error({ reason: parsed }, `the cloud's secrets were refused, keeping those held: ${parsed}`);
      return false;
    }
    store.replaceCloud(parsed.version, parsed.secrets);
    // Names only: values are never logged.
    this.o.logger.info({ version: parsed.version, names: Object.keys(parsed.secrets), reason: why }, 'secrets fetched');
    return true;
  }
}

/** The answer's shape, or why it is refused (never quoting a value). */
export function parseSecrets(body: unknown): { version: string; secrets: Record<string, string> } | string {
  const b = body as { version?: unknown; secrets?: unknown } | null;
  if (b === null || typeof b !== 'object') return 'expected an object { version, secrets }';
  if (typeof b.version !== 'string' || b.version.length === 0 || b.version.length > 128) return 'version: expected a string of 1-128 characters';
  if (b.secrets === null || typeof b.secrets !== 'object' || Array.isArray(b.secrets)) return 'secrets: expected an object of name: value';
  const entries = Object.entries(b.secrets as Record<string, unknown>);
  if (entries.length > SECRET_LIMITS.maxNames) return `secrets: ${entries.length} names, expected at most ${SECRET_LIMITS.maxNames}`;
  const out: Record<string, string> = {};
  for (const [name, value] of entries) {
    if (typeof value !== 'string') return `secrets.${name}: expected a string value`;
    const issue = secretIssue(name, value);
    if (issue) return issue;
    out[name] = value;
  }
  return { version: b.version, secrets: out };
}
