import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CloudHttpClient } from '../../src/cloud/http-client.js';
import { describeConnectionError } from '../../src/mqtt/reasons.js';
import { ClockSync, TIMESYNCD_FLAG, wakeOnClockSync } from '../../src/resilience/clock-sync.js';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { failureKind } from '../../src/resilience/outcome.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { makeCa, notYetValidServer, type TestCa } from '../helpers/certs.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

/**
 * A certificate "not yet valid" while the clock is not synced is reported as the clock's problem
 * (CLOUD_CLOCK), not the network's, and the loops try again once the clock is synced. A real TLS
 * server whose certificate starts in 2030.
 */

let ca: TestCa;
let server: Server;
let url: string;

beforeAll(async () => {
  ca = makeCa('Clock Test CA');
  const cert = notYetValidServer(ca);
  server = createServer({ cert: readFileSync(cert.certFile), key: readFileSync(cert.keyFile) }, (_req, res) => res.end('{}'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  ca.dispose();
});

async function failure(synced: boolean): Promise<CloudError> {
  const client = new CloudHttpClient({ baseUrl: url, timeoutMs: 5_000, clock: { now: () => Date.UTC(1970, 0, 1) }, caFile: ca.caFile, clockSynced: () => synced });
  try {
    await client.request({ method: 'GET', path: '/device/v1/x/state' });
  } catch (err) {
    expect(err).toBeInstanceOf(CloudError);
    return err as CloudError;
  } finally {
    await client.close();
  }
  throw new Error('expected the request to fail');
}

describe('a certificate not yet valid', () => {
  it('with the clock not synced: a clock error that names the clock, retryable, and no network failure', async () => {
    const err = await failure(false);
    expect(err).toMatchObject({ kind: 'clock', code: 'CLOUD_CLOCK', retryable: true });
    expect(err.message).toMatch(/^GET \/device\/v1\/x\/state failed: the device clock is not synced \(it reads 1970-01-01T00:00:00.000Z\), and by it the server's certificate is not yet valid \(CERT_NOT_YET_VALID\)/);
    expect(failureKind(err)).toBe('answer');
  });

  it('with the clock synced: the TLS failure it is (the certificate really is not valid yet)', async () => {
    const err = await failure(true);
    expect(err).toMatchObject({ kind: 'network', code: 'CLOUD_NETWORK' });
    expect(err.message).not.toContain('clock');
    expect(failureKind(err)).toBe('transport');
  });

  it('over MQTT: the connection error names the clock while it is not synced', () => {
    const err = Object.assign(new Error('certificate is not yet valid'), { code: 'CERT_NOT_YET_VALID' });
    const ctx = { host: 'broker.example.com', connectTimeoutMs: 30_000 };
    expect(describeConnectionError(err, { ...ctx, clock: { synced: false, now: 0 } })).toBe(
      "TLS to broker.example.com: the device clock is not synced (it reads 1970-01-01T00:00:00.000Z), and by it the server's certificate is not yet valid (CERT_NOT_YET_VALID); retrying once the clock is synced",
    );
    expect(describeConnectionError(err, { ...ctx, clock: { synced: true, now: 0 } })).toMatch(/is not yet valid \(is the device clock right\?\)/);
  });

  it('is retried once the clock is synced: the loops sleeping out their backoff are woken', async () => {
    const clock = new FakeClock(Date.UTC(1970, 0, 1));
    const files = new Set<string>();
    const sync = new ClockSync({ clock, logger: silentLogger(), notBefore: Date.UTC(2026, 0, 1), exists: (p) => files.has(p), timedatectl: () => Promise.resolve('no') });
    const wakeup = new Wakeup({ clock, random: () => 0.5, staggerMaxMs: 1_000 });
    wakeOnClockSync(sync, [wakeup]);
    await sync.check();
    const slept = wakeup.sleep(60 * 60_000);
    await clock.advance(10_000);
    files.add(TIMESYNCD_FLAG);
    clock.jumpWall(Date.UTC(2026, 11, 6) - clock.now());
    await sync.check();
    await clock.advance(500);
    await expect(Promise.race([slept, Promise.resolve('still asleep')])).resolves.toBe('woken');
  });
});
