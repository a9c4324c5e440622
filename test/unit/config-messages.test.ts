import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { applyEnvOverrides, envKeys } from '../../src/config/env.js';
import { describeValue, formatIssue, fromZodIssues } from '../../src/config/issues.js';
import { resolveWithLastKnownGood } from '../../src/config/last-known-good.js';
import { formatIssues, loadConfig, redactConfig, resolveDataDir } from '../../src/config/load.js';
import { withReference } from '../../src/config/reference.js';
import { Store } from '../helpers/store.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * What a person fixing a config reads: each refusal names the key, where the value came from, the
 * value and what was expected. And which config is in force when the file is bad.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function configFile(content: unknown): string {
  const file = join(dirs.make(), 'config.json');
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

/** The lines `config check` prints for a file (and environment). */
function errorsOf(content: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  const r = loadConfig({ file: configFile(content), env });
  expect(r.ok).toBe(false);
  return r.ok ? [] : formatIssues(r.issues).split('\n');
}

describe('values as shown in a message', () => {
  it('says what kind of value was found, short', () => {
    expect(describeValue(undefined)).toBe('nothing');
    expect(describeValue(null)).toBe('null');
    expect(describeValue([1, 2])).toBe('an array ([1,2])');
    expect(describeValue({ a: 1 })).toBe('an object ({"a":1})');
    expect(describeValue('x')).toBe('"x" (a string)');
    expect(describeValue(5)).toBe('5 (a number)');
    expect(describeValue(false)).toBe('false (a boolean)');
  });

  it('cuts a long value at 60 characters, marking the cut, and keeps one of 60 whole', () => {
    const exact = 'a'.repeat(58); // 60 with its quotes
    expect(describeValue(exact)).toBe(`"${exact}" (a string)`);
    expect(describeValue('b'.repeat(59))).toBe(`"${'b'.repeat(56)}... (a string)`);
    expect(describeValue(['c'.repeat(100)])).toBe(`an array (["${'c'.repeat(55)}...)`);
  });

  it('describes a value it cannot print instead of failing', () => {
    expect(describeValue({ n: 1n })).toBe('an object (too deep or too odd to show)');
  });

  it('names the document itself, and the variable a value came from', () => {
    expect(formatIssue({ path: '', source: 'file', expected: 'a JSON object' })).toBe('(document): expected a JSON object');
    expect(formatIssue({ path: 'api.port', source: 'IOTISTIC_API_PORT', value: 'x', expected: 'a number' })).toBe(
      'api.port (from IOTISTIC_API_PORT): expected a number, got "x" (a string)',
    );
    expect(formatIssue({ path: 'api.port', source: 'file', value: undefined, expected: 'a number' })).toBe('api.port: expected a number, got nothing');
  });
});

describe('what the schema expected, in words', () => {
  it('for the bounds of strings, numbers and the formats of the agent config', () => {
    const lines = errorsOf({
      dataDir: '',
      device: { name: 'n'.repeat(129), uuid: '!', apiKey: 'with space in it' },
      mqtt: { clientId: '', protocolVersion: 3 },
      settings: { offline: { maxQueueSize: 99.5 } },
    });
    expect(lines).toEqual(
      expect.arrayContaining([
        '  - dataDir: expected a string of at least 1 characters, got "" (a string)',
        `  - device.name: expected a string of at most 128 characters, got "${'n'.repeat(56)}... (a string)`,
        '  - device.uuid: expected a device id of 3-128 letters, digits, ".", "_" or "-", got "!" (a string)',
        '  - device.apiKey: expected a bearer token: visible ASCII characters only (no spaces, control or non-ASCII characters), got "[redacted]" (a string)',
        '  - mqtt.clientId: expected a string of at least 1 characters, got "" (a string)',
        '  - settings.offline.maxQueueSize: expected an integer, got 99.5 (a number)',
      ]),
    );
    // A union names what each of its options takes, not zod's "Invalid input".
    expect(lines).toContain('  - mqtt.protocolVersion: expected one of "auto", 4, 5, got 3 (a number)');
  });

  it('for a key that is missing shows no value at all', () => {
    expect(errorsOf({ mqtt: { url: 'mqtts://b:8883', certFile: '/c.pem' } })).toEqual([
      '  - mqtt.keyFile: expected a path as well: mutual TLS needs both the client certificate (certFile) and its key (keyFile)',
    ]);
  });

  it('for a bad outbox channel name: the key is wrong, not its value', () => {
    expect(errorsOf({ settings: { offline: { channels: { 'bad name': { priority: 1 } } } } })).toEqual([
      '  - settings.offline.channels.bad name: expected a key that is a channel name of 1-64 letters, digits, ".", "_" or "-", got "bad name" (a string)',
    ]);
  });

  it('for every kind of bound and check, exclusive ones included', () => {
    const schema = z.strictObject({
      n: z.number().gt(0),
      m: z.number().lt(10),
      k: z.number().max(10),
      list: z.array(z.number()).min(2),
      few: z.array(z.number()).max(1),
      step: z.number().multipleOf(5),
      mail: z.email(),
      id: z.string().regex(/^a+$/, 'only the letter a'),
      url: z.url(),
      obj: z.object({}),
      kind: z.enum(['x', 'y']),
      odd: z.number().refine((v) => v % 2 === 1, 'an odd number'),
    });
    const input = { n: 0, m: 10, k: 11, list: [1], few: [1, 2], step: 7, mail: 'no', id: 'b', url: 'no url', obj: 3, kind: 'z', odd: 2, extra: 1 };
    const parsed = schema.safeParse(input);
    expect(parsed.success).toBe(false);
    if (parsed.success) return;
    const issues = fromZodIssues(parsed.error.issues, input, () => 'file', () => false);
    const byPath = Object.fromEntries(issues.map((i) => [i.path, i.expected]));
    expect(byPath).toEqual({
      n: 'a number > 0',
      m: 'a number < 10',
      k: 'a number <= 10',
      list: 'at least 2 items',
      few: 'at most 1 items',
      step: 'a multiple of 5',
      mail: 'a string in email format',
      id: 'only the letter a',
      url: 'an http:// or https:// URL',
      obj: 'an object',
      kind: 'one of "x", "y"',
      odd: 'an odd number',
      extra: 'no such key (check the spelling; see schema/agent-config.schema.json)',
    });
    // A missing key has no value to show; a present one does.
    expect(issues.find((i) => i.path === 'n')).toEqual({ path: 'n', source: 'file', value: 0, expected: 'a number > 0' });
    expect(issues.find((i) => i.path === 'extra')).toEqual({ path: 'extra', source: 'file', expected: expect.any(String) });
  });

  it('shows nothing for a key that is missing, and a secret as [redacted]', () => {
    const schema = z.strictObject({ need: z.string(), inner: z.strictObject({ token: z.string().min(20) }) });
    const input = { inner: { token: 'short' } };
    const parsed = schema.safeParse(input);
    if (parsed.success) throw new Error('expected issues');
    const issues = fromZodIssues(parsed.error.issues, input, () => 'file', (path) => path.endsWith('token'));
    expect(issues).toStrictEqual([
      { path: 'need', source: 'file', expected: 'a string' },
      { path: 'inner.token', source: 'file', value: '[redacted]', expected: 'a string of at least 20 characters' },
    ]);
  });
});

describe('a config file that cannot be used at all', () => {
  it('names the failure of each kind', () => {
    const missing = loadConfig({ file: join(dirs.make(), 'none.json') });
    expect(missing).toMatchObject({ ok: false, failure: 'unreadable' });
    const notJson = loadConfig({ file: configFile('{ nope') });
    expect(notJson).toMatchObject({ ok: false, failure: 'not-json' });
    expect(notJson.ok ? '' : formatIssues(notJson.issues)).toMatch(/^ {2}- \(document\): expected valid JSON in .*config\.json \(.+\)$/);
    for (const [text, shown] of [
      ['5', '5 (a number)'],
      ['null', 'null'],
      ['"text"', '"text" (a string)'],
    ] as const) {
      const r = loadConfig({ file: configFile(text) });
      expect(r).toMatchObject({ ok: false, failure: 'not-an-object' });
      expect(r.ok ? '' : formatIssues(r.issues)).toBe(`  - (document): expected a JSON object, got ${shown}`);
    }
  });

  it('refuses a file nested deeper than any config before reading it, naming the limit', () => {
    const file = configFile(`${'{"a":'.repeat(65)}1${'}'.repeat(65)}`);
    const r = loadConfig({ file });
    expect(r).toMatchObject({ ok: false, failure: 'invalid' });
    expect(r.ok ? '' : formatIssues(r.issues)).toBe(`  - (document): expected a JSON object nested at most 64 levels deep in ${file}`);
    // 64 levels is a config (with unknown keys), not a refusal of its depth.
    const fine = loadConfig({ file: configFile(`${'{"a":'.repeat(64)}1${'}'.repeat(64)}`) });
    expect(fine.ok ? '' : formatIssues(fine.issues)).toContain('a: expected no such key');
  });

  it('without a file runs on the defaults and the environment', () => {
    const r = loadConfig({ env: { IOTISTIC_API_PORT: '1234' } });
    expect(r.ok && r.config.api.port).toBe(1234);
    expect(loadConfig({}).ok).toBe(true);
  });
});

describe('environment overrides', () => {
  // envKeys() is called inside each test (directly or by applyEnvOverrides), never once for the file:
  // what a test checks must be computed while it runs.
  it('coerces numbers, booleans and JSON, and leaves what does not parse for validation to name', () => {
    const target: Record<string, unknown> = {};
    const r = applyEnvOverrides(
      target,
      {
        IOTISTIC_API_PORT: ' 8080 ',
        IOTISTIC_SETTINGS_POLL_INTERVAL_MS: '',
        IOTISTIC_FEATURES_DASHBOARD: 'OFF',
        IOTISTIC_FEATURES_METRICS: 'yes',
        IOTISTIC_FEATURES_JOBS: '0',
        IOTISTIC_FEATURES_SHADOW: 'On',
        IOTISTIC_FEATURES_LOCAL_BROKER: 'maybe',
        IOTISTIC_JOBS_ALLOWED_COMMANDS: '["/bin/true"]',
        IOTISTIC_SETTINGS_OFFLINE_CHANNELS: '{not json',
        IOTISTIC_DATA_DIR: '/data',
        IOTISTIC_CONFIG: '/etc/agent.json',
        OTHER: 'x',
      },
    );
    expect(target).toEqual({
      api: { port: 8080 },
      settings: { pollIntervalMs: '', offline: { channels: '{not json' } },
      features: { dashboard: false, metrics: true, jobs: false, shadow: true, localBroker: 'maybe' },
      jobs: { allowedCommands: ['/bin/true'] },
      dataDir: '/data',
    });
    expect(r.unknown).toEqual([]);
    expect(r.applied.get('api.port')).toBe('IOTISTIC_API_PORT');
  });

  it('takes blanks around a number or a yes/no as nothing, and blanks alone as no number', () => {
    const r = loadConfig({ env: { IOTISTIC_API_PORT: ' 8080 ', IOTISTIC_FEATURES_DASHBOARD: ' Off ' } });
    expect(r.ok && r.config.api.port).toBe(8080);
    expect(r.ok && r.config.features.dashboard).toBe(false);
    expect(errorsOf({}, { IOTISTIC_API_PORT: '   ' })).toEqual(['  - api.port (from IOTISTIC_API_PORT): expected a number, got "   " (a string)']);
  });

  it('takes an optional text setting as text, even when it looks like a number', () => {
    const r = loadConfig({ env: { IOTISTIC_MQTT_CLIENT_ID: '12345', IOTISTIC_DEVICE_NAME: 'true' } });
    expect(r.ok && r.config.mqtt.clientId).toBe('12345');
    expect(r.ok && r.config.device.name).toBe('true');
  });

  it('accepts every spelling of true and false', () => {
    for (const [raw, value] of [['true', true], ['1', true], ['YES', true], ['on', true], ['False', false], ['0', false], ['no', false], ['off', false]] as const) {
      const target: Record<string, unknown> = {};
      applyEnvOverrides(target, { IOTISTIC_FEATURES_DASHBOARD: raw });
      expect(target).toEqual({ features: { dashboard: value } });
    }
  });

  it('replaces a file value that is not an object on the way to a setting', () => {
    for (const api of [null, 5, ['x']]) {
      const target: Record<string, unknown> = { api, other: 1 };
      applyEnvOverrides(target, { IOTISTIC_API_PORT: '1' });
      expect(target).toEqual({ api: { port: 1 }, other: 1 });
    }
    const kept: Record<string, unknown> = { api: { host: 'h' } };
    applyEnvOverrides(kept, { IOTISTIC_API_PORT: '1' });
    expect(kept).toEqual({ api: { host: 'h', port: 1 } });
  });

  it('lists unknown prefixed variables sorted, and ignores unset ones', () => {
    const r = applyEnvOverrides({}, { IOTISTIC_ZZZ: '1', IOTISTIC_AAA: '2', IOTISTIC_API_PORT: undefined });
    expect(r.unknown).toEqual(['IOTISTIC_AAA', 'IOTISTIC_ZZZ']);
    expect([...r.applied]).toEqual([]);
  });

  it('names the variable for a value deep inside a JSON one, and the file for the rest', () => {
    const lines = errorsOf({ api: { port: 'x' } }, { IOTISTIC_SETTINGS_OFFLINE_CHANNELS: '{"telemetry":{"priority":"high"}}' });
    expect(lines).toEqual([
      '  - api.port: expected a number, got "x" (a string)',
      '  - settings.offline.channels.telemetry.priority (from IOTISTIC_SETTINGS_OFFLINE_CHANNELS): expected a number, got "high" (a string)',
    ]);
  });

  it('derives a name for every leaf and skips $schema', () => {
    const keys = envKeys();
    const names = keys.map((k) => k.name);
    expect(names).not.toContain('IOTISTIC_$SCHEMA');
    expect(keys.find((k) => k.name === 'IOTISTIC_SETTINGS_OFFLINE_MAX_QUEUE_SIZE')).toEqual({
      name: 'IOTISTIC_SETTINGS_OFFLINE_MAX_QUEUE_SIZE',
      path: ['settings', 'offline', 'maxQueueSize'],
      kind: 'number',
    });
    expect(keys.find((k) => k.name === 'IOTISTIC_LOGGING_LEVEL')?.kind).toBe('string');
    expect(keys.find((k) => k.name === 'IOTISTIC_CLOUD_API_URL')?.kind).toBe('string');
    expect(keys.find((k) => k.name === 'IOTISTIC_FEATURES_JOBS')?.kind).toBe('boolean');
    expect(keys.find((k) => k.name === 'IOTISTIC_JOBS_ALLOWED_COMMANDS')?.kind).toBe('json');
    expect(keys.find((k) => k.name === 'IOTISTIC_MQTT_PROTOCOL_VERSION')?.kind).toBe('json');
  });
});

describe('settings that do nothing with the rest', () => {
  it('says which TLS files go unused, and why', () => {
    const r = loadConfig({ file: configFile({ cloud: { caFile: '/ca.pem' }, mqtt: { url: 'mqtt://b', caFile: '/ca.pem', certFile: '/c.pem', keyFile: '/k.pem' } }) });
    expect(r.warnings).toEqual([
      'cloud.caFile is set but cloud.apiUrl is not set: the CA is not used',
      'mqtt.caFile, mqtt.certFile, mqtt.keyFile are set but mqtt.url is not mqtts://: not used',
    ]);
    expect(loadConfig({ file: configFile({ mqtt: { url: 'mqtts://b', certFile: '/c.pem', keyFile: '/k.pem' } }) }).warnings).toEqual([]);
    expect(loadConfig({ file: configFile({}) }).warnings).toEqual([]);
  });

  it('keeps the warnings about unknown variables with the others', () => {
    const r = loadConfig({ file: configFile({ cloud: { caFile: '/ca.pem' } }), env: { IOTISTIC_NOPE: '1' } });
    expect(r.warnings).toEqual(['IOTISTIC_NOPE is not a setting and was ignored', 'cloud.caFile is set but cloud.apiUrl is not set: the CA is not used']);
    const bad = loadConfig({ file: configFile({ api: { port: 'x' } }), env: { IOTISTIC_NOPE: '1' } });
    expect(bad.warnings).toEqual(['IOTISTIC_NOPE is not a setting and was ignored']);
  });

  it('redacts secrets inside arrays too, and leaves an unset secret unset', () => {
    expect(redactConfig([{ apiKey: 'k' }, { password: undefined, name: 'n' }])).toEqual([{ apiKey: '[redacted]' }, { password: undefined, name: 'n' }]);
    expect(redactConfig({ mqtt: { password: 'p', username: 'u' } })).toEqual({ mqtt: { password: '[redacted]', username: 'u' } });
  });
});

describe('the data dir, found before the config is known to be good', () => {
  it('skips an empty flag or variable, and a file that names none', () => {
    expect(resolveDataDir({ flag: '', env: { IOTISTIC_DATA_DIR: '' }, fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: join(dirs.make(), 'missing.json'), fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile({ dataDir: 5 }), fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile({ dataDir: '' }), fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile({ dataDir: '/d' }), env: {}, fallback: '/def' })).toBe('/d');
  });

  it('finds the one dataDir of a broken file, unless it is not a string or not one', () => {
    expect(resolveDataDir({ file: configFile('{ "dataDir": "/x", oops }'), fallback: '/def' })).toBe('/x');
    expect(resolveDataDir({ file: configFile('{ "dataDir" : "/spaced" , oops }'), fallback: '/def' })).toBe('/spaced');
    expect(resolveDataDir({ file: configFile('{ "dataDir": 5, oops }'), fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile('{ "dataDir": "bad \\x escape", oops }'), fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile('{ "dataDir": "/a\nb", oops }'), fallback: '/def' })).toBe('/def');
    expect(resolveDataDir({ file: configFile('{ oops }'), fallback: '/def' })).toBe('/def');
  });
});

describe('which config is in force', () => {
  function openStore(): Store {
    return Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock: { now: () => 1 } });
  }

  it('saves the config again when only the file it came from changed', () => {
    const store = openStore();
    const a = configFile({});
    const b = configFile({});
    resolveWithLastKnownGood(loadConfig({ file: a }), store, a, 1);
    resolveWithLastKnownGood(loadConfig({ file: b }), store, b, 2);
    const bad = resolveWithLastKnownGood(loadConfig({ file: configFile('[]') }), store, b, 3);
    expect(bad).toMatchObject({ source: 'last-known-good', savedAt: 2 });
    store.close();
  });

  it('saves the config again when it changed, not when it did not', () => {
    const store = openStore();
    const file = configFile({ api: { port: 1 } });
    resolveWithLastKnownGood(loadConfig({ file }), store, file, 1);
    resolveWithLastKnownGood(loadConfig({ file }), store, file, 2);
    expect(resolveWithLastKnownGood(loadConfig({ file: configFile('x') }), store, file, 3)).toMatchObject({ savedAt: 1 });
    writeFileSync(file, JSON.stringify({ api: { port: 2 } }));
    resolveWithLastKnownGood(loadConfig({ file }), store, file, 4);
    const fallback = resolveWithLastKnownGood(loadConfig({ file: configFile('x') }), store, file, 5);
    expect(fallback).toMatchObject({ source: 'last-known-good', savedAt: 4 });
    if (fallback.source === 'last-known-good') expect(fallback.config.api.port).toBe(2);
    store.close();
  });

  it('carries the warnings and the reasons, whatever the source', () => {
    const store = openStore();
    const env = { IOTISTIC_NOPE: '1' };
    const file = configFile({});
    expect(resolveWithLastKnownGood(loadConfig({ file, env }), store, file, 1).warnings).toEqual(['IOTISTIC_NOPE is not a setting and was ignored']);
    const bad = loadConfig({ file: configFile({ api: { port: 'x' } }), env });
    const r = resolveWithLastKnownGood(bad, store, file, 2);
    expect(r).toMatchObject({ source: 'last-known-good', warnings: ['IOTISTIC_NOPE is not a setting and was ignored'] });
    expect(r.source === 'last-known-good' && formatIssues(r.issues)).toBe('  - api.port: expected a number, got "x" (a string)');
    store.close();
  });

  it('does not run on a saved copy that the current schema refuses', () => {
    const store = openStore();
    store.setKv('config.lastKnownGood', { config: { api: { port: 'x' } }, savedAt: 1, file: null });
    const bad = loadConfig({ file: configFile({ api: { port: 'y' } }) });
    const r = resolveWithLastKnownGood(bad, store, undefined, 2);
    expect(r.source).toBe('none');
    expect(r.source === 'none' && formatIssues(r.issues)).toBe('  - api.port: expected a number, got "y" (a string)');
    store.close();
  });

  it('reports a failed save and starts on the file all the same', () => {
    const store = openStore();
    store.setKv = () => {
      throw new Error('database or disk is full');
    };
    const errors: unknown[] = [];
    const file = configFile({});
    expect(resolveWithLastKnownGood(loadConfig({ file }), store, file, 1, (err) => errors.push(err)).source).toBe('file');
    expect(errors).toEqual([expect.objectContaining({ message: 'database or disk is full' })]);
    // Without a callback a failed save is silent, and still starts.
    expect(resolveWithLastKnownGood(loadConfig({ file }), store, file, 2).source).toBe('file');
    store.close();
  });
});

describe('the generated settings reference', () => {
  it('refuses a document without its markers', () => {
    expect(() => withReference('# no markers')).toThrow('docs/configuration.md lacks the settings-reference markers');
    expect(() => withReference('<!-- settings-reference:end -->\n<!-- settings-reference:start (generated by npm run build; do not edit) -->')).toThrow(
      'lacks the settings-reference markers',
    );
  });
});
