import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { runCli, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

// Issue 17 (A) on the built agent: a device with a fleet provisioning key and no device key registers
// with the devcloud, keeps the key it is given in identity.json, registers again after a revocation,
// and says so (without looping) when the cloud refuses the provisioning key.
const env = agentsWithDevCloud();
const { dirs } = env;

interface Registration {
  state: string;
  reason?: string;
  lastError?: string | null;
}

const fastOffline = { offlineAfterFailures: 1, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, offlineRetryIntervalSeconds: 1 };

function spawn(provisioningKey: string, dataDir = dirs.make()): Promise<AgentProcess> {
  return env.spawn({
    dataDir,
    // The key comes from the environment, as a fleet image would set it.
    env: { IOTISTIC_DEVICE_PROVISIONING_KEY: provisioningKey },
    config: {
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      settings: { pollIntervalMs: 1_000, reportIntervalMs: 1_000, offline: fastOffline },
    },
  });
}

const registration = async (a: AgentProcess): Promise<Registration> => ((await a.get('/v2/state')).body as { registration: Registration }).registration;
const uuidOf = async (a: AgentProcess): Promise<string> => ((await a.get('/v2/device')).body as { uuid: string }).uuid;
const issuedKey = (a: AgentProcess): string | undefined =>
  (JSON.parse(readFileSync(join(a.dataDir, 'identity.json'), 'utf8')) as { issued?: { deviceApiKey: string } }).issued?.deviceApiKey;
const telemetry = (uuid: string, mark: string): number =>
  env.cloud.admin.messages(uuid, { limit: 10_000 }).messages.filter((m) => m.channel === 'telemetry' && JSON.stringify(m.payload).includes(mark)).length;

it('first boot offline runs locally and queues; registers once the cloud is back (key in identity.json, 0600); a revoked device key brings a new registration; no key is ever logged or shown', async () => {
  const pk = env.cloud.admin.createProvisioningKey({ fleet: 'first-boot', maxDevices: 5 });
  await env.cloud.admin.setFaults({ refuse: true });
  const agent = await spawn(pk.key);
  const uuid = await uuidOf(agent);

  expect((await agent.get('/v1/healthy')).status).toBe(200);
  expect((await agent.send('POST', '/v2/telemetry', { stream: 'temp', payload: { mark: 'offline-1' } })).status).toBe(202);
  await waitFor('a failed registration attempt shown', async () => {
    const r = await registration(agent);
    return r.state === 'registering' && typeof r.lastError === 'string';
  });
  expect(issuedKey(agent)).toBeUndefined();

  await env.cloud.admin.clearFaults();
  await waitFor('the queued telemetry delivered', () => telemetry(uuid, 'offline-1') > 0, 30_000);
  expect((await registration(agent)).state).toBe('registered');
  const first = issuedKey(agent);
  expect(first).toMatch(/^[\x21-\x7e]{8,}$/);
  expect(statSync(join(agent.dataDir, 'identity.json')).mode & 0o777).toBe(0o600);

  // The cloud revokes the device key: the agent's next request is refused and it registers again.
  env.cloud.admin.revokeDeviceKey(uuid);
  expect((await agent.send('POST', '/v2/telemetry', { stream: 'temp', payload: { mark: 'after-revoke' } })).status).toBe(202);
  await waitFor('a new device key', () => issuedKey(agent) !== undefined && issuedKey(agent) !== first, 30_000);
  await waitFor('delivery goes on with the new key', () => telemetry(uuid, 'after-revoke') > 0, 30_000);
  expect(telemetry(uuid, 'offline-1')).toBe(1);
  const keyRow = env.cloud.admin.provisioningKeys().keys.find((k) => k.id === pk.id);
  // One device, registered twice: counted once; a handful of attempts, not a storm.
  expect(keyRow?.devices).toBe(1);
  expect(keyRow?.attempts).toBeLessThanOrEqual(4);
  // The loops' requests refused with the revoked key until the new one came: a few, not a storm.
  expect(env.cloud.admin.received(uuid).requests.byStatus['401'] ?? 0).toBeLessThanOrEqual(12);

  const second = issuedKey(agent) as string;
  const shown = JSON.stringify([(await agent.get('/v2/state')).body, (await agent.get('/v2/config')).body]);
  const logged = JSON.stringify(agent.records()) + agent.stderr();
  for (const secret of [pk.key, first as string, second]) {
    expect(shown).not.toContain(secret);
    expect(logged).not.toContain(secret);
  }
}, 90_000);

it('a restart uses the key kept in identity.json: no second registration', async () => {
  const pk = env.cloud.admin.createProvisioningKey({ fleet: 'restart', maxDevices: 1 });
  const first = await spawn(pk.key);
  const uuid = await uuidOf(first);
  await waitFor('registered', async () => (await registration(first)).state === 'registered');
  const key = issuedKey(first);
  await first.stop('SIGTERM');
  const again = await spawn(pk.key, first.dataDir);
  expect(await registration(again)).toMatchObject({ state: 'registered' });
  expect((await again.send('POST', '/v2/telemetry', { stream: 'temp', payload: { mark: 'after-restart' } })).status).toBe(202);
  await waitFor('delivered after the restart', () => telemetry(uuid, 'after-restart') > 0, 30_000);
  expect(issuedKey(again)).toBe(key);
  expect(env.cloud.admin.provisioningKeys().keys.find((k) => k.id === pk.id)).toMatchObject({ attempts: 1, devices: 1 });
}, 60_000);

it('a revoked provisioning key, an expired one and a full device limit: the agent keeps running, says why, and retries slowly', async () => {
  const revoked = env.cloud.admin.createProvisioningKey({ fleet: 'revoked' });
  env.cloud.admin.revokeProvisioningKey(revoked.id);
  const expired = env.cloud.admin.createProvisioningKey({ fleet: 'expired', expiresInSeconds: 0 });
  const full = env.cloud.admin.createProvisioningKey({ fleet: 'full', maxDevices: 0 });
  const cases = [
    { key: revoked, reason: /registration refused \(401\).*revoked/ },
    { key: expired, reason: /registration refused \(401\).*expired/ },
    { key: full, reason: /registration refused \(403\): the provisioning key's device limit is reached/ },
  ];
  const agents = await Promise.all(cases.map((c) => spawn(c.key.key)));
  for (const [i, c] of cases.entries()) {
    const agent = agents[i] as AgentProcess;
    await waitFor(`refused shown (${c.key.fleet})`, async () => (await registration(agent)).state === 'refused');
    expect((await registration(agent)).reason).toMatch(c.reason);
    expect((await agent.get('/v1/healthy')).status).toBe(200);
    expect((await agent.send('POST', '/v2/telemetry', { stream: 'temp', payload: { mark: 'local' } })).status).toBe(202);
  }
  // Refused attempts wait half to all of the backoff's cap (1 s here): three attempts take at least 1 s.
  const attempts = (id: string): number => env.cloud.admin.provisioningKeys().keys.find((k) => k.id === id)?.attempts ?? 0;
  const start = attempts(full.id);
  const t0 = Date.now();
  await waitFor('two more attempts', () => attempts(full.id) >= start + 2, 20_000);
  expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
  const full3 = agents[2] as AgentProcess;
  const shown = await runCli(['status', '--api', full3.apiUrl, '--data-dir', full3.dataDir]);
  expect(shown.stdout).toMatch(/Registration {2}refused: registration refused \(403\): the provisioning key's device limit is reached/);
  expect(shown.stdout).not.toContain(full.key);
  const refusals = full3.records().filter((r) => String(r.msg).startsWith('registration refused'));
  // Said once at error level, not at every attempt.
  expect(refusals.length).toBe(1);
  expect(refusals[0]?.level).toBe(50);
}, 90_000);

it('a configured device key revoked and no provisioning key: the agent says what to do, once, and keeps running', async () => {
  const dev = { uuid: `configured-${process.pid}`, apiKey: 'configured-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  const agent = await env.spawn({
    dataDir: dirs.make(),
    config: { device: dev, cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 }, features: { metrics: false }, settings: { pollIntervalMs: 1_000, offline: fastOffline } },
  });
  await waitFor('configured and polling', async () => (await registration(agent)).state === 'configured' && env.cloud.admin.received(dev.uuid).requests.total > 0);
  env.cloud.admin.revokeDeviceKey(dev.uuid);
  await waitFor('refused shown', async () => (await registration(agent)).state === 'refused');
  expect((await registration(agent)).reason).toBe(
    'device key refused (401) and no device.provisioningKey to register again; set a valid device.apiKey or a device.provisioningKey',
  );
  expect((await agent.get('/v1/healthy')).status).toBe(200);
  await waitFor('more refused requests', () => (env.cloud.admin.received(dev.uuid).requests.byStatus['401'] ?? 0) >= 3);
  expect(agent.records().filter((r) => String(r.msg).startsWith('device key refused (401)'))).toHaveLength(1);
}, 60_000);
