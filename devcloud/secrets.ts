import type { Database, Statement } from 'better-sqlite3';
import { badRequest, notFound, requireObject, requireUuid } from './validate.js';

/**
 * The devcloud's device secrets (docs/protocol.md, "Secrets"): named values per device and a
 * per-device version, +1 on every change, that the served target carries as `secretsVersion` so
 * the agent knows to fetch them again. Values leave only through the device route.
 */

const NAME = /^(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62}$/;
const MAX_VALUE_BYTES = 65_536;
const MAX_NAMES = 256;

export class SecretTable {
  private readonly stmt: Record<'list' | 'put' | 'del' | 'count' | 'bump' | 'version' | 'ensure', Statement>;

  constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {
    const p = (sql: string): Statement => db.prepare(sql);
    this.stmt = {
      list: p('SELECT name, value, updated_at FROM device_secrets WHERE device = ? ORDER BY name'),
      put: p(
        'INSERT INTO device_secrets (device, name, value, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (device, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at',
      ),
      del: p('DELETE FROM device_secrets WHERE device = ? AND name = ?'),
      count: p('SELECT count(*) FROM device_secrets WHERE device = ?').pluck(),
      bump: p('UPDATE devices SET secrets_version = secrets_version + 1 WHERE uuid = ?'),
      version: p('SELECT secrets_version FROM devices WHERE uuid = ?').pluck(),
      ensure: p('INSERT INTO devices (uuid, key_hash, created_at) VALUES (?, NULL, ?) ON CONFLICT (uuid) DO NOTHING'),
    };
  }

  /** Sets one value; the version goes up. The error never quotes the value. */
  put(uuid: string, name: string, value: unknown): { name: string; version: number } {
    if (!NAME.test(name)) throw badRequest(`name: expected 1-63 lowercase letters, digits, "_", "." or "-" (no ".."), got ${JSON.stringify(name)}`);
    if (typeof value !== 'string') throw badRequest(`value: expected a string, got ${value === null ? 'null' : typeof value}`);
    const bytes = Buffer.byteLength(value, 'utf8');
    if (bytes > MAX_VALUE_BYTES) throw badRequest(`value: expected at most ${MAX_VALUE_BYTES} bytes, got ${bytes}`);
    return this.db.transaction(() => {
      this.stmt.ensure.run(uuid, this.now());
      const names = this.list(uuid).map((s) => s.name);
      if (!names.includes(name) && names.length >= MAX_NAMES) throw badRequest(`name: device ${uuid} has ${MAX_NAMES} secrets, the most there may be`);
      this.stmt.put.run(uuid, name, value, this.now());
      this.stmt.bump.run(uuid);
      return { name, version: this.version(uuid) };
    })();
  }

  /** Removes one; whether it was there (the version goes up when it was). */
  remove(uuid: string, name: string): boolean {
    return this.db.transaction(() => {
      const gone = this.stmt.del.run(uuid, name).changes > 0;
      if (gone) this.stmt.bump.run(uuid);
      return gone;
    })();
  }

  /** Names and times: what the admin sees. */
  names(uuid: string): { name: string; updatedAt: number }[] {
    return this.list(uuid).map((s) => ({ name: s.name, updatedAt: s.updatedAt }));
  }

  /** The values, for the device route only. */
  values(uuid: string): Record<string, string> {
    return Object.fromEntries(this.list(uuid).map((s) => [s.name, s.value]));
  }

  /** 0 before any secret was set. */
  version(uuid: string): number {
    return (this.stmt.version.get(uuid) as number | undefined) ?? 0;
  }

  private list(uuid: string): { name: string; value: string; updatedAt: number }[] {
    return (this.stmt.list.all(uuid) as { name: string; value: string; updated_at: number }[]).map((r) => ({ name: r.name, value: r.value, updatedAt: r.updated_at }));
  }
}

/** The admin operations on secrets (admin.ts): values go in, only names come out. */
export function secretsAdmin(store: { secrets: SecretTable }): {
  setSecret(uuid: string, name: string, body: unknown): { name: string; version: number };
  deleteSecret(uuid: string, name: string): { name: string; removed: true };
  secrets(uuid: string): { version: number; secrets: { name: string; updatedAt: number }[] };
} {
  return {
    setSecret(uuid, name, body) {
      const b = requireObject(body, 'body');
      if (Object.keys(b).some((k) => k !== 'value')) throw badRequest('body: expected { "value": "<the secret>" } and nothing else');
      return store.secrets.put(requireUuid(uuid), name, b.value);
    },
    deleteSecret(uuid, name) {
      if (!store.secrets.remove(requireUuid(uuid), name)) throw notFound(`device ${uuid} has no secret ${JSON.stringify(name)}`);
      return { name, removed: true };
    },
    secrets(uuid) {
      const id = requireUuid(uuid);
      return { version: store.secrets.version(id), secrets: store.secrets.names(id) };
    },
  };
}
