import type { Database, Statement } from 'better-sqlite3';
import type { FastifyInstance } from 'fastify';
import { createHash, randomBytes } from 'node:crypto';
import { sendError } from './http.js';
import { fail, notFound, optionalInt, rejectUnknownKeys, requireId, requireObject, requireUuid } from './validate.js';

/**
 * Registration (docs/protocol.md, "Registration"): fleet provisioning keys, stored hashed, with an
 * expiry and a device limit, and the device keys they bring. The devices' own table holds the device
 * key (its hash) and whether it was revoked; a revoked key is answered 401 `invalid_token`.
 */

export interface ProvisioningKeyView {
  id: string;
  fleet: string;
  expiresAt: number | null;
  maxDevices: number | null;
  /** Devices registered with this key (a device registering again after a revocation counts once). */
  devices: number;
  revoked: boolean;
  /** Every registration request that presented this key, refused ones included. */
  attempts: number;
  createdAt: number;
}

export interface NewProvisioningKey {
  id: string;
  /** The key itself, shown only here: the devcloud keeps its hash. */
  key: string;
  fleet: string;
  expiresAt: number | null;
  maxDevices: number | null;
}

export type RegisterResult =
  | { ok: true; uuid: string; apiKey: string; mqtt: { username: string; password: string } }
  | { ok: false; status: 401 | 403 | 409; message: string };

interface KeyRow {
  id: string;
  fleet: string;
  expires_at: number | null;
  max_devices: number | null;
  devices: number;
  revoked: number;
  attempts: number;
  created_at: number;
}

const hash = (secret: string): string => createHash('sha256').update(secret).digest('hex');

const view = (r: KeyRow): ProvisioningKeyView => ({
  id: r.id,
  fleet: r.fleet,
  expiresAt: r.expires_at,
  maxDevices: r.max_devices,
  devices: r.devices,
  revoked: r.revoked === 1,
  attempts: r.attempts,
  createdAt: r.created_at,
});

const KEY_COLUMNS = 'id, fleet, expires_at, max_devices, devices, revoked, attempts, created_at';

export class ProvisioningStore {
  private readonly stmt: Record<'insertKey' | 'keyByHash' | 'keys' | 'revokeKey' | 'attempt' | 'counted' | 'device' | 'insertDevice' | 'issue' | 'revokeDevice', Statement>;

  constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {
    const prepare = (sql: string): Statement => db.prepare(sql);
    this.stmt = {
      insertKey: prepare('INSERT INTO provisioning_keys (id, key_hash, fleet, expires_at, max_devices, created_at) VALUES (?, ?, ?, ?, ?, ?)'),
      keyByHash: prepare(`SELECT ${KEY_COLUMNS} FROM provisioning_keys WHERE key_hash = ?`),
      keys: prepare(`SELECT ${KEY_COLUMNS} FROM provisioning_keys ORDER BY created_at, id`),
      revokeKey: prepare('UPDATE provisioning_keys SET revoked = 1 WHERE id = ?'),
      attempt: prepare('UPDATE provisioning_keys SET attempts = attempts + 1 WHERE id = ?'),
      counted: prepare('UPDATE provisioning_keys SET devices = devices + 1 WHERE id = ?'),
      device: prepare('SELECT key_hash, key_revoked_at, provisioning_key FROM devices WHERE uuid = ?'),
      insertDevice: prepare('INSERT INTO devices (uuid, key_hash, created_at) VALUES (?, NULL, ?) ON CONFLICT (uuid) DO NOTHING'),
      issue: prepare('UPDATE devices SET key_hash = ?, key_revoked_at = NULL, provisioning_key = ? WHERE uuid = ?'),
      revokeDevice: prepare('UPDATE devices SET key_revoked_at = ? WHERE uuid = ? AND key_hash IS NOT NULL'),
    };
  }

  createKey(fleet: string, expiresInSeconds: number | null, maxDevices: number | null): NewProvisioningKey {
    const id = `pk_${randomBytes(6).toString('hex')}`;
    const key = `prov_${randomBytes(24).toString('base64url')}`;
    const expiresAt = expiresInSeconds === null ? null : this.now() + expiresInSeconds * 1000;
    this.stmt.insertKey.run(id, hash(key), fleet, expiresAt, maxDevices, this.now());
    return { id, key, fleet, expiresAt, maxDevices };
  }

  keys(): ProvisioningKeyView[] {
    return (this.stmt.keys.all() as KeyRow[]).map(view);
  }

  /** Whether the key existed. Devices it registered keep their keys. */
  revokeKey(id: string): boolean {
    return this.stmt.revokeKey.run(id).changes > 0;
  }

  /** Whether the device had a key to revoke. Its next request is answered 401 `invalid_token`. */
  revokeDeviceKey(uuid: string): boolean {
    return this.stmt.revokeDevice.run(this.now(), uuid).changes > 0;
  }

  register(provisioningKey: string, uuid: string): RegisterResult {
    return this.db.transaction((): RegisterResult => {
      const key = this.stmt.keyByHash.get(hash(provisioningKey)) as KeyRow | undefined;
      if (!key) return { ok: false, status: 401, message: 'Authorization: the provisioning key is unknown' };
      this.stmt.attempt.run(key.id);
      if (key.revoked === 1) return { ok: false, status: 401, message: `provisioning key ${key.id} (fleet ${key.fleet}) was revoked` };
      if (key.expires_at !== null && key.expires_at <= this.now()) {
        return { ok: false, status: 401, message: `provisioning key ${key.id} (fleet ${key.fleet}) expired at ${new Date(key.expires_at).toISOString()}` };
      }
      const device = this.stmt.device.get(uuid) as { key_hash: string | null; key_revoked_at: number | null; provisioning_key: string | null } | undefined;
      if (device?.key_hash != null && device.key_revoked_at === null) {
        return { ok: false, status: 409, message: `uuid: device ${uuid} is already registered with a live key; revoke it (POST /admin/devices/${uuid}/revoke-key) to register again` };
      }
      const newDevice = device?.provisioning_key !== key.id;
      if (newDevice && key.max_devices !== null && key.devices >= key.max_devices) {
        return { ok: false, status: 403, message: `provisioning key ${key.id} (fleet ${key.fleet}) reached its device limit of ${key.max_devices}` };
      }
      const apiKey = randomBytes(24).toString('base64url');
      this.stmt.insertDevice.run(uuid, this.now());
      this.stmt.issue.run(hash(apiKey), key.id, uuid);
      if (newDevice) this.stmt.counted.run(key.id);
      // The devcloud's broker has no per-device accounts: the credentials are the uuid and the device key.
      return { ok: true, uuid, apiKey, mqtt: { username: uuid, password: apiKey } };
    })();
  }
}

/** `POST /admin/provisioning-keys`'s body, checked: `{ fleet, expiresInSeconds?, maxDevices? }`. */
export function parseNewKey(body: unknown): { fleet: string; expiresInSeconds: number | null; maxDevices: number | null } {
  const obj = requireObject(body, 'body');
  rejectUnknownKeys(obj, '', ['fleet', 'expiresInSeconds', 'maxDevices']);
  const fleet = requireId(obj.fleet, 'fleet');
  const expires = obj.expiresInSeconds === undefined ? null : optionalInt(obj.expiresInSeconds, 'expiresInSeconds', 0, 10 * 365 * 24 * 3600, 0);
  const maxDevices = obj.maxDevices === undefined ? null : optionalInt(obj.maxDevices, 'maxDevices', 0, 1_000_000_000, 0);
  return { fleet, expiresInSeconds: expires, maxDevices };
}

/** `POST /device/v1/register` (outside the device-key auth: it presents a provisioning key). */
export function registerRegistrationRoute(app: FastifyInstance, provisioning: ProvisioningStore): void {
  app.post('/device/v1/register', async (request, reply) => {
    const header = request.headers.authorization;
    const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match?.[1]) {
      void reply.header('www-authenticate', 'Bearer');
      return sendError(reply, 401, `Authorization header: expected "Bearer <provisioningKey>", got ${header === undefined ? 'none' : 'another form'}`, 'UNAUTHORIZED');
    }
    const body = requireObject(request.body, 'body');
    rejectUnknownKeys(body, '', ['uuid', 'name', 'agentVersion']);
    const uuid = requireUuid(body.uuid);
    if (body.name !== undefined && (typeof body.name !== 'string' || body.name.length > 128)) fail('name', 'a string of at most 128 characters', body.name);
    requireId(body.agentVersion, 'agentVersion');
    const result = provisioning.register(match[1], uuid);
    if (!result.ok) {
      if (result.status === 401) void reply.header('www-authenticate', 'Bearer error="invalid_token"');
      return sendError(reply, result.status, result.message, result.status === 401 ? 'UNAUTHORIZED' : result.status === 403 ? 'DEVICE_LIMIT' : 'ALREADY_REGISTERED');
    }
    request.log.info({ uuid }, 'devcloud registered a device with a provisioning key');
    return reply.code(201).send({ uuid: result.uuid, apiKey: result.apiKey, mqtt: result.mqtt });
  });
}

/** The admin operations on provisioning keys and device keys (admin.ts's AdminApi has them). */
export function provisioningAdmin(p: ProvisioningStore) {
  return {
    createProvisioningKey(spec: unknown): NewProvisioningKey {
      const { fleet, expiresInSeconds, maxDevices } = parseNewKey(spec);
      return p.createKey(fleet, expiresInSeconds, maxDevices);
    },
    provisioningKeys: (): { keys: ProvisioningKeyView[] } => ({ keys: p.keys() }),
    revokeProvisioningKey(id: string): { id: string; revoked: true } {
      if (!p.revokeKey(requireId(id, 'id'))) throw notFound(`no provisioning key ${JSON.stringify(id)}`);
      return { id, revoked: true };
    },
    revokeDeviceKey(uuid: string): { uuid: string; revoked: true } {
      const id = requireUuid(uuid);
      if (!p.revokeDeviceKey(id)) throw notFound(`device ${id} has no key to revoke`);
      return { uuid: id, revoked: true };
    },
  };
}
