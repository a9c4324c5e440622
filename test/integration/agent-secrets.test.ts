import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCli, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';
import { fileEngine } from '../helpers/docker.js';

/**
 * Secrets end to end (docs/lifecycle.md, "Secrets"): the devcloud holds a device's secrets, the
 * target names them, the built agent fetches them, keeps them encrypted, gives them to a native
 * process as environment and as a file, restarts it when a value changes, lets a local value
 * override the cloud's, and never shows a value: not in its log at debug level, not in any API
 * answer, not in anything the cloud receives from it.
 */
const env = agentsWithDevCloud();

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
const fresh = (label: string): string => `${label}-${randomBytes(9).toString('base64url')}`;

/** Writes the hashes of what it was given, prints a line with the password (to be masked), then stays up. */
const SCRIPT = [
  'printf %s "$DB_PASSWORD" | sha256sum | cut -d" " -f1 > "$OUT/env.tmp" && mv "$OUT/env.tmp" "$OUT/env"',
  'sha256sum < "$TLS_KEY_FILE" | cut -d" " -f1 > "$OUT/file.tmp" && mv "$OUT/file.tmp" "$OUT/file"',
  'echo "connecting with password $DB_PASSWORD"',
  'exec sleep 3600',
].join('; ');

function target(out: string): Record<string, unknown> {
  return {
    version: 1,
    apps: {
      vault: {
        services: {
          reader: {
            runtime: 'process',
            command: ['/bin/sh', '-c', SCRIPT],
            environment: { OUT: out },
            secrets: [
              { name: 'db-password', env: 'DB_PASSWORD' },
              { name: 'tls-key', file: 'TLS_KEY_FILE' },
            ],
          },
          waiter: { runtime: 'process', command: ['/bin/sleep', '3600'], secrets: [{ name: 'absent', env: 'ABSENT' }] },
          plain: { runtime: 'process', command: ['/bin/sleep', '3600'] },
        },
      },
    },
  };
}

const read = (path: string): string | undefined => (existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined);

/** Everything the local API shows, as text: every GET route, the metrics, the dashboard stream's first snapshot. */
async function everythingShown(agent: AgentProcess): Promise<string> {
  const paths = ['/v2/state', '/v2/config', '/v2/connection', '/v2/loops', '/v2/device', '/v2/queue', '/v2/jobs', '/v2/local-broker', '/v2/shadow', '/v2/secrets', '/v2/logs?lines=10000', '/v2/logs/services', '/metrics'];
  const parts = await Promise.all(paths.map(async (p) => `${p}: ${JSON.stringify((await agent.get(p)).body)}`));
  const { body } = await agent.send('POST', '/v2/dashboard/token');
  const res = await fetch(`${agent.apiUrl}/v2/dashboard/stream?token=${(body as { token: string }).token}`);
  const reader = res.body!.getReader();
  let stream = '';
  while (!stream.includes('\n\n')) {
    const { value, done } = await reader.read();
    if (done) break;
    stream += Buffer.from(value).toString('utf8');
  }
  await reader.cancel();
  return [...parts, `dashboard: ${stream}`].join('\n');
}

/** Everything the devcloud received from the device: state reports, messages, health, log lines. */
function everythingSent(uuid: string): string {
  const admin = env.cloud.admin;
  return JSON.stringify([admin.reports(uuid, { limit: 10_000 }), env.storedMessages(uuid), admin.health(uuid, { limit: 10_000 }), admin.logs(uuid, { limit: 10_000 })]);
}

describe('secrets', () => {
  it('reach a process as env and file, follow changes and local overrides, and are never shown', async () => {
    const uuid = `secrets-${process.pid}`;
    const dataDir = env.dirs.make();
    const out = env.dirs.make();
    // Run as root, the agent runs processes as "nobody": it writes its hashes here, and reads its
    // secret file from a directory it can pass through to (the data dir is the agent's alone).
    const processDir = join(env.dirs.make(), 'secrets');
    chmodSync(out, 0o777);
    chmodSync(dirname(processDir), 0o711);
    const [first, second, local, tlsKey, cliValue] = [fresh('first'), fresh('second'), fresh('local'), fresh('tls'), fresh('cli')];
    const admin = env.cloud.admin;
    admin.createDevice({ uuid, apiKey: `${uuid}-key-0123456789` });
    admin.setSecret(uuid, 'db-password', { value: first });
    admin.setSecret(uuid, 'tls-key', { value: tlsKey });
    admin.setTarget(uuid, target(out));
    expect(JSON.stringify(admin.secrets(uuid))).not.toContain(first);

    const agent = await env.spawn({
      dataDir,
      config: {
        device: { uuid, apiKey: `${uuid}-key-0123456789` },
        cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
        logging: { level: 'debug', format: 'json' },
        logs: { chunkWindowMs: 200 },
        secrets: { processDir },
        settings: { pollIntervalMs: 1_000, reportIntervalMs: 500, reconciliationIntervalMs: 1_000 },
      },
    });

    await waitFor('the process saw the first password and the key file', () => read(join(out, 'env')) === sha(first) && read(join(out, 'file')) === sha(tlsKey), 30_000);
    // The file: 0400 in a 0700 directory; the store: 0600.
    const secretDir = join(processDir, 'vault', 'reader');
    expect(statSync(secretDir).mode & 0o777).toBe(0o700);
    if (process.getuid?.() === 0) expect(statSync(join(secretDir, 'tls-key')).uid).not.toBe(0);
    expect(statSync(join(secretDir, 'tls-key')).mode & 0o777).toBe(0o400);
    expect(statSync(join(dataDir, 'secrets.enc')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dataDir, 'secrets.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dataDir, 'secrets.enc'), 'utf8')).not.toContain(first);

    // A service whose secret is missing waits, saying which; the others run.
    await waitFor('the waiter says what it waits for', async () => {
      const s = (await agent.get('/v2/state')).body as { current: { apps: Record<string, { services: Record<string, { status: string; lastError: string | null }> }> } };
      const svc = s.current.apps.vault?.services;
      return svc?.waiter?.lastError === 'waiting for secret absent' && svc.plain?.status === 'running' && svc.reader?.status === 'running';
    });

    admin.setSecret(uuid, 'db-password', { value: second });
    await waitFor('the process restarted with the new password', () => read(join(out, 'env')) === sha(second), 30_000);

    const put = await agent.send('PUT', '/v2/secrets/db-password', { value: local });
    expect(put).toEqual({ status: 200, body: { name: 'db-password', source: 'local' } });
    await waitFor('the local value overrides the cloud one', () => read(join(out, 'env')) === sha(local), 30_000);
    const listed = (await agent.get('/v2/secrets')).body as { secrets: { name: string; source: string; overridesCloud: boolean; usedBy: string[] }[]; missing: { name: string }[] };
    expect(listed.secrets.find((s) => s.name === 'db-password')).toMatchObject({ source: 'local', overridesCloud: true, usedBy: ['vault/reader'] });
    expect(listed.missing).toEqual([{ name: 'absent', missing: true, usedBy: ['vault/waiter'] }]);
    expect((await agent.send('DELETE', '/v2/secrets/db-password')).status).toBe(200);
    await waitFor('removing the local value brings the cloud one back', () => read(join(out, 'env')) === sha(second), 30_000);
    expect((await agent.send('PUT', '/v2/secrets/Bad!', { value: 'x' })).body).toMatchObject({ error: 'bad_request', message: expect.stringContaining('secret name "Bad!"') });

    // The CLI takes the value from a file, never from argv.
    const file = join(env.dirs.make(), 'value');
    writeFileSync(file, `${cliValue}\n`, { mode: 0o600 });
    const cli = ['--data-dir', dataDir, '--api', agent.apiUrl];
    expect((await runCli(['secret', 'set', 'from-cli', '--from-file', file, ...cli])).code).toBe(0);
    const ls = await runCli(['secret', 'ls', ...cli]);
    expect(ls.stdout).toMatch(/from-cli\s+local/);
    expect((await runCli(['secret', 'set', 'from-cli', ...cli])).stderr).toContain('expected --from-file FILE or --stdin');

    // The line the process printed with its password is shipped masked.
    await waitFor('the masked line at the cloud', () => JSON.stringify(admin.logs(uuid, { service: 'vault/reader', limit: 10_000 })).includes('connecting with password [secret]'), 30_000);
    // Reports are merge patches: a later one about another service need not name the reader again.
    await waitFor('a state report with the reader running', () => JSON.stringify(admin.reports(uuid, { limit: 20 })).includes('"reader":{"status":"running"'), 30_000);

    const shown = await everythingShown(agent);
    const sent = everythingSent(uuid);
    const own = `${JSON.stringify(agent.records())}\n${agent.stderr()}`;
    expect(own).toContain('secrets fetched');
    for (const value of [first, second, local, tlsKey, cliValue]) {
      expect(shown, 'the local API').not.toContain(value);
      expect(sent, 'what the cloud received').not.toContain(value);
      expect(own, "the agent's own log at debug level").not.toContain(value);
    }

    // A service gone from the target leaves no secret file behind.
    admin.setTarget(uuid, { version: 2, apps: { vault: { services: { plain: { runtime: 'process', command: ['/bin/sleep', '3600'] } } } } });
    await waitFor('the reader\'s secret files removed', () => !existsSync(secretDir), 30_000);
  }, 180_000);
});

describe('secrets in a container', () => {
  const engine = fileEngine();
  const IMAGE = 'local/agent-secrets:1';
  beforeAll(async () => {
    await engine.buildImage(IMAGE);
  }, 120_000);

  it('gets them as env and as a read-only file at its path; a change recreates it; none shown', async () => {
    const uuid = `secrets-docker-${process.pid}`;
    const dataDir = env.dirs.make();
    const [first, second, tlsKey] = [fresh('first'), fresh('second'), fresh('tls')];
    const admin = env.cloud.admin;
    admin.createDevice({ uuid, apiKey: `${uuid}-key-0123456789` });
    admin.setSecret(uuid, 'db-password', { value: first });
    admin.setSecret(uuid, 'tls-key', { value: tlsKey });
    // Prints the hashes (never the values), whether the file is read-only, then the password itself (to be masked).
    const script = [
      'echo "env=$(printf %s "$DB_PASSWORD" | sha256sum | cut -d" " -f1)"',
      'echo "file=$(sha256sum < /run/secrets/tls-key | cut -d" " -f1)"',
      '(echo x >> /run/secrets/tls-key) 2>/dev/null && echo "file=writable" || echo "file=read-only"',
      'echo "password $DB_PASSWORD"',
      'trap "exit 0" TERM; sleep 3600 & wait',
    ].join('; ');
    admin.setTarget(uuid, {
      version: 1,
      apps: {
        vaultbox: {
          services: {
            reader: {
              image: IMAGE,
              command: ['/bin/sh', '-c', script],
              secrets: [
                { name: 'db-password', env: 'DB_PASSWORD' },
                { name: 'tls-key', file: '/run/secrets/tls-key' },
              ],
            },
          },
        },
      },
    });
    const agent = await env.spawn({
      dataDir,
      env: { DOCKER_HOST: engine.host },
      config: {
        device: { uuid, apiKey: `${uuid}-key-0123456789` },
        cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
        logging: { level: 'debug', format: 'json' },
        logs: { chunkWindowMs: 200 },
        settings: { pollIntervalMs: 1_000, reportIntervalMs: 500, reconciliationIntervalMs: 1_000 },
      },
    });
    const lines = (): string => JSON.stringify(admin.logs(uuid, { service: 'vaultbox/reader', limit: 10_000 }));
    await waitFor('the container saw the first password and the key file, read-only', () => {
      const l = lines();
      return l.includes(`env=${sha(first)}`) && l.includes(`file=${sha(tlsKey)}`) && l.includes('file=read-only') && l.includes('password [secret]');
    }, 90_000);
    const mounted = join(dataDir, 'run-secrets', 'vaultbox', 'reader');
    expect(statSync(mounted).mode & 0o777).toBe(0o700);
    expect(statSync(join(mounted, 'tls-key')).mode & 0o777).toBe(0o444);

    admin.setSecret(uuid, 'db-password', { value: second });
    await waitFor('the container was recreated with the new password', () => lines().includes(`env=${sha(second)}`), 90_000);
    // Reports are merge patches: a later one about another service need not name the reader again.
    await waitFor('a state report with the reader running', () => JSON.stringify(admin.reports(uuid, { limit: 20 })).includes('"reader":{"status":"running"'), 30_000);

    const shown = await everythingShown(agent);
    const sent = everythingSent(uuid);
    const own = `${JSON.stringify(agent.records())}\n${agent.stderr()}`;
    for (const value of [first, second, tlsKey]) {
      expect(shown, 'the local API').not.toContain(value);
      expect(sent, 'what the cloud received').not.toContain(value);
      expect(own, "the agent's own log at debug level").not.toContain(value);
    }
  }, 240_000);
});
