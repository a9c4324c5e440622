import { Store } from 'mqtt';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { defaultConfig, type AgentConfig } from '../../src/config/schema.js';
import { clientOptions, type ClientOptionsInput } from '../../src/mqtt/client-options.js';
import { AgentError } from '../../src/util/errors.js';
import { tempDirs } from '../helpers/tmp.js';

const UUID = 'dev-0123';
const NOW = Date.UTC(2026, 0, 1, 12);
const dirs = tempDirs();

afterEach(() => {
  vi.unstubAllEnvs();
  dirs.cleanup();
});

function input(over: Omit<Partial<ClientOptionsInput>, 'mqtt'> & { mqtt?: Partial<AgentConfig['mqtt']> } = {}): ClientOptionsInput {
  const { mqtt, ...rest } = over;
  return {
    mqtt: { ...defaultConfig().mqtt, ...mqtt },
    uuid: UUID,
    url: new URL('mqtt://broker.example.test:1883'),
    version: 5,
    statusTopic: `iot/${UUID}/status`,
    now: NOW,
    outgoingStore: new Store(),
    incomingStore: new Store(),
    maxPacketBytes: 65_536,
    ...rest,
  };
}

/** PEM-like files in a temp dir: clientOptions passes their text on, mqtt.js parses it when it connects. */
function tlsFiles(): { caFile: string; certFile: string; keyFile: string; missing: string } {
  const dir = dirs.make('mqtt-tls-');
  const file = (name: string): string => {
    const path = join(dir, name);
    writeFileSync(path, `-----BEGIN ${name}-----\n${name} of the test\n-----END ${name}-----\n`);
    return path;
  };
  return { caFile: file('ca.crt'), certFile: file('client.crt'), keyFile: file('client.key'), missing: join(dir, 'missing.pem') };
}

const MQTTS = new URL('mqtts://broker.example.test:8883');

describe('clientOptions', () => {
  it('identifies the device by its uuid unless the config names a client id and user', () => {
    const byUuid = clientOptions(input());
    expect(byUuid.clientId).toBe(UUID);
    expect(byUuid.username).toBe(UUID);

    const named = clientOptions(input({ mqtt: { clientId: 'gateway-7', username: 'fleet-a' } }));
    expect(named.clientId).toBe('gateway-7');
    expect(named.username).toBe('fleet-a');
  });

  it('sends the configured password, else the device api key, else no password at all', () => {
    expect(clientOptions(input({ apiKey: 'api-key', mqtt: { password: 'secret' } })).password).toBe('secret');
    expect(clientOptions(input({ apiKey: 'api-key' })).password).toBe('api-key');
    expect(Object.keys(clientOptions(input()))).not.toContain('password');
  });

  it('uses the MQTT credentials issued at registration where mqtt.username / mqtt.password are not set', () => {
    const issued = { username: 'issued-user', password: 'issued-pass' };
    const o = clientOptions(input({ apiKey: 'api-key', issued }));
    expect([o.username, o.password]).toEqual(['issued-user', 'issued-pass']);
    const configured = clientOptions(input({ apiKey: 'api-key', issued, mqtt: { username: 'fleet-a', password: 'secret' } }));
    expect([configured.username, configured.password]).toEqual(['fleet-a', 'secret']);
  });

  it('keeps the session across connections unless a clean one is asked for', () => {
    expect(clientOptions(input()).clean).toBe(false);
    expect(clientOptions(input({ clean: false })).clean).toBe(false);
    expect(clientOptions(input({ clean: true })).clean).toBe(true);
  });

  it('leaves reconnects, resubscribes and QoS 0 queueing to the session, pings every keep-alive, and checks the broker certificate', () => {
    const o = clientOptions(input({ mqtt: { keepAliveSeconds: 45, connectTimeoutMs: 12_000 } }));
    expect(o).toMatchObject({
      protocolVersion: 5,
      keepalive: 45,
      connectTimeout: 12_000,
      reconnectPeriod: 0,
      resubscribe: false,
      queueQoSZero: false,
      reschedulePings: false,
      writeCache: false,
      rejectUnauthorized: true,
    });
  });

  it('leaves a retained "offline" will on the status topic, stamped with the time of the connection', () => {
    const { will } = clientOptions(input());
    expect(will).toMatchObject({ topic: `iot/${UUID}/status`, qos: 1, retain: true });
    expect(JSON.parse(Buffer.from(will!.payload as Buffer).toString('utf8'))).toEqual({ state: 'offline', ts: NOW });
  });

  it("silences mqtt.js's debug logging unless DEBUG is set", () => {
    vi.stubEnv('DEBUG', undefined);
    const quiet = clientOptions(input());
    expect(quiet.log).toBeTypeOf('function');
    expect(quiet.log!('connecting')).toBeUndefined();

    vi.stubEnv('DEBUG', 'mqttjs*');
    expect(Object.keys(clientOptions(input()))).not.toContain('log');
  });

  it('asks an MQTT 5 broker for the session expiry and the largest packet; MQTT 3.1.1 gets no properties', () => {
    const v5 = clientOptions(input({ version: 5, maxPacketBytes: 4096, mqtt: { sessionExpirySeconds: 3600 } }));
    expect(v5.properties).toEqual({ sessionExpiryInterval: 3600, maximumPacketSize: 4096 });

    const v4 = clientOptions(input({ version: 4, maxPacketBytes: 4096, mqtt: { sessionExpirySeconds: 3600 } }));
    expect(v4.protocolVersion).toBe(4);
    expect(Object.keys(v4)).not.toContain('properties');
  });

  it('over mqtts: trusts the CA file on top of the system roots and presents the client certificate and key', () => {
    const f = tlsFiles();
    const o = clientOptions(input({ url: MQTTS, mqtt: { caFile: f.caFile, certFile: f.certFile, keyFile: f.keyFile } }));
    const ca = o.ca as string[];
    expect(ca.slice(0, rootCertificates.length)).toEqual([...rootCertificates]);
    expect(ca.at(-1)).toContain('ca.crt of the test');
    expect(o.cert).toContain('client.crt of the test');
    expect(o.key).toContain('client.key of the test');
  });

  it('over mqtts: presents no client certificate unless both certFile and keyFile are set', () => {
    const f = tlsFiles();
    const certOnly = clientOptions(input({ url: MQTTS, mqtt: { certFile: f.certFile } }));
    const keyOnly = clientOptions(input({ url: MQTTS, mqtt: { keyFile: f.keyFile } }));
    for (const o of [certOnly, keyOnly]) {
      expect(Object.keys(o)).not.toContain('cert');
      expect(Object.keys(o)).not.toContain('key');
      expect(Object.keys(o)).not.toContain('ca');
    }
  });

  it('over plain mqtt: reads no TLS file, even one that does not exist', () => {
    const f = tlsFiles();
    const o = clientOptions(input({ mqtt: { caFile: f.missing, certFile: f.missing, keyFile: f.missing } }));
    for (const key of ['ca', 'cert', 'key']) expect(Object.keys(o)).not.toContain(key);
  });

  it('an unreadable TLS file is a config error naming the field, the path and why', () => {
    const f = tlsFiles();
    const cases = [
      { field: 'caFile', mqtt: { caFile: f.missing } },
      { field: 'certFile', mqtt: { certFile: f.missing, keyFile: f.keyFile } },
      { field: 'keyFile', mqtt: { certFile: f.certFile, keyFile: f.missing } },
    ];
    for (const c of cases) {
      let caught: unknown;
      try {
        clientOptions(input({ url: MQTTS, mqtt: c.mqtt }));
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(AgentError);
      const err = caught as AgentError;
      expect(err.code).toBe('MQTT_CONFIG_INVALID');
      expect(err.cause).toMatchObject({ code: 'ENOENT' });
      expect(err.message).toBe(`mqtt.${c.field}: cannot read ${f.missing}: ${(err.cause as Error).message}`);
      expect(err.message).toContain('no such file or directory');
    }
  });
});
