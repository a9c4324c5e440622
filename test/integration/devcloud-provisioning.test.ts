import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { adminClient } from '../helpers/devcloud.js';

// The devcloud's side of registration (docs/protocol.md, "Registration"), over HTTP as a device sees it.
let cloud: DevCloud;
beforeAll(async () => {
  cloud = await startDevCloud({ autoProvision: false });
});
afterAll(() => cloud.close());

async function call(method: string, path: string, key: string | undefined, body?: unknown): Promise<{ status: number; json: Record<string, unknown>; challenge: string | null }> {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${cloud.url}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown>, challenge: res.headers.get('www-authenticate') };
}

const register = (key: string | undefined, body: unknown) => call('POST', '/device/v1/register', key, body);

it('registers a device with a provisioning key, refuses a second live registration, and takes one after the device key is revoked', async () => {
  const admin = adminClient(cloud.adminUrl);
  const pk = await admin.createProvisioningKey({ fleet: 'line-3', maxDevices: 2 });
  expect(pk.key).toMatch(/^prov_/);
  const first = await register(pk.key, { uuid: 'reg-1', agentVersion: '0.1.0' });
  expect(first.status).toBe(201);
  const apiKey = first.json.apiKey as string;
  expect(first.json).toEqual({ uuid: 'reg-1', apiKey, mqtt: { username: 'reg-1', password: apiKey } });
  expect((await call('GET', '/device/v1/reg-1/state', apiKey)).status).toBe(200);

  const again = await register(pk.key, { uuid: 'reg-1', agentVersion: '0.1.0' });
  expect(again.status).toBe(409);
  expect(again.json.message).toMatch(/^uuid: device reg-1 is already registered with a live key/);

  await admin.revokeDeviceKey('reg-1');
  const refused = await call('GET', '/device/v1/reg-1/state', apiKey);
  expect(refused.status).toBe(401);
  expect(refused.challenge).toBe('Bearer error="invalid_token"');
  expect(refused.json.message).toMatch(/revoked/);
  const renewed = await register(pk.key, { uuid: 'reg-1', agentVersion: '0.1.0' });
  expect(renewed.status).toBe(201);
  expect(renewed.json.apiKey).not.toBe(apiKey);

  // The limit counts devices, not registrations: reg-1 twice and reg-2 fill 2; reg-3 is refused.
  expect((await register(pk.key, { uuid: 'reg-2', agentVersion: '0.1.0' })).status).toBe(201);
  const full = await register(pk.key, { uuid: 'reg-3', agentVersion: '0.1.0' });
  expect(full.status).toBe(403);
  expect(full.json.message).toMatch(/reached its device limit of 2/);
  const listed = (await admin.provisioningKeys()).keys.find((k) => k.id === pk.id);
  expect(listed).toMatchObject({ fleet: 'line-3', devices: 2, maxDevices: 2, revoked: false, attempts: 5 });
  expect(JSON.stringify(await admin.provisioningKeys())).not.toContain(pk.key);
});

it('refuses unknown, revoked and expired provisioning keys (401 invalid_token) and bad bodies (400 naming the field)', async () => {
  const admin = adminClient(cloud.adminUrl);
  expect((await register(undefined, { uuid: 'x-1', agentVersion: '1' })).status).toBe(401);
  const unknown = await register('prov_not-a-key', { uuid: 'x-1', agentVersion: '1' });
  expect([unknown.status, unknown.challenge]).toEqual([401, 'Bearer error="invalid_token"']);
  const revoked = await admin.createProvisioningKey({ fleet: 'gone' });
  await admin.revokeProvisioningKey(revoked.id);
  expect((await register(revoked.key, { uuid: 'x-1', agentVersion: '1' })).json.message).toMatch(/was revoked/);
  const expired = await admin.createProvisioningKey({ fleet: 'old', expiresInSeconds: 0 });
  expect((await register(expired.key, { uuid: 'x-1', agentVersion: '1' })).json.message).toMatch(/expired at/);

  const good = await admin.createProvisioningKey({ fleet: 'ok' });
  const bad = await register(good.key, { uuid: 'has space', agentVersion: '1' });
  expect([bad.status, bad.json.message]).toEqual([400, 'uuid: expected 1-128 letters, digits, ".", "_" or "-", got "has space"']);
  expect((await register(good.key, { uuid: 'x-2' })).json.message).toMatch(/^agentVersion: expected a non-empty string/);
  expect((await register(good.key, { uuid: 'x-2', agentVersion: '1', extra: 1 })).json.message).toMatch(/^extra: unknown field/);
  await expect(admin.createProvisioningKey({ fleet: 'f', maxDevices: -1 })).rejects.toThrow(/maxDevices: expected an integer from 0/);
  await expect(admin.revokeDeviceKey('never-registered')).rejects.toThrow(/has no key to revoke/);
  await expect(admin.revokeProvisioningKey('pk_nope')).rejects.toThrow(/no provisioning key "pk_nope"/);
});
