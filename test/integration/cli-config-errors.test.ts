import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { requireBuilt, runCli, spawnAgent, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

// Config the CLI used to accept or pass over in silence: keys that can never be sent, a broken
// file behind `status --config`, an agent that is not running.
const dirs = tempDirs();
const agents: AgentProcess[] = [];
beforeAll(() => requireBuilt());
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  dirs.cleanup();
});

/** A port nothing listens on (taken, then released). */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

function writeConfig(cfg: unknown): string {
  const file = join(dirs.make(), 'config.json');
  writeFileSync(file, typeof cfg === 'string' ? cfg : JSON.stringify(cfg));
  return file;
}

describe('config check refuses keys that cannot go into an Authorization header', () => {
  it.each([
    ['api.localApiKey', { api: { localApiKey: 'my local key with spaces' } }],
    ['device.apiKey', { device: { apiKey: 'device-key\twith-tab-é' } }],
  ])('%s', async (field, cfg) => {
    const r = await runCli(['config', 'check', '--config', writeConfig(cfg)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${field}: expected a bearer token: visible ASCII`);
    expect(r.stderr).toContain('no spaces');
    // The value is a secret: named, never shown.
    expect(r.stderr).toContain('"[redacted]"');
  });

  it('accepts base64, base64url and other visible-ASCII keys', async () => {
    const r = await runCli(['config', 'check', '--config', writeConfig({ api: { localApiKey: 'aGVsbG8-d29y_bGQ+Zm9v/YmFy==' }, device: { apiKey: 'abc.DEF~123!@#' } })]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });
});

describe('config check on settings that cannot work together', () => {
  it('refuses a client certificate without its key (the MQTT session would refuse it at every start)', async () => {
    const r = await runCli(['config', 'check', '--config', writeConfig({ mqtt: { url: 'mqtts://127.0.0.1:8883', certFile: '/etc/client.pem' } })]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('mqtt.keyFile: expected a path as well: mutual TLS needs both');
  });

  it('warns about a cloud.caFile that an http:// cloud never uses', async () => {
    const r = await runCli(['config', 'check', '--config', writeConfig({ cloud: { apiUrl: 'http://127.0.0.1:9', caFile: '/etc/ca.pem' } })]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('warning: cloud.caFile is set but cloud.apiUrl is not https://: the CA is not used');
  });
});

describe('iotistic-agent status', () => {
  it('with a broken --config whose api section is unusable: says so with the issues and exits 78', async () => {
    const file = writeConfig({ api: { port: 'eight thousand' }, dataDir: dirs.make() });
    const r = await runCli(['status', '--config', file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain(`the config ${file} is invalid`);
    expect(r.stderr).toContain('api.port: expected a number, got "eight thousand"');
    expect(r.stderr).toContain('--api <url>');
    expect(r.stderr).not.toContain('fetch failed');
  });

  it('with a file that is not JSON: says so and exits 78', async () => {
    const file = writeConfig('{ "api": { "port": 1234 }, }');
    const r = await runCli(['status', '--config', file]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('expected valid JSON');
  });

  it('with a broken --config whose api section is good: uses that section and warns, naming what it uses', async () => {
    const dataDir = dirs.make();
    const port = await closedPort();
    const agent = await spawnAgent({ dataDir, config: { api: { port } } });
    agents.push(agent);
    // An edit breaks another part of the file while the agent runs.
    const file = writeConfig({ dataDir, api: { port }, settings: { pollIntervalMs: 'often' } });
    const r = await runCli(['status', '--config', file]);
    expect(r.stderr).toContain(`warning: the config ${file} is invalid`);
    expect(r.stderr).toContain('settings.pollIntervalMs: expected a number, got "often"');
    expect(r.stderr).toContain(`using only its api section (127.0.0.1:${port}) and data dir (${dataDir})`);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Iotistic Agent');
  });

  it('against a stopped agent: "no agent answers at <url>" with the cause', async () => {
    const port = await closedPort();
    const url = `http://127.0.0.1:${port}`;
    const r = await runCli(['status', '--api', url, '--key', 'any-key-0123456789abcdef']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`no agent answers at ${url} (connection refused, ECONNREFUSED): is it running? (systemctl status iotistic-agent)`);
    expect(r.stderr).not.toContain('fetch failed');
  });
});
