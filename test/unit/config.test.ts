import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { envKeys, envName } from '../../src/config/env.js';
import { resolveWithLastKnownGood } from '../../src/config/last-known-good.js';
import { formatIssues, loadConfig, redactConfig, resolveDataDir } from '../../src/config/load.js';
import { agentConfigSchema, defaultConfig } from '../../src/config/schema.js';
import { Store } from '../helpers/store.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function configFile(content: unknown): string {
  const file = join(dirs.make(), 'config.json');
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

function errorsOf(content: unknown, env: NodeJS.ProcessEnv = {}): string {
  const r = loadConfig({ file: configFile(content), env });
  expect(r.ok).toBe(false);
  return r.ok ? '' : formatIssues(r.issues);
}

describe('config schema', () => {
  it('has the seed offline block with its names and documented defaults', () => {
    const d = defaultConfig();
    expect(d.settings.offline).toMatchObject({
      enableQueue: true,
      maxQueueSize: 100_000,
      maxOfflineMetricsBuffer: 10_080,
      offlineThresholdSeconds: 300,
      enableGracefulDegradation: true,
      // The seed's 900 s cap left a device minutes behind an outage the probe cannot see (docs/connectivity.md, fleet benchmark).
      maxBackoffSeconds: 40,
      // The fleet benchmark: a first retry over the whole 40 s, later ones at 36-40 s (docs/connectivity.md).
      minBackoffSeconds: 40,
      enableJitter: true,
      jitter: 'spread',
      probeMaxIntervalSeconds: 38,
    });
    expect(d.settings.reconciliationIntervalMs).toBe(30_000);
    expect(d.api).toEqual({ host: '127.0.0.1', port: 48_484 });
    expect(d.features.localBroker).toBe(false);
  });

  it('accepts the seed example block as written', () => {
    const r = loadConfig({
      file: configFile({
        settings: {
          reconciliationIntervalMs: 30000,
          offline: {
            enableQueue: true,
            maxQueueSize: 1000,
            maxOfflineMetricsBuffer: 500,
            offlineThresholdSeconds: 300,
            enableGracefulDegradation: true,
            maxBackoffSeconds: 900,
            enableJitter: true,
          },
        },
      }),
      env: {},
    });
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.config.settings.offline.maxQueueSize).toBe(1000);
  });

  it('names the key path, the bad value and the expected type', () => {
    const msg = errorsOf({ settings: { offline: { maxQueueSize: 'lots' } } });
    expect(msg).toContain('settings.offline.maxQueueSize');
    expect(msg).toContain('"lots"');
    expect(msg).toContain('expected a number');
  });

  it('reports every problem at once, each with its path', () => {
    const msg = errorsOf({
      cloud: { apiUrl: 'ftp://example.com' },
      api: { port: 70000 },
      logging: { level: 'loud' },
      settings: { pollIntervalMs: 10, offline: { enableJitter: 'yes' } },
    });
    expect(msg).toMatch(/cloud\.apiUrl: expected an http:\/\/ or https:\/\/ URL, got "ftp:\/\/example\.com"/);
    expect(msg).toMatch(/api\.port: expected a number <= 65535, got 70000/);
    expect(msg).toMatch(/logging\.level: expected one of "fatal", .*"trace", got "loud"/);
    expect(msg).toMatch(/settings\.pollIntervalMs: expected a number >= 1000, got 10/);
    expect(msg).toMatch(/settings\.offline\.enableJitter: expected a boolean, got "yes"/);
  });

  it('names a bad outbox limit policy and what is expected', () => {
    const msg = errorsOf({ settings: { offline: { onLimit: { count: 'drop' }, channels: { telemetry: { onLimit: { dsk: 'refuse' } } } } } });
    expect(msg).toMatch(/settings\.offline\.onLimit\.count: expected one of "refuse", "drop-oldest", got "drop"/);
    expect(msg).toContain('settings.offline.channels.telemetry.onLimit.dsk: expected no such key');
    expect(defaultConfig().settings.offline).toMatchObject({ onLimit: {}, dropLogIntervalSeconds: 60 });
  });

  it('rejects misspelt keys by name instead of ignoring them', () => {
    expect(errorsOf({ settings: { offline: { maxQueueSzie: 5 } } })).toContain('settings.offline.maxQueueSzie: expected no such key');
  });

  it('explains a file that is not JSON, not an object, or missing', () => {
    expect(errorsOf('{ "settings": ')).toMatch(/expected valid JSON in .*config\.json/);
    expect(errorsOf('[1,2]')).toMatch(/expected a JSON object, got an array/);
    const r = loadConfig({ file: '/nonexistent/config.json', env: {} });
    expect(r.ok ? '' : formatIssues(r.issues)).toContain('a readable file at /nonexistent/config.json (ENOENT)');
  });

  it('never shows a secret value in an error', () => {
    const msg = errorsOf({ device: { apiKey: 'short' } });
    expect(msg).toContain('device.apiKey');
    expect(msg).not.toContain('short"');
    expect(msg).toContain('[redacted]');
  });

  it('redacts secrets when a config is shown', () => {
    const shown = redactConfig({ ...defaultConfig(), device: { uuid: 'dev-1', apiKey: 'super-secret-key' } });
    expect(JSON.stringify(shown)).not.toContain('super-secret-key');
    expect(shown.device.uuid).toBe('dev-1');
  });
});

describe('environment overrides', () => {
  it('derives one variable per setting from the schema', () => {
    const names = envKeys().map((k) => k.name);
    expect(names).toContain('IOTISTIC_SETTINGS_OFFLINE_MAX_QUEUE_SIZE');
    expect(names).toContain('IOTISTIC_CLOUD_API_URL');
    expect(names).toContain('IOTISTIC_DATA_DIR');
    expect(new Set(names).size).toBe(names.length);
    expect(envName(['api', 'localApiKey'])).toBe('IOTISTIC_API_LOCAL_API_KEY');
  });

  it('overrides the file, with types coerced', () => {
    const r = loadConfig({
      file: configFile({ settings: { offline: { maxQueueSize: 500 } } }),
      env: { IOTISTIC_SETTINGS_OFFLINE_MAX_QUEUE_SIZE: '2000', IOTISTIC_SETTINGS_OFFLINE_ENABLE_JITTER: 'false', IOTISTIC_CLOUD_API_URL: 'https://api.example.com' },
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.config.settings.offline.maxQueueSize).toBe(2000);
    expect(r.config.settings.offline.enableJitter).toBe(false);
    expect(r.config.cloud.apiUrl).toBe('https://api.example.com');
  });

  it('names the variable when its value is bad', () => {
    const msg = errorsOf({}, { IOTISTIC_SETTINGS_POLL_INTERVAL_MS: 'soon' });
    expect(msg).toContain('settings.pollIntervalMs (from IOTISTIC_SETTINGS_POLL_INTERVAL_MS): expected a number, got "soon"');
  });

  it('warns about prefixed variables that are not settings', () => {
    const r = loadConfig({ env: { IOTISTIC_SETTINGS_POLL_INTERVAL: '5', IOTISTIC_CONFIG: '/etc/x.json' } });
    expect(r.warnings).toEqual(['IOTISTIC_SETTINGS_POLL_INTERVAL is not a setting and was ignored']);
  });
});

describe('data dir resolution', () => {
  it('prefers the flag, then the environment, then the file, then the default', () => {
    const file = configFile({ dataDir: '/from/file' });
    expect(resolveDataDir({ flag: '/flag', file, env: { IOTISTIC_DATA_DIR: '/env' }, fallback: '/def' })).toBe('/flag');
    expect(resolveDataDir({ file, env: { IOTISTIC_DATA_DIR: '/env' }, fallback: '/def' })).toBe('/env');
    expect(resolveDataDir({ file, env: {}, fallback: '/def' })).toBe('/from/file');
    expect(resolveDataDir({ file: configFile('not json'), env: {}, fallback: '/def' })).toBe('/def');
    // A syntax error elsewhere does not hide the one dataDir the file names (its database holds the last-known-good).
    expect(resolveDataDir({ file: configFile('{ "dataDir": "/data/a \\"b\\"", "api": { "port": 1, }, }'), env: {}, fallback: '/def' })).toBe('/data/a "b"');
    expect(resolveDataDir({ file: configFile('{ "dataDir": "/one", "x": { "dataDir": "/two" }, }'), env: {}, fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile('{ "dataDir": "", }'), env: {}, fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile('null'), env: {}, fallback: '/def' })).toBe('/def');
  });
});

describe('last-known-good config', () => {
  it('keeps the last good config and falls back to it when the file breaks', () => {
    const dir = dirs.make();
    const store = Store.open({ path: join(dir, 'agent.db'), logger: silentLogger(), clock: { now: () => 1000 } });
    const file = configFile({ settings: { pollIntervalMs: 5000 } });
    const good = resolveWithLastKnownGood(loadConfig({ file, env: {} }), store, file, 1000);
    expect(good.source).toBe('file');

    writeFileSync(file, JSON.stringify({ settings: { pollIntervalMs: 'fast' } }));
    const bad = resolveWithLastKnownGood(loadConfig({ file, env: {} }), store, file, 2000);
    expect(bad.source).toBe('last-known-good');
    if (bad.source !== 'last-known-good') return;
    expect(bad.config.settings.pollIntervalMs).toBe(5000);
    expect(formatIssues(bad.issues)).toContain('settings.pollIntervalMs');
    expect(bad.savedAt).toBe(1000);
    store.close();
  });

  it('writes the last-known-good config only when it changed, and starts when the write fails', () => {
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock: { now: () => 1 } });
    const file = configFile({ settings: { pollIntervalMs: 5000 } });
    const writes: unknown[] = [];
    const setKv = store.setKv.bind(store);
    store.setKv = (k, v) => {
      writes.push(v);
      setKv(k, v);
    };
    resolveWithLastKnownGood(loadConfig({ file, env: {} }), store, file, 1);
    resolveWithLastKnownGood(loadConfig({ file, env: {} }), store, file, 2);
    expect(writes).toHaveLength(1);
    writeFileSync(file, JSON.stringify({ settings: { pollIntervalMs: 6000 } }));
    store.setKv = () => {
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    };
    const failed: unknown[] = [];
    const r = resolveWithLastKnownGood(loadConfig({ file, env: {} }), store, file, 3, (err) => failed.push(err));
    expect(r.source).toBe('file');
    expect(failed).toHaveLength(1);
    store.close();
  });

  it('has nothing to fall back on the first time', () => {
    const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock: { now: () => 1 } });
    const file = configFile({ api: { port: 'x' } });
    const r = resolveWithLastKnownGood(loadConfig({ file, env: {} }), store, file, 1);
    expect(r.source).toBe('none');
    store.close();
  });
});

describe('generated docs', () => {
  it('the settings table of docs/configuration.md matches the schema', async () => {
    const { readFileSync } = await import('node:fs');
    const { withReference } = await import('../../src/config/reference.js');
    const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
    expect(withReference(doc)).toBe(doc);
  });
});

describe('shipped JSON Schema', () => {
  it('is the one generated from the zod schema', async () => {
    const { readFileSync } = await import('node:fs');
    const shipped = JSON.parse(readFileSync(new URL('../../schema/agent-config.schema.json', import.meta.url), 'utf8')) as unknown;
    expect(shipped).toEqual(z.toJSONSchema(agentConfigSchema, { io: 'input' }));
  });
});

describe('settings that cannot work with the rest of the config', () => {
  it('refuses a client certificate without its key (and the reverse), naming the missing one', () => {
    const r = loadConfig({ file: configFile({ mqtt: { url: 'mqtts://broker:8883', certFile: '/etc/c.pem' } }) });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(formatIssues(r.issues)).toContain('mqtt.keyFile: expected a path as well: mutual TLS needs both');
    const k = loadConfig({ file: configFile({ mqtt: { url: 'mqtts://broker:8883', keyFile: '/etc/k.pem' } }) });
    expect(!k.ok && formatIssues(k.issues)).toContain('mqtt.certFile: expected a path as well');
  });

  it('warns about TLS files that a plain-text or missing URL never uses', () => {
    const r = loadConfig({ file: configFile({ cloud: { apiUrl: 'http://cloud', caFile: '/ca.pem' }, mqtt: { caFile: '/ca.pem' } }) });
    expect(r.ok).toBe(true);
    expect(r.warnings).toEqual([
      'cloud.caFile is set but cloud.apiUrl is not https://: the CA is not used',
      'mqtt.caFile is set but mqtt.url is not set: not used',
    ]);
    const fine = loadConfig({ file: configFile({ cloud: { apiUrl: 'https://cloud', caFile: '/ca.pem' }, mqtt: { url: 'mqtts://b', caFile: '/ca.pem' } }) });
    expect(fine.warnings).toEqual([]);
  });
});
