import type { IssuedCredentials } from '../boot/identity.js';
import { CloudError } from '../resilience/cloud-error.js';
import { failureKind, type OutcomeSink } from '../resilience/outcome.js';
import type { RetryPolicy } from '../resilience/retry-policy.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { Kick } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import type { CloudHttpClient } from './http-client.js';
import { PauseGate } from '../util/pause-gate.js';

/** Where the device key comes from, and what registration is doing: in `/v2/state`, never a key. */
export type RegistrationStatus =
  | { state: 'configured' }
  | { state: 'unregistered'; reason: string }
  | { state: 'registered'; since: number }
  | { state: 'registering'; attempts: number; lastError: string | null }
  | { state: 'refused'; reason: string; statusCode: number | null; since: number };

export interface RegistrarOptions {
  http: Pick<CloudHttpClient, 'request'>;
  uuid: string;
  name?: string | undefined;
  agentVersion: string;
  /** `device.apiKey`: when set it wins, and nothing is registered. */
  configuredKey?: string | undefined;
  /** `device.provisioningKey`. */
  provisioningKey?: string | undefined;
  /** What identity.json holds from an earlier registration. */
  issued?: IssuedCredentials | undefined;
  /** Keeps what was issued (in identity.json); throws when it cannot write. */
  keep: (issued: IssuedCredentials) => void;
  retry: Pick<RetryPolicy, 'afterFailure' | 'afterSuccess' | 'wait' | 'waitUnwoken'>;
  /** A refused registration is tried again after half to all of this (the backoff's cap). */
  refusedRetryMaxMs: number;
  monitor: Pick<OutcomeSink, 'markFailure' | 'markSuccess'>;
  clock: Clock;
  random: Random;
  logger: Logger;
  /** A key is there (again): loops that backed off after 401s may try now. */
  onRegistered?: () => void;
}

interface RegisterAnswer {
  apiKey?: unknown;
  uuid?: unknown;
  mqtt?: { username?: unknown; password?: unknown };
}

/** Statuses after which only a change on either side (a new key, a revocation) helps: long waits. */
const REFUSALS = new Set([400, 401, 403, 409]);

/**
 * Registration (docs/lifecycle.md, "Provisioning"): a device with a fleet provisioning key and no
 * device key asks the cloud for one, keeps it in identity.json, and asks again when the cloud
 * refuses that key (401). Loops that need a key wait on `ready()`; meanwhile the agent runs locally.
 */
export class Registrar {
  private issued: IssuedCredentials | undefined;
  private current: RegistrationStatus;
  private readonly kick = new Kick();
  /** Closed until a key is issued: the loops that send one wait here. */
  private readonly keyGate = new PauseGate();
  private attempts = 0;
  private told = false;
  /** The cloud refused the issued key (401): registering again. The key is kept until a new one comes. */
  private refusedKey = false;

  constructor(private readonly o: RegistrarOptions) {
    this.issued = o.issued?.uuid === o.uuid ? o.issued : undefined;
    this.current = o.configuredKey
      ? { state: 'configured' }
      : this.issued
        ? { state: 'registered', since: o.clock.now() }
        : o.provisioningKey
          ? { state: 'registering', attempts: 0, lastError: null }
          : { state: 'unregistered', reason: 'no device.apiKey and no device.provisioningKey' };
  }

  /** The device key to send: the configured one, else the issued one. */
  apiKey(): string | undefined {
    return this.o.configuredKey ?? this.issued?.deviceApiKey;
  }

  /** MQTT credentials from registration, if the cloud gave any (config's mqtt.username/password win). */
  mqttCredentials(): { username: string; password: string } | undefined {
    return this.o.configuredKey ? undefined : this.issued?.mqtt;
  }

  status(): RegistrationStatus {
    return this.current;
  }

  /** Resolves once there is a key to send (at once when there is one, or when nothing can bring one), or on abort. */
  ready(signal: AbortSignal): Promise<void> {
    if (this.apiKey() !== undefined || !this.o.provisioningKey) return Promise.resolve();
    this.keyGate.pause();
    return this.keyGate.whenOpen(signal);
  }

  /** The cloud answered 401 to a request sent with `key`: it was revoked (or replaced). */
  keyRefused(key: string): void {
    if (key !== this.apiKey()) return; // an answer to a key already replaced
    if (this.o.provisioningKey && this.issued && !this.configured()) {
      if (this.refusedKey) return;
      this.refusedKey = true;
      this.current = { state: 'registering', attempts: this.attempts, lastError: 'the cloud refused the device key (401)' };
      this.o.logger.warn({ uuid: this.o.uuid }, 'the cloud refused the device key (401); registering again with device.provisioningKey');
      this.kick.kick();
      return;
    }
    if (this.current.state === 'refused') return;
    const reason = this.o.provisioningKey
      ? 'device key refused (401); it is device.apiKey, set in the config: remove it to register with device.provisioningKey, or set a valid one'
      : 'device key refused (401) and no device.provisioningKey to register again; set a valid device.apiKey or a device.provisioningKey';
    this.current = { state: 'refused', reason, statusCode: 401, since: this.o.clock.now() };
    this.o.logger.error({ uuid: this.o.uuid }, reason);
  }

  /** The cloud answered a request sent with `key` (not 401): a refusal of that key shown is over. */
  keyAccepted(key: string): void {
    if (this.current.state !== 'refused' || this.current.statusCode !== 401 || key !== this.apiKey() || this.refusedKey) return;
    this.current = this.configured() ? { state: 'configured' } : { state: 'registered', since: this.o.clock.now() };
    this.o.logger.info({ uuid: this.o.uuid }, 'the cloud takes the device key again');
  }

  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const needed = Boolean(this.o.provisioningKey) && !this.configured() && (this.issued === undefined || this.refusedKey);
      if (!needed) {
        await this.kick.wait(Number.POSITIVE_INFINITY, signal, this.o.clock);
        continue;
      }
      // After a refused key, one backoff step first (drawn with jitter): a fleet revoked at once must not return in step.
      if (this.refusedKey && this.attempts === 0) await this.o.retry.wait(this.o.retry.afterFailure(new CloudError('http', 'the device key was refused (401)', 401)), signal);
      if (!signal.aborted) await this.attempt(signal);
    }
  }

  private configured(): boolean {
    return this.o.configuredKey !== undefined;
  }

  private async attempt(signal: AbortSignal): Promise<void> {
    this.attempts++;
    try {
      const res = await this.o.http.request<RegisterAnswer>({
        method: 'POST',
        path: '/device/v1/register',
        bearer: this.o.provisioningKey,
        json: { uuid: this.o.uuid, ...(this.o.name ? { name: this.o.name } : {}), agentVersion: this.o.agentVersion },
        signal,
      });
      this.registered(parseAnswer(res.body, this.o.uuid));
    } catch (err) {
      if (signal.aborted) return;
      if (this.refusedKey && err instanceof CloudError && err.status === 409) return this.keyStillLive();
      const { delayMs, refused } = this.failed(err);
      // A refusal waits its time whatever the probe sees: only a change at the cloud ends it (and a
      // wake meanwhile must not end the wait after the next failure either).
      if (refused) await this.o.retry.waitUnwoken(delayMs, signal).catch(() => undefined);
      else await this.o.retry.wait(delayMs, signal);
    }
  }

  /**
   * The key was refused, yet the cloud says it is live (409): the 401 came from something else (a proxy,
   * a captive portal). The key is kept: forgetting it would leave the device refused until an operator
   * revoked it. The backoff is not reset, so 401s that go on come back ever more slowly.
   */
  private keyStillLive(): void {
    this.refusedKey = false;
    this.attempts = 0;
    this.current = { state: 'registered', since: this.o.clock.now() };
    this.o.logger.warn({ uuid: this.o.uuid }, 'the cloud says the device key is still live (409 on registration); keeping it');
  }

  private registered(issued: IssuedCredentials): void {
    this.issued = issued;
    this.refusedKey = false;
    this.persist(issued);
    this.attempts = 0;
    this.told = false;
    this.current = { state: 'registered', since: this.o.clock.now() };
    this.o.retry.afterSuccess();
    this.o.monitor.markSuccess('api', 'register');
    this.o.logger.info({ uuid: this.o.uuid, mqtt: Boolean(issued.mqtt) }, 'registered with the cloud; the device key is kept in identity.json');
    this.keyGate.resume();
    this.o.onRegistered?.();
  }

  /** Records a failed attempt and returns how long to wait before the next. */
  private failed(err: unknown): { delayMs: number; refused: boolean } {
    const message = errorMessage(err);
    const status = err instanceof CloudError ? err.status : undefined;
    if (status !== undefined && REFUSALS.has(status)) {
      const reason = refusalReason(status, message);
      if (!this.told || this.current.state !== 'refused' || this.current.reason !== reason) this.o.logger.error({ uuid: this.o.uuid, statusCode: status }, reason);
      this.told = true;
      this.current = { state: 'refused', reason, statusCode: status, since: this.o.clock.now() };
      this.o.monitor.markFailure('api', 'register', reason, 'auth');
      // Counted, so the backoff goes on from a later step when the refusal ends; the wait is the refusal's own.
      this.o.retry.afterFailure(err);
      return { delayMs: this.o.refusedRetryMaxMs * (0.5 + 0.5 * this.o.random()), refused: true };
    }
    this.current = { state: 'registering', attempts: this.attempts, lastError: message };
    this.o.logger.warn({ uuid: this.o.uuid, err: message, attempts: this.attempts }, 'registration failed; trying again after a backoff (the agent runs locally meanwhile)');
    this.o.monitor.markFailure('api', 'register', message, failureKind(err));
    return { delayMs: this.o.retry.afterFailure(err), refused: false };
  }

  private persist(issued: IssuedCredentials): void {
    try {
      this.o.keep(issued);
    } catch (err) {
      this.o.logger.error({ err: errorMessage(err) }, `could not write identity.json (${errorMessage(err)}); this run uses the device key in memory and the next start registers again`);
    }
  }
}

function refusalReason(status: number, message: string): string {
  const what =
    status === 401
      ? 'the provisioning key was refused (unknown, expired or revoked): set a valid device.provisioningKey'
      : status === 403
        ? "the provisioning key's device limit is reached: raise it in the cloud or use another device.provisioningKey"
        : status === 409
          ? 'the cloud already holds a live key for this device: revoke it there to register again, or restore identity.json'
          : 'the cloud refused the registration request';
  return `registration refused (${status}): ${what} [${message}]`;
}

const BEARER = /^[\x21-\x7e]{8,}$/;

function parseAnswer(body: RegisterAnswer | undefined, uuid: string): IssuedCredentials {
  const bad = (field: string, expected: string, got: unknown): never => {
    throw new CloudError('http', `POST /device/v1/register answered 201 with ${field} ${got === undefined ? 'missing' : 'invalid'}; expected ${expected}`, 502);
  };
  if (typeof body?.apiKey !== 'string' || !BEARER.test(body.apiKey)) return bad('apiKey', 'a bearer token of 8+ visible ASCII characters', body?.apiKey);
  if (body.uuid !== undefined && body.uuid !== uuid) return bad('uuid', `this device's uuid ${uuid}`, body.uuid);
  const m = body.mqtt;
  if (m !== undefined && (typeof m.username !== 'string' || typeof m.password !== 'string' || m.username === '')) return bad('mqtt', '{ username, password } strings', '(object)');
  return { uuid, deviceApiKey: body.apiKey, ...(m ? { mqtt: { username: m.username as string, password: m.password as string } } : {}) };
}
