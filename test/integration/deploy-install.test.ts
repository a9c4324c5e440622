import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startDevCloud } from '../../devcloud/server.js';
import { requireBuilt, ROOT as ROOT_DIR } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * deploy/install.sh as an operator runs it: its syntax (sh -n, shellcheck when installed), what
 * --dry-run says it would do (and that it does nothing), and a real install into a temp root
 * (--root DIR: every path under DIR, no systemctl) whose files and modes are checked, whose installed
 * agent runs from its own copy of the modules and delivers a reading to a devcloud, which a second run upgrades in place keeping the
 * config, and which --uninstall removes keeping the data unless --purge.
 */

/** The source tree, without a trailing slash (as the script prints it). */
const ROOT = resolve(ROOT_DIR);
const SCRIPT = join(ROOT, 'deploy/install.sh');
const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function install(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('/bin/sh', [SCRIPT, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const mode = (path: string): string => (statSync(path).mode & 0o777).toString(8);

/**
 * Starts the installed bin against a devcloud, posts a reading, waits until the cloud has it, and
 * stops the agent with SIGTERM: what it answered, whether the cloud got it, how it exited.
 */
async function runInstalled(root: string): Promise<{ healthy: number; accepted: number; delivered: boolean; code: number | null; stderr: string }> {
  const cloud = await startDevCloud();
  const dataDir = dirs.make();
  const config = join(dataDir, 'config.json');
  const device = { uuid: 'installed', apiKey: 'installed-device-api-key' };
  cloud.admin.createDevice(device);
  writeFileSync(config, JSON.stringify({ dataDir, device, cloud: { apiUrl: cloud.url }, api: { port: 0, localApiKey: 'installed-local-api-key' }, features: { metrics: false }, logging: { format: 'json', level: 'info' } }));
  // The bin as the unit runs it, from the root: modules are found in the installed copy only.
  const child = spawn('/bin/sh', [join(root, 'opt/iotistic-agent/dist/bundle/cli.js'), 'run', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 60_000;
    let api: string | undefined;
    while (api === undefined && Date.now() < deadline && child.exitCode === null) {
      api = out.split('\n').flatMap((l) => (l.includes('"agent started') ? [(JSON.parse(l) as { api: string }).api] : []))[0];
      if (api === undefined) await new Promise((r) => setTimeout(r, 50));
    }
    if (api === undefined) throw new Error(`the installed agent did not start:\n${err}\n${out.slice(-2000)}`);
    const healthy = (await fetch(`${api}/v1/healthy`)).status;
    const posted = await fetch(`${api}/v2/telemetry`, {
      method: 'POST',
      headers: { authorization: 'Bearer installed-local-api-key', 'content-type': 'application/json' },
      body: JSON.stringify({ stream: 'flow', payload: { lpm: 1 } }),
    });
    let delivered = false;
    while (!delivered && Date.now() < deadline) {
      delivered = (cloud.admin.received(device.uuid).messages.byChannel.telemetry ?? 0) >= 1;
      if (!delivered) await new Promise((r) => setTimeout(r, 100));
    }
    child.kill('SIGTERM');
    return { healthy, accepted: posted.status, delivered, code: await exited, stderr: err };
  } finally {
    child.kill('SIGKILL');
    await cloud.close();
  }
}

describe('deploy/install.sh', () => {
  it('is valid POSIX sh (and clean under shellcheck when it is installed)', () => {
    expect(spawnSync('/bin/sh', ['-n', SCRIPT]).status).toBe(0);
    const shellcheck = spawnSync('shellcheck', ['-s', 'sh', SCRIPT], { encoding: 'utf8' });
    if (shellcheck.error === undefined) expect(shellcheck.stdout).toBe('');
  });

  it('--dry-run prints every step and changes nothing', () => {
    requireBuilt();
    const root = join(dirs.make(), 'not-made');
    const r = install('--dry-run', '--root', root);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`+ cp -R ${ROOT}/dist/bundle ${root}/opt/iotistic-agent.new/dist/bundle`);
    expect(r.stdout).toContain(`+ ln -sfn /opt/iotistic-agent/dist/bundle/cli.js ${root}/usr/local/bin/iotistic-agent`);
    expect(r.stdout).toMatch(/\+ sed .*examples\/local\.json > .*\/etc\/iotistic-agent\/config\.json \(0600\)/);
    expect(r.stdout).toContain(`+ cp ${ROOT}/deploy/systemd/iotistic-agent.service ${root}/etc/systemd/system/iotistic-agent.service`);
    expect(r.stdout).toContain('skipping systemctl daemon-reload (--root)');
    expect(existsSync(root)).toBe(false);
  });

  it('--dry-run on the real system names the systemctl steps', () => {
    requireBuilt();
    const r = install('--dry-run');
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('+ systemctl'))).toEqual([
      '+ systemctl daemon-reload',
      '+ systemctl enable iotistic-agent.service',
      '+ systemctl restart iotistic-agent.service',
    ]);
    expect(install('--dry-run', '--uninstall', '--purge').stdout).toContain('+ rm -rf /etc/iotistic-agent /var/lib/iotistic-agent');
  });

  it('installs into a root: program, bin link, a 0600 config from the example, the unit; the installed agent runs and delivers to a cloud', async () => {
    requireBuilt();
    const root = dirs.make();
    const r = install('--root', root, '--config', 'http-only');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const prefix = join(root, 'opt/iotistic-agent');
    expect(readlinkSync(join(root, 'usr/local/bin/iotistic-agent'))).toBe('/opt/iotistic-agent/dist/bundle/cli.js');
    expect(mode(join(prefix, 'dist/bundle/cli.js'))).toBe('755');
    for (const m of ['better-sqlite3', 'dockerode', 'pino', 'pino-pretty']) expect(existsSync(join(prefix, 'node_modules', m, 'package.json')), m).toBe(true);
    expect(existsSync(join(prefix, 'node_modules/fastify')), 'bundled modules are not copied').toBe(false);
    const config = join(root, 'etc/iotistic-agent/config.json');
    expect([mode(join(root, 'etc/iotistic-agent')), mode(config)]).toEqual(['700', '600']);
    const written = JSON.parse(readFileSync(config, 'utf8')) as { $schema: string; device: { apiKey: string } };
    expect(written.$schema).toBe('/opt/iotistic-agent/schema/agent-config.schema.json');
    expect(written.device.apiKey).toBe('REPLACE-WITH-DEVICE-API-KEY');
    expect(existsSync(join(prefix, written.$schema.replace('/opt/iotistic-agent/', '')))).toBe(true);
    const unit = join(root, 'etc/systemd/system/iotistic-agent.service');
    expect(readFileSync(unit, 'utf8')).toBe(readFileSync(join(ROOT, 'deploy/systemd/iotistic-agent.service'), 'utf8'));
    expect(mode(unit)).toBe('644');
    expect(r.stdout).toContain('skipping systemctl restart iotistic-agent.service (--root)');

    const run = await runInstalled(root);
    expect(run).toEqual({ healthy: 200, accepted: 202, delivered: true, code: 0, stderr: '' });
  }, 120_000);

  it('a second run upgrades in place and keeps the config; --uninstall keeps config and data, --purge removes them', () => {
    requireBuilt();
    const root = dirs.make();
    expect(install('--root', root, '--no-start').status).toBe(0);
    const config = join(root, 'etc/iotistic-agent/config.json');
    writeFileSync(config, '{"device":{"name":"edited"}}\n');
    const again = install('--root', root);
    expect(again.status).toBe(0);
    expect(again.stdout).toContain(`keeping ${config}`);
    expect(readFileSync(config, 'utf8')).toBe('{"device":{"name":"edited"}}\n');
    expect(existsSync(join(root, 'opt/iotistic-agent.new'))).toBe(false);
    expect(existsSync(join(root, 'opt/iotistic-agent.old'))).toBe(false);

    const state = join(root, 'var/lib/iotistic-agent');
    spawnSync('mkdir', ['-p', state]);
    writeFileSync(join(state, 'agent.db'), '');
    expect(install('--root', root, '--uninstall').status).toBe(0);
    expect(existsSync(join(root, 'opt/iotistic-agent'))).toBe(false);
    expect(() => lstatSync(join(root, 'usr/local/bin/iotistic-agent'))).toThrow();
    expect(existsSync(join(root, 'etc/systemd/system/iotistic-agent.service'))).toBe(false);
    expect([existsSync(config), existsSync(join(state, 'agent.db'))]).toEqual([true, true]);
    expect(install('--root', root, '--uninstall', '--purge').status).toBe(0);
    expect([existsSync(config), existsSync(state)]).toEqual([false, false]);
  }, 120_000);

  it('refuses what it does not know, and --purge alone', () => {
    expect(install('--frobnicate').stderr).toContain('unknown option --frobnicate');
    expect(install('--purge').stderr).toContain('--purge goes with --uninstall');
  });
});
