import { describe, expect, it } from 'vitest';
import type { IssuedCredentials } from '../../src/boot/identity.js';
import type { CloudRequest, CloudResponse } from '../../src/cloud/http-client.js';
import { Registrar } from '../../src/cloud/registration.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger } from '../helpers/logger.js';

type Answer = { status: number; body?: unknown } | Error;

/** A registrar on a fake clock against a scripted cloud: each request takes the next answer. */
function setup(opts: { answers: Answer[]; provisioningKey?: string; configuredKey?: string; issued?: IssuedCredentials }) {
  const clock = new FakeClock();
  const random = (): number => 0;
  const requests: { at: number; req: CloudRequest }[] = [];
  const kept: IssuedCredentials[] = [];
  const marks: string[] = [];
  let registeredCalls = 0;
  const log = captureLogger();
  const wakeup = new Wakeup({ clock, random });
  const http = {
    request: <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
      requests.push({ at: clock.monotonic(), req });
      const a = opts.answers.shift() ?? new CloudError('network', 'no more answers');
      if (a instanceof Error) return Promise.reject(a);
      if (a.status >= 300) return Promise.reject(new CloudError('http', `POST /device/v1/register answered ${a.status}`, a.status));
      return Promise.resolve({ status: a.status, headers: {}, body: a.body as T });
    },
  };
  const registrar = new Registrar({
    http,
    uuid: 'dev-1',
    agentVersion: '1.2.3',
    provisioningKey: opts.provisioningKey,
    configuredKey: opts.configuredKey,
    issued: opts.issued,
    keep: (i) => kept.push(i),
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 8_000, strategy: 'none', clock, random }), sleeper: wakeup, clock }),
    refusedRetryMaxMs: 8_000,
    monitor: { markSuccess: (ch, op) => marks.push(`ok ${ch} ${op}`), markFailure: (ch, op, _e, kind) => marks.push(`fail ${ch} ${op} ${kind}`) },
    clock,
    random,
    logger: log.logger,
    onRegistered: () => registeredCalls++,
  });
  const stop = new AbortController();
  const running = registrar.run(stop.signal);
  return { clock, registrar, requests, kept, marks, log, wakeup, registered: () => registeredCalls, stop: async () => (stop.abort(), await running) };
}

const ok = (apiKey: string, mqtt?: { username: string; password: string }): Answer => ({ status: 201, body: { uuid: 'dev-1', apiKey, ...(mqtt ? { mqtt } : {}) } });

describe('Registrar', () => {
  it('offline, retries with the backoff; then keeps the key, answers ready() and wakes the loops', async () => {
    const net = (): Error => new CloudError('network', 'POST /device/v1/register failed: connection refused (ECONNREFUSED)');
    const t = setup({ provisioningKey: 'prov-key-123456', answers: [net(), net(), ok('device-key-1', { username: 'dev-1', password: 'mqtt-pass' })] });
    let ready = false;
    void t.registrar.ready(new AbortController().signal).then(() => (ready = true));
    await t.clock.advance(0);
    expect(t.registrar.status()).toMatchObject({ state: 'registering', attempts: 1, lastError: expect.stringContaining('ECONNREFUSED') });
    await t.clock.advance(1_000);
    await t.clock.advance(2_000);
    expect(t.requests.map((r) => r.at - t.requests[0]!.at)).toEqual([0, 1_000, 3_000]);
    expect(t.requests[0]?.req).toMatchObject({ method: 'POST', path: '/device/v1/register', bearer: 'prov-key-123456', json: { uuid: 'dev-1', agentVersion: '1.2.3' } });
    expect(ready).toBe(true);
    expect(t.registrar.apiKey()).toBe('device-key-1');
    expect(t.registrar.mqttCredentials()).toEqual({ username: 'dev-1', password: 'mqtt-pass' });
    expect(t.kept).toEqual([{ uuid: 'dev-1', deviceApiKey: 'device-key-1', mqtt: { username: 'dev-1', password: 'mqtt-pass' } }]);
    expect(t.registrar.status().state).toBe('registered');
    expect(t.registered()).toBe(1);
    expect(t.marks).toEqual(['fail api register transport', 'fail api register transport', 'ok api register']);
    expect(t.log.text()).not.toContain('device-key-1');
    expect(t.log.text()).not.toContain('prov-key-123456');
    await t.stop();
  });

  it('a refused provisioning key: says so once at error level, an auth failure, and waits half to all of the cap', async () => {
    const t = setup({ provisioningKey: 'prov-key-123456', answers: [{ status: 401 }, { status: 401 }, { status: 403 }] });
    await t.clock.advance(0);
    expect(t.registrar.status()).toMatchObject({ state: 'refused', statusCode: 401, reason: expect.stringContaining('set a valid device.provisioningKey') });
    await t.clock.advance(3_999);
    expect(t.requests).toHaveLength(1);
    await t.clock.advance(1);
    expect(t.requests).toHaveLength(2);
    await t.clock.advance(4_000);
    expect(t.registrar.status()).toMatchObject({ state: 'refused', statusCode: 403, reason: expect.stringContaining('device limit') });
    const errors = t.log.records().filter((r) => r.level === 50);
    // The same refusal twice is said once; a different one is said again.
    expect(errors.map((r) => r.statusCode)).toEqual([401, 403]);
    expect(t.marks).toEqual(['fail api register auth', 'fail api register auth', 'fail api register auth']);
    await t.stop();
  });

  it('a probe wake during a refusal wait neither ends it nor cuts short the backoff after the next failure', async () => {
    const net = (): Error => new CloudError('network', 'POST /device/v1/register failed: connection refused (ECONNREFUSED)');
    const t = setup({ provisioningKey: 'prov-key-123456', answers: [net(), { status: 403 }, net(), ok('device-key-1')] });
    await t.clock.advance(0);
    await t.clock.advance(1_000);
    expect(t.registrar.status().state).toBe('refused');
    // The network comes back while the refusal waits its 4 s (half the cap): no change at the cloud, no early try.
    t.wakeup.wake('probe');
    await t.clock.advance(3_999);
    expect(t.requests).toHaveLength(2);
    await t.clock.advance(1);
    expect(t.requests).toHaveLength(3);
    // The third attempt failed on the network: the backoff's third step (4 s) from its start, not at once for the old wake.
    await t.clock.advance(3_999);
    expect(t.requests).toHaveLength(3);
    await t.clock.advance(1);
    expect(t.requests.map((r) => r.at - t.requests[0]!.at)).toEqual([0, 1_000, 5_000, 9_000]);
    expect(t.registrar.status().state).toBe('registered');
    await t.stop();
  });

  it('its device key refused (401): registers again after a backoff step and replaces the key; a late 401 for the old key changes nothing', async () => {
    const t = setup({ provisioningKey: 'prov-key-123456', issued: { uuid: 'dev-1', deviceApiKey: 'old-device-key' }, answers: [ok('new-device-key')] });
    await t.clock.advance(0);
    expect(t.registrar.status().state).toBe('registered');
    expect(t.requests).toHaveLength(0);
    t.registrar.keyRefused('old-device-key');
    t.registrar.keyRefused('old-device-key');
    await t.clock.advance(0);
    // Not at once: a fleet whose keys were revoked together must not come back in step.
    expect(t.requests).toHaveLength(0);
    expect(t.registrar.status()).toMatchObject({ state: 'registering' });
    await t.clock.advance(1_000);
    expect(t.requests).toHaveLength(1);
    expect(t.kept).toEqual([{ uuid: 'dev-1', deviceApiKey: 'new-device-key' }]);
    expect(t.registrar.apiKey()).toBe('new-device-key');
    t.registrar.keyRefused('old-device-key');
    await t.clock.advance(10_000);
    expect(t.requests).toHaveLength(1);
    expect(t.registrar.apiKey()).toBe('new-device-key');
    await t.stop();
  });

  it('a 401 the cloud does not stand by (409 on registration: the key is live) keeps the key', async () => {
    const t = setup({ provisioningKey: 'prov-key-123456', issued: { uuid: 'dev-1', deviceApiKey: 'live-device-key' }, answers: [{ status: 409 }, ok('never-used')] });
    t.registrar.keyRefused('live-device-key');
    await t.clock.advance(1_000);
    expect(t.requests).toHaveLength(1);
    expect(t.registrar.apiKey()).toBe('live-device-key');
    expect(t.registrar.status().state).toBe('registered');
    expect(t.kept).toEqual([]);
    // Refused again: the backoff was not reset, so the next registration waits the doubled step.
    t.registrar.keyRefused('live-device-key');
    await t.clock.advance(1_999);
    expect(t.requests).toHaveLength(1);
    await t.clock.advance(1);
    expect(t.requests).toHaveLength(2);
    expect(t.registrar.apiKey()).toBe('never-used');
    await t.stop();
  });

  it('a configured key refused and no provisioning key: says what to do once, registers nothing', async () => {
    const t = setup({ configuredKey: 'configured-key-1', answers: [] });
    expect(t.registrar.status().state).toBe('configured');
    t.registrar.keyRefused('configured-key-1');
    t.registrar.keyRefused('configured-key-1');
    await t.clock.advance(60_000);
    expect(t.requests).toHaveLength(0);
    expect(t.registrar.status()).toMatchObject({ state: 'refused', reason: expect.stringContaining('no device.provisioningKey to register again') });
    expect(t.log.records().filter((r) => r.level === 50)).toHaveLength(1);
    // The operator put the key back at the cloud: the next answer ends the refusal shown.
    t.registrar.keyAccepted('configured-key-1');
    expect(t.registrar.status()).toEqual({ state: 'configured' });
    await t.stop();
  });

  it('an answer without a usable key is a failed attempt that names the field; an identity of another uuid is not used', async () => {
    const t = setup({ provisioningKey: 'prov-key-123456', issued: { uuid: 'other-device', deviceApiKey: 'their-key-123' }, answers: [{ status: 201, body: { uuid: 'dev-1' } }, ok('device-key-2')] });
    await t.clock.advance(0);
    expect(t.registrar.status()).toMatchObject({ state: 'registering', lastError: expect.stringContaining('apiKey missing') });
    await t.clock.advance(1_000);
    expect(t.registrar.apiKey()).toBe('device-key-2');
    await t.stop();
  });
});
