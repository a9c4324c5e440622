import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeCa, type TestCa } from '../helpers/certs.js';
import { startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { observe, testSession, TEST_UUID, until, type TestSession } from '../helpers/mqtt.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

// Real Mosquitto with a TLS listener on 127.0.0.1 and certificates made by the openssl CLI.
const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

let ca: TestCa;
let other: TestCa;
let broker: Mosquitto;
beforeAll(async () => {
  ca = makeCa('Iotistic Test CA');
  other = makeCa('Some Other CA');
  broker = await startMosquitto({ tls: { caFile: ca.caFile, certFile: ca.server.certFile, keyFile: ca.server.keyFile, requireCertificate: true } });
});
afterAll(async () => {
  await broker?.dispose();
  ca?.dispose();
  other?.dispose();
});

function session(mqtt: Parameters<typeof testSession>[0]['mqtt'], url = broker.url): TestSession {
  const s = testSession({ dbPath: join(dirs.make(), 'agent.db'), url, mqtt, maxBackoffSeconds: 0.5 });
  cleanup(() => s.close());
  s.start();
  return s;
}

describe('MQTT over TLS (mqtts://)', () => {
  it('connects with mutual TLS and publishes', async () => {
    const device = ca.client(TEST_UUID);
    const s = session({ caFile: ca.caFile, certFile: device.certFile, keyFile: device.keyFile });
    const viewer = ca.client('observer');
    const cloud = await observe(broker.url, `iot/${TEST_UUID}/events`, {
      ca: readFileSync(ca.caFile),
      cert: readFileSync(viewer.certFile),
      key: readFileSync(viewer.keyFile),
      rejectUnauthorized: true,
    });
    cleanup(() => cloud.close());
    await until('connected', () => s.session.connected);
    expect(await s.session.publish({ topic: `iot/${TEST_UUID}/events`, payload: JSON.stringify({ id: 'tls-1' }), id: 'tls-1' })).toEqual({ ok: true });
    await until('the message', () => cloud.ids().includes('tls-1'));
    // The host name form checks the DNS entry of the certificate.
    const byName = session({ caFile: ca.caFile, certFile: device.certFile, keyFile: device.keyFile, clientId: 'by-name' }, broker.url.replace('127.0.0.1', 'localhost'));
    await until('connected by name', () => byName.session.connected);
  });

  it('refuses a broker whose certificate comes from another CA, with an error that says so', async () => {
    const device = other.client(TEST_UUID);
    const s = session({ caFile: other.caFile, certFile: device.certFile, keyFile: device.keyFile });
    const error = await until('a failed attempt', () => s.session.stats().lastError);
    expect(error).toMatch(/^TLS: the certificate of 127\.0\.0\.1 is not signed by the CA in mqtt\.caFile \(.*\) or the system roots: .* \((SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\)$/);
    expect(s.session.connected).toBe(false);
    expect(s.monitor.health().channels.mqtt?.lastError).toBe(error);
  });

  it('is refused by the broker without a client certificate, or with one from another CA', async () => {
    const bare = session({ caFile: ca.caFile, clientId: 'no-cert' });
    const stranger = other.client('stranger');
    const wrong = session({ caFile: ca.caFile, certFile: stranger.certFile, keyFile: stranger.keyFile, clientId: 'wrong-ca' });
    const bareError = await until('the bare attempt to fail', () => bare.session.stats().lastError);
    const wrongError = await until('the wrong-CA attempt to fail', () => wrong.session.stats().lastError);
    // TLS 1.3: the broker checks the client certificate after the handshake and answers with an alert.
    expect(bareError).toBe(
      'TLS: the broker refused the connection: it may require a client certificate (mqtt.certFile, mqtt.keyFile): tlsv13 alert certificate required (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED)',
    );
    expect(wrongError).toBe(`TLS: the broker refused the client certificate in mqtt.certFile (${stranger.certFile}): tlsv1 alert unknown ca (ERR_SSL_TLSV1_ALERT_UNKNOWN_CA)`);
    expect(bare.session.connected || wrong.session.connected).toBe(false);
  });
});
