import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseSecrets } from '../../src/cloud/secrets-fetch.js';
import { resolveTarget } from '../../src/workloads/planner.js';
import { DEFAULT_WORKLOAD_POLICY, validateTarget } from '../../src/workloads/target-schema.js';
import { SecretStore } from '../../src/secrets/secret-store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function open(dir: string, logger = silentLogger(), keyFile = join(dir, 'secrets.key')): SecretStore {
  const s = new SecretStore({ file: join(dir, 'secrets.enc'), keyFile, clock: new FakeClock(1_700_000_000_000), logger });
  s.open();
  return s;
}

const VALUE = 'hunter2-correct-horse';

describe('the secret store', () => {
  it('keeps values across a reopen, encrypted, in 0600 files; a local value overrides the cloud one until removed', () => {
    const dir = dirs.make();
    const s = open(dir);
    s.replaceCloud('v1', { 'db-password': VALUE, other: 'x' });
    s.setLocal('db-password', 'local-override');
    expect(s.get('db-password')).toBe('local-override');
    const again = open(dir);
    expect(again.get('db-password')).toBe('local-override');
    expect(again.cloudVersion).toBe('v1');
    expect(again.list()).toEqual([
      { name: 'db-password', source: 'local', updatedAt: 1_700_000_000_000, overridesCloud: true },
      { name: 'other', source: 'cloud', updatedAt: 1_700_000_000_000, overridesCloud: false },
    ]);
    expect(again.removeLocal('db-password')).toBe(true);
    expect(again.get('db-password')).toBe(VALUE);
    const raw = readFileSync(join(dir, 'secrets.enc'), 'utf8');
    expect(raw).not.toContain(VALUE);
    expect(raw).not.toContain('db-password');
    expect(statSync(join(dir, 'secrets.enc')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'secrets.key')).mode & 0o777).toBe(0o600);
    // Atomic writes leave no temp file behind.
    expect(readdirSync(dir).sort()).toEqual(['secrets.enc', 'secrets.key']);
  });

  it('uses a fresh nonce for every write', () => {
    const dir = dirs.make();
    const s = open(dir);
    s.setLocal('a', 'value-1');
    const first = JSON.parse(readFileSync(join(dir, 'secrets.enc'), 'utf8')) as { nonce: string };
    s.setLocal('a', 'value-2');
    const second = JSON.parse(readFileSync(join(dir, 'secrets.enc'), 'utf8')) as { nonce: string };
    expect(Buffer.from(first.nonce, 'base64')).toHaveLength(12);
    expect(second.nonce).not.toBe(first.nonce);
  });

  it('moves a tampered file aside, says so, and runs on empty (the cloud values come again)', () => {
    const dir = dirs.make();
    open(dir).replaceCloud('v1', { a: VALUE });
    const doc = JSON.parse(readFileSync(join(dir, 'secrets.enc'), 'utf8')) as { data: string };
    const data = Buffer.from(doc.data, 'base64');
    data[0] = (data[0] as number) ^ 1;
    writeFileSync(join(dir, 'secrets.enc'), JSON.stringify({ ...doc, data: data.toString('base64') }), { mode: 0o600 });
    const log = captureLogger();
    const s = open(dir, log.logger);
    expect(s.get('a')).toBeUndefined();
    expect(s.cloudVersion).toBeNull();
    expect(log.text()).toContain('does not decrypt with the secrets key');
    expect(readdirSync(dir).some((f) => f.startsWith('secrets.enc.corrupt-'))).toBe(true);
  });

  it('cannot read the file with another key (a copy of the data dir without its key file)', () => {
    const dir = dirs.make();
    open(dir).setLocal('a', VALUE);
    const log = captureLogger();
    const s = open(dir, log.logger, join(dirs.make(), 'other.key'));
    expect(s.get('a')).toBeUndefined();
    expect(log.text()).toContain('moved it to');
    expect(log.text()).not.toContain(VALUE);
  });

  it('refuses bad names and oversized values, naming the field and never quoting the value', () => {
    const s = open(dirs.make());
    expect(() => s.setLocal('Bad Name', 'x')).toThrow(/secret name "Bad Name": expected a name matching/);
    expect(() => s.setLocal('big', 'y'.repeat(65_537))).toThrow('secret big: value of 65537 bytes, expected at most 65536');
  });

  it('masks values of 6 characters or more in log text, and keeps masking new ones', () => {
    const s = open(dirs.make());
    const mask = s.masker();
    s.replaceCloud('v1', { a: VALUE, short: 'abc' });
    expect(mask(`connecting with ${VALUE} and abc`)).toBe('connecting with [secret] and abc');
    s.setLocal('b', 'new-secret-value');
    expect(mask('x new-secret-value y')).toBe('x [secret] y');
  });

  it('keys its digest: the same values under another key give another digest', () => {
    const a = open(dirs.make());
    const b = open(dirs.make());
    expect(a.digest([['a', 'v']])).not.toBe(b.digest([['a', 'v']]));
    expect(a.digest([['a', 'v']])).toBe(a.digest([['a', 'v']]));
    expect(a.digest([['a', 'v']])).not.toBe(a.digest([['a', 'w']]));
  });
});

describe('secret references in a target', () => {
  const target = (secrets: unknown, extra: Record<string, unknown> = { runtime: 'process', command: ['/bin/true'] }) =>
    validateTarget({ version: 1, apps: { a: { services: { s: { ...extra, secrets } } } } });

  it('takes env and file references, and secretsVersion', () => {
    const v = validateTarget({ version: 1, secretsVersion: 's3', apps: { a: { services: { s: { image: 'busybox', secrets: [{ name: 'db-password', env: 'DB_PASSWORD' }, { name: 'tls-key', file: '/run/secrets/tls-key' }] } } } } });
    expect(v.ok).toBe(true);
  });

  it.each([
    [[{ name: 'db-password' }], 'apps.a.services.s.secrets.0: expected an "env" or a "file"'],
    [[{ name: 'DB', env: 'X' }], 'apps.a.services.s.secrets.0.name'],
    [[{ name: 'p', env: '1BAD' }], 'an environment variable name'],
    [[{ name: 'p', file: '/abs/path' }], 'for a process, an environment variable name'],
    [[{ name: 'p', env: 'A' }, { name: 'p', env: 'B' }], 'a secret named once per service (p is named twice)'],
    [[{ name: 'p', env: 'A', value: 'no values in a target' }], 'value'],
  ])('refuses %j with a message naming the field', (secrets, message) => {
    const v = target(secrets);
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.message).toContain(message);
  });

  it('for a container, file must be an absolute path without ".."', () => {
    const v = target([{ name: 'p', file: '../etc/x' }], { image: 'busybox' });
    expect(v.ok).toBe(false);
    if (!v.ok) expect(v.message).toContain('for a container, an absolute path without ".."');
  });
});

describe('resolving secrets', () => {
  const doc = { version: 1, apps: { a: { services: { s: { runtime: 'process', command: ['/bin/true'], secrets: [{ name: 'p', env: 'P' }] }, t: { runtime: 'process', command: ['/bin/true'] } } } } };

  it('waits for a missing secret (the other services go on) and changes the hash with the value', () => {
    const v = validateTarget(doc);
    if (!v.ok) throw new Error(v.message);
    const store = open(dirs.make());
    const [waiting, other] = resolveTarget(v.target, { ok: true }, DEFAULT_WORKLOAD_POLICY, store);
    expect(waiting?.blocked?.reason).toBe('waiting for secret p');
    expect(other?.blocked).toBeUndefined();
    store.setLocal('p', 'first-value');
    const [one] = resolveTarget(v.target, { ok: true }, DEFAULT_WORKLOAD_POLICY, store);
    store.setLocal('p', 'second-value');
    const [two] = resolveTarget(v.target, { ok: true }, DEFAULT_WORKLOAD_POLICY, store);
    expect(one?.blocked).toBeUndefined();
    expect(one?.desired.configHash).not.toBe(two?.desired.configHash);
    // Never in what JSON (the logger, the API) would show of it.
    expect(JSON.stringify(two)).not.toContain('second-value');
  });
});

describe("the cloud's answer", () => {
  it('is checked without quoting values', () => {
    expect(parseSecrets({ version: 'v', secrets: { a: 'x' } })).toEqual({ version: 'v', secrets: { a: 'x' } });
    expect(parseSecrets({ version: 'v', secrets: { a: 5 } })).toBe('secrets.a: expected a string value');
    expect(parseSecrets({ secrets: {} })).toBe('version: expected a string of 1-128 characters');
    expect(parseSecrets({ version: 'v', secrets: { 'Bad!': 'topsecret' } })).not.toContain('topsecret');
  });
});
