import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { CLI, localApiKey, requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

// A config edit that breaks the file while a last-known-good copy exists: the agent keeps running on
// the old config, and every place an operator or the cloud looks says so, with the reasons.
const dirs = tempDirs();
let cloud: DevCloud;
const agents: AgentProcess[] = [];
const children: ChildProcess[] = [];
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
  for (const c of children.splice(0)) c.kill('SIGKILL');
});
afterAll(async () => {
  await cloud.close();
  dirs.cleanup();
});

const dev = { uuid: `fallback-${process.pid}`, apiKey: 'fallback-key-0123456789' };

function config(over: { allowedCommands: string[]; settings?: Record<string, unknown> }): Record<string, unknown> {
  return {
    device: dev,
    cloud: { apiUrl: cloud.url, requestTimeoutMs: 2_000 },
    features: { metrics: false },
    jobs: { allowedCommands: over.allowedCommands },
    settings: { offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2 }, ...over.settings },
  };
}

async function start(dataDir: string, cfg: Record<string, unknown>): Promise<AgentProcess> {
  const agent = await spawnAgent({ dataDir, config: cfg });
  agents.push(agent);
  return agent;
}

interface ConfigView {
  source: string;
  file: string | null;
  fallback: {
    reason: string;
    message: string;
    issues: { path: string; expected: string; value?: unknown }[];
    issueCount: number;
    lastKnownGoodSavedAt: number;
    lastKnownGoodAgeMs: number;
  } | null;
  config: { jobs: { allowedCommands: string[] }; device: { apiKey?: string } };
}

describe('a broken config edit while a last-known-good config exists', () => {
  it('shows the fallback and its reasons in /v2/config, /v2/state, status, /metrics, an event and the health report', async () => {
    cloud.admin.createDevice(dev);
    cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    const dataDir = dirs.make();

    const good = await start(dataDir, config({ allowedCommands: ['/bin/echo', '/bin/true'] }));
    const before = (await good.get('/v2/config')).body as ConfigView;
    expect(before.source).toBe('file');
    expect(before.fallback).toBeNull();
    expect(before.config.device.apiKey).toBe('[redacted]');
    expect((await good.get('/metrics')).body).toMatch(/^iotistic_config_fallback\{reason="none"\} 0$/m);
    expect((await good.stop()).code).toBe(0);
    const savedBy = Date.now();

    // The operator takes /bin/echo away, and breaks the file in the same edit.
    const broken = await start(dataDir, config({ allowedCommands: ['/bin/true'], settings: { pollIntervalMs: '30s' } }));

    const view = (await broken.get('/v2/config')).body as ConfigView;
    expect(view.source).toBe('last-known-good');
    expect(view.file).toMatch(/config\.json$/);
    expect(view.config.jobs.allowedCommands).toEqual(['/bin/echo', '/bin/true']);
    expect(view.config.device.apiKey).toBe('[redacted]');
    expect(JSON.stringify(view)).not.toContain(dev.apiKey);
    expect(view.fallback).toMatchObject({ reason: 'invalid', issueCount: 1 });
    expect(view.fallback?.issues).toEqual([{ path: 'settings.pollIntervalMs', source: 'file', value: '30s', expected: 'a number' }]);
    expect(view.fallback!.lastKnownGoodSavedAt).toBeLessThanOrEqual(savedBy);
    expect(view.fallback!.lastKnownGoodAgeMs).toBeGreaterThanOrEqual(0);

    const state = (await broken.get('/v2/state')).body as { config: ConfigView };
    expect(state.config.source).toBe('last-known-good');
    expect(state.config.fallback?.issues[0]?.path).toBe('settings.pollIntervalMs');

    expect((await broken.get('/metrics')).body).toMatch(/^iotistic_config_fallback\{reason="invalid"\} 1$/m);

    const status = await runCli(['status', '--api', broken.apiUrl, '--key', broken.key]);
    expect(status.code).toBe(0);
    const lines = status.stdout.split('\n');
    // Among the first lines, not buried under the tables.
    expect(lines.slice(0, 4).join('\n')).toContain('CONFIG FALLBACK');
    expect(status.stdout).toContain('running on the last-known-good config saved');
    expect(status.stdout).toContain('status --full lists the issues');
    // The full table lists every issue of the file.
    const full = await runCli(['status', '--full', '--api', broken.apiUrl, '--key', broken.key]);
    expect(full.code).toBe(0);
    expect(full.stdout).toContain('settings.pollIntervalMs: expected a number, got "30s" (a string)');

    const health = await waitFor('a health report carrying the config source', () => {
      const c = cloud.admin.received(dev.uuid).health.config as ConfigView | null;
      return c?.source === 'last-known-good' ? c : undefined;
    }, 20_000);
    expect(health.fallback?.issues[0]).toMatchObject({ path: 'settings.pollIntervalMs', expected: 'a number' });

    const event = await waitFor('a config-fallback event', () =>
      cloud.admin.messages(dev.uuid).messages.find((m) => m.channel === 'events' && (m.payload as { type?: string }).type === 'config-fallback'),
    20_000);
    expect(event.payload).toMatchObject({ reason: 'invalid', issueCount: 1, issues: [{ path: 'settings.pollIntervalMs' }] });

    const page = (await broken.get('/')).body as string;
    expect(page).toContain('Config fallback');
    expect((await broken.stop()).code).toBe(0);

    // Fixed: the file is in force again, and the cloud is told so at once (not at the next outage).
    const fixed = await start(dataDir, config({ allowedCommands: ['/bin/true'] }));
    const after = (await fixed.get('/v2/config')).body as ConfigView;
    expect(after).toMatchObject({ source: 'file', fallback: null, config: { jobs: { allowedCommands: ['/bin/true'] } } });
    expect((await fixed.get('/metrics')).body).toMatch(/^iotistic_config_fallback\{reason="none"\} 0$/m);
    await waitFor('a health report saying the file is in force', () => (cloud.admin.received(dev.uuid).health.config as ConfigView | null)?.source === 'file', 20_000);
    await waitFor('a config-restored event', () =>
      cloud.admin.messages(dev.uuid).messages.some((m) => m.channel === 'events' && (m.payload as { type?: string }).type === 'config-restored'),
    20_000);
  });
});

/** `run --config FILE` with no --data-dir: the data dir comes from the file alone. Resolves with the API URL. */
async function runWithFileOnly(file: string): Promise<{ child: ChildProcess; apiUrl: string; stopped: Promise<number | null> }> {
  const child = spawn(process.execPath, [CLI, 'run', '--config', file], { env: { ...process.env, IOTISTIC_DATA_DIR: undefined }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const stopped = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  const apiUrl = await waitFor(`the agent to start (${file})`, () => {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}: ${out}`);
    return /"api":"(http:[^"]+)".*"msg":"agent started/.exec(out)?.[1];
  }, 30_000);
  return { child, apiUrl, stopped };
}

it('a file that is no longer JSON still names its data dir, so its last-known-good config is found there', async () => {
  const dataDir = dirs.make();
  const file = join(dataDir, 'agent.json');
  const cfg = { dataDir, api: { port: 0 }, logging: { format: 'json' }, jobs: { allowedCommands: ['/bin/echo'] } };
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  const first = await runWithFileOnly(file);
  first.child.kill('SIGTERM');
  expect(await first.stopped).toBe(0);

  // A trailing comma: the file is not JSON any more, and the data dir is named only in it.
  writeFileSync(file, JSON.stringify({ ...cfg, jobs: { allowedCommands: [] } }, null, 2).replace(/\n}$/, ',\n}'));
  const second = await runWithFileOnly(file);
  const key = localApiKey(dataDir, {});
  const res = await fetch(`${second.apiUrl}/v2/config`, { headers: { authorization: `Bearer ${key}` } });
  const view = (await res.json()) as ConfigView & { config: { dataDir: string } };
  expect(view.source).toBe('last-known-good');
  expect(view.fallback?.reason).toBe('not-json');
  expect(view.config.dataDir).toBe(dataDir);
  expect(view.config.jobs.allowedCommands).toEqual(['/bin/echo']);
  second.child.kill('SIGTERM');
  expect(await second.stopped).toBe(0);
});
