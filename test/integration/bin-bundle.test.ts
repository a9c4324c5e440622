import { connectAsync } from 'mqtt';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The bin as installed: `iotistic-agent` is the bundle of scripts/bundle.ts (the agent and its pure-JS
 * dependencies in minified chunks), started by its sh launcher line. The rest of the suite runs the
 * unbundled `node dist/src/cli.js`; this checks that the bundle is the same agent in the parts that
 * load code lazily or locate files at run time: the lazily imported agent and local broker, the
 * checkpoint worker and the integrity check (both load better-sqlite3 by path), pino, the version.
 */

const dirs = tempDirs();
const running: AgentProcess[] = [];
afterEach(async () => {
  for (const a of running.splice(0)) await a.stop('SIGKILL');
  dirs.cleanup();
});

describe('the bin (the bundle)', () => {
  it('is what package.json names, and prints the version of package.json', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> };
    expect(join(ROOT, pkg.bin['iotistic-agent'] ?? '')).toBe(BIN);
    const r = spawnSync('/bin/sh', [BIN, '--version'], { encoding: 'utf8' });
    expect(r.stdout.trim()).toBe(pkg.version);
    expect(readFileSync(BIN, 'utf8').split('\n', 2)[1]).toMatch(/^\/\/bin\/sh -c :; .*exec node /);
  });

  it('runs a whole agent: queues telemetry durably from the API and the local broker, checks its database, and keeps the queue across a restart', async () => {
    const dataDir = dirs.make();
    const config = { features: { metrics: false, localBroker: true }, localBroker: { port: 0 }, logging: { level: 'info', format: 'json' } };
    const agent = await spawnAgent({ dataDir, config, bin: true, timeoutMs: 60_000 });
    running.push(agent);
    const started = await waitFor('the local broker', () => agent.records().find((r) => r.msg === 'local MQTT broker listening for local apps'), 60_000);
    expect((await agent.send('POST', '/v2/telemetry', { stream: 'flow', payload: { lpm: 1 } })).status).toBe(202);
    const local = await connectAsync(`mqtt://127.0.0.1:${String(started.port)}`, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000 });
    try {
      await local.publishAsync('local/telemetry/flow', JSON.stringify({ lpm: 2 }), { qos: 1 });
    } finally {
      local.end(true);
    }
    const depth = async (): Promise<number> => ((await agent.get('/v2/queue')).body as { channels: Record<string, { depth: number }> }).channels.telemetry?.depth ?? 0;
    expect(await depth()).toBe(2);
    // The integrity check (a child process) and the checkpoint worker load better-sqlite3 by path.
    await waitFor('the integrity check', async () => ((await agent.get('/v2/state')).body as { database?: { integrity?: { state?: string } } }).database?.integrity?.state === 'ok', 60_000);
    expect(agent.records().some((r) => r.msg === 'database integrity check passed')).toBe(true);
    expect((await agent.stop('SIGKILL')).signal).toBe('SIGKILL');

    const again = await spawnAgent({ dataDir, config, bin: true, timeoutMs: 60_000 });
    running.push(again);
    expect(((await again.get('/v1/healthy')).status)).toBe(200);
    const after = ((await again.get('/v2/queue')).body as { channels: Record<string, { depth: number }> }).channels.telemetry?.depth;
    expect(after).toBe(2);
    expect(again.stderr()).toBe('');
  });
});
