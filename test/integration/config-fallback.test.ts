import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

// A config edit that breaks the file while a last-known-good copy exists: the agent keeps running on
// the old config, and every place an operator or the cloud looks says so, with the reasons.
const dirs = tempDirs();
let cloud: DevCloud;
const agents: AgentProcess[] = [];
beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
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
    expect(status.stdout).toContain('settings.pollIntervalMs: expected a number, got "30s" (a string)');

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
  });
});
