import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { SCHEMA_VERSION } from '../../devcloud/schema.js';
import { DevCloudStore } from '../../devcloud/store.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

it('upgrades a devcloud file of schema 1 (before the shadow) in place, keeping its devices', () => {
  const path = join(dirs.make(), 'devcloud.db');
  const first = DevCloudStore.open(path);
  first.setTarget('dev-1', { version: 4, apps: {} });
  first.close();
  // Make it what a schema-1 devcloud left: no shadow columns, no backfill column, no log tables, user_version 1.
  const raw = new BetterSqlite3(path);
  raw.exec('ALTER TABLE devices DROP COLUMN shadow_desired; ALTER TABLE devices DROP COLUMN shadow_version; DROP INDEX health_by_key; ALTER TABLE health DROP COLUMN idem_key; ALTER TABLE messages DROP COLUMN backfill;');
  raw.exec('DROP TABLE log_lines; DROP TABLE log_messages;');
  raw.exec('DROP TABLE device_secrets; ALTER TABLE devices DROP COLUMN secrets_version;');
  raw.exec('DROP TABLE provisioning_keys; ALTER TABLE devices DROP COLUMN provisioning_key; ALTER TABLE devices DROP COLUMN key_revoked_at;');
  raw.pragma('user_version = 1');
  raw.close();

  const again = DevCloudStore.open(path);
  expect(JSON.parse(again.target('dev-1').json)).toEqual({ version: 4, apps: {} });
  expect(again.shadowDesired('dev-1')).toBeUndefined();
  expect(again.setShadowDesired('dev-1', { fan: 'on' })).toEqual({ version: 1, state: { fan: 'on' } });
  again.close();
  const check = new BetterSqlite3(path, { readonly: true });
  expect(check.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
  expect(check.prepare("SELECT name FROM pragma_table_info('messages') WHERE name = 'backfill'").all()).toEqual([{ name: 'backfill' }]);
  expect(check.prepare("SELECT name FROM sqlite_master WHERE name LIKE 'log_%' ORDER BY name").pluck().all()).toEqual([
    'log_lines',
    'log_lines_by_seq',
    'log_lines_by_ts',
    'log_messages',
  ]);
  expect(check.prepare("SELECT name FROM pragma_table_info('devices') WHERE name = 'secrets_version'").pluck().all()).toEqual(['secrets_version']);
  expect(check.prepare("SELECT name FROM pragma_table_info('devices') WHERE name IN ('provisioning_key', 'key_revoked_at') ORDER BY name").pluck().all()).toEqual(['key_revoked_at', 'provisioning_key']);
  expect(check.prepare("SELECT name FROM sqlite_master WHERE name = 'provisioning_keys'").pluck().all()).toEqual(['provisioning_keys']);
  check.close();
});

it('keeps the backfill mark of a message and shows it in the messages page; live messages carry none', () => {
  const store = DevCloudStore.open(join(dirs.make(), 'devcloud.db'));
  store.addMessages('dev-1', [
    { id: 'm-2', channel: 'telemetry', ts: 2, payload: { n: 2 } },
    { id: 'm-1', channel: 'telemetry', ts: 1, payload: { n: 1 }, backfill: true },
  ], 0);
  expect(store.messages('dev-1', 0, 10).messages.map((m) => [m.id, m.backfill])).toEqual([
    ['m-2', undefined],
    ['m-1', true],
  ]);
  store.close();
});

it('keeps device secrets: names for the admin, values for the device, a version that goes up on each change', () => {
  const store = DevCloudStore.open(join(dirs.make(), 'devcloud.db'));
  expect(store.secrets.version('dev-1')).toBe(0);
  expect(store.secrets.put('dev-1', 'db-password', 'hunter2-value')).toEqual({ name: 'db-password', version: 1 });
  expect(store.secrets.names('dev-1').map((s) => s.name)).toEqual(['db-password']);
  expect(store.secrets.values('dev-1')).toEqual({ 'db-password': 'hunter2-value' });
  expect(() => store.secrets.put('dev-1', 'Bad', 'hunter2-value')).toThrow(/name: expected/);
  expect(() => store.secrets.put('dev-1', 'big', 'x'.repeat(65_537))).toThrow('value: expected at most 65536 bytes, got 65537');
  expect(store.secrets.remove('dev-1', 'db-password')).toBe(true);
  expect(store.secrets.remove('dev-1', 'db-password')).toBe(false);
  expect(store.secrets.version('dev-1')).toBe(2);
  store.close();
});
