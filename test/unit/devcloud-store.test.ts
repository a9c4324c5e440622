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
  // Make it what a schema-1 devcloud left: no shadow columns, user_version 1.
  const raw = new BetterSqlite3(path);
  raw.exec('ALTER TABLE devices DROP COLUMN shadow_desired; ALTER TABLE devices DROP COLUMN shadow_version; DROP INDEX health_by_key; ALTER TABLE health DROP COLUMN idem_key;');
  raw.pragma('user_version = 1');
  raw.close();

  const again = DevCloudStore.open(path);
  expect(JSON.parse(again.target('dev-1').json)).toEqual({ version: 4, apps: {} });
  expect(again.shadowDesired('dev-1')).toBeUndefined();
  expect(again.setShadowDesired('dev-1', { fan: 'on' })).toEqual({ version: 1, state: { fan: 'on' } });
  again.close();
  const check = new BetterSqlite3(path, { readonly: true });
  expect(check.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
  check.close();
});
