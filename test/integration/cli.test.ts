import { spawn } from 'node:child_process';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CLI, requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
const running: AgentProcess[] = [];
beforeAll(() => requireBuilt());
afterEach(async () => {
  for (const a of running.splice(0)) await a.stop('SIGKILL');
  dirs.cleanup();
});

async function start(opts: Parameters<typeof spawnAgent>[0]): Promise<AgentProcess> {
  const a = await spawnAgent(opts);
  running.push(a);
  return a;
}

describe('iotistic-agent run', () => {
  it('serves /v1/healthy and /v2/connection, and stops on SIGTERM with exit 0 within 5 s', async () => {
    const dataDir = dirs.make();
    const agent = await start({ dataDir });
    await waitFor('healthy', async () => (await fetch(`${agent.apiUrl}/v1/healthy`)).status === 200);

    const conn = await agent.get('/v2/connection');
    expect(conn.status).toBe(200);
    expect(conn.body).toMatchObject({ status: expect.stringMatching(/^(online|degraded|offline)$/), uptime: expect.any(Number), pollFailures: 0, reportFailures: 0, offlineSince: null });
    // This machine's own answer (timesyncd, timedatectl or the build date), or pending if asked before the first check.
    expect(conn.body).toMatchObject({ clockSynced: expect.any(Boolean), clock: { source: expect.stringMatching(/^(pending|timesyncd|timedatectl|plausibility)$/), detail: expect.any(String) } });

    // Everything but /ping and /v1/healthy needs the key.
    const anon = await fetch(`${agent.apiUrl}/v2/connection`);
    expect(anon.status).toBe(401);
    // The identity (with the key) and database are private to the agent.
    expect(statSync(join(dataDir, 'identity.json')).mode & 0o777).toBe(0o600);
    expect(statSync(join(dataDir, 'agent.db')).mode & 0o777).toBe(0o600);

    const stopped = await agent.stop('SIGTERM');
    expect(stopped.code).toBe(0);
    expect(stopped.ms).toBeLessThan(5_000);
    expect(agent.records().some((r) => r.msg === 'agent stopped')).toBe(true);
  });

  it('never writes secrets to its logs, even at debug level', async () => {
    const dataDir = dirs.make();
    const secret = 'device-secret-key-0123456789';
    const agent = await start({ dataDir, config: { device: { apiKey: secret }, cloud: { apiUrl: 'http://127.0.0.1:9' } } });
    await waitFor('a failed poll', () => agent.records().some((r) => String(r.msg).includes('connection')));
    await agent.stop();
    const all = JSON.stringify(agent.records()) + agent.stderr();
    expect(all).toContain('effective config');
    expect(all).not.toContain(secret);
    expect(all).not.toContain(agent.key);
  });

  it('exits non-zero naming the key when the config is bad and there is no last-known-good', async () => {
    const dataDir = dirs.make();
    const cfg = join(dataDir, 'bad.json');
    writeFileSync(cfg, JSON.stringify({ settings: { offline: { maxBackoffSeconds: 'forever' } } }));
    const r = await runCli(['run', '--config', cfg, '--data-dir', dataDir]);
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('settings.offline.maxBackoffSeconds: expected a number, got "forever"');
  });

  it('runs on the last-known-good config when the file later breaks', async () => {
    const dataDir = dirs.make();
    const first = await start({ dataDir, config: { settings: { pollIntervalMs: 7000 } } });
    expect((await first.stop()).code).toBe(0);

    const second = await start({ dataDir, config: { settings: { pollIntervalMs: 'often' } } });
    const err = second.records().find((r) => typeof r.msg === 'string' && r.msg.includes('running on the last-known-good config'));
    expect(String(err?.msg)).toContain('settings.pollIntervalMs: expected a number, got "often"');
    expect((await second.get('/v1/healthy')).status).toBe(200);
    expect((await second.stop()).code).toBe(0);
  });

  it('quarantines a garbage database file and keeps running', async () => {
    const dataDir = dirs.make();
    writeFileSync(join(dataDir, 'agent.db'), 'garbage, not SQLite '.repeat(500));
    const agent = await start({ dataDir });
    expect((await agent.get('/v1/healthy')).status).toBe(200);
    const err = agent.records().find((r) => r.level === 50 && typeof r.msg === 'string' && r.msg.includes('is corrupt'));
    expect(err?.file).toBe(join(dataDir, 'agent.db'));
    expect(readdirSync(dataDir).filter((f) => f.startsWith('agent.db.corrupt-'))).toHaveLength(1);
    expect((await agent.stop()).code).toBe(0);
  });
});

describe('iotistic-agent config check', () => {
  it('exits 0 for a good file', async () => {
    const cfg = join(dirs.make(), 'ok.json');
    writeFileSync(cfg, JSON.stringify({ cloud: { apiUrl: 'https://api.example.com' } }));
    const r = await runCli(['config', 'check', '--config', cfg]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('OK');
  });

  it('lists every error with its key path and expected type, exit 1', async () => {
    const cfg = join(dirs.make(), 'bad.json');
    writeFileSync(cfg, JSON.stringify({ api: { port: '48484' }, settings: { offline: { enableQueue: 1 } } }));
    const r = await runCli(['config', 'check', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('2 errors');
    expect(r.stderr).toContain('api.port: expected a number, got "48484" (a string)');
    expect(r.stderr).toContain('settings.offline.enableQueue: expected a boolean, got 1 (a number)');
  });
});

describe('iotistic-agent status', () => {
  it('prints a summary, the full table and JSON from a running agent; a wrong key says where the key came from', async () => {
    const dataDir = dirs.make();
    const agent = await start({ dataDir });
    const args = ['status', '--api', agent.apiUrl, '--data-dir', dataDir];
    const otherDir = dirs.make();
    writeFileSync(join(otherDir, 'identity.json'), JSON.stringify({ localApiKey: 'k'.repeat(32) }));
    // At once: each CLI run is a node start.
    const [summary, table, json, wrongKey, wrongDir] = await Promise.all([
      runCli(args),
      runCli([...args, '--full']),
      runCli([...args, '--json']),
      runCli([...args, '--key', 'not-the-key-at-all']),
      // Another agent's data dir: the key read from its identity.json is not this agent's.
      runCli(['status', '--api', agent.apiUrl, '--data-dir', otherDir]),
    ]);
    expect(summary.code, summary.stderr).toBe(0);
    const lines = summary.stdout.split('\n');
    expect(lines[0]).toMatch(/^Iotistic Agent \S+ {2}device [0-9a-f]{32} {2}up \d+s$/);
    expect(summary.stdout).toMatch(/^Connection {2}(online|degraded|offline)$/m);
    expect(summary.stdout).toMatch(/^Outbox {2}\d+ waiting, \d+ B/m);
    expect(summary.stdout).toMatch(/^Services {2}none$/m);
    expect(summary.stdout).toMatch(/^Ledger {2}balanced$/m);
    expect(summary.stdout).toMatch(new RegExp(`^Disk {2}ok: [\\d.]+ (B|KiB|MiB) free in ${dataDir}$`, 'm'));
    // Compact, and no colour into a pipe.
    expect(lines.length).toBeLessThan(15);
    expect(summary.stdout).not.toContain('\u001b[');

    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/Connection\n\s+status\s+\w+/);
    expect(table.stdout).toContain('Loops');
    expect(table.stdout).toMatch(/Outbox\s+\d+ waiting/);
    // No cloud here: jobs are off and say why; the shadow is on.
    expect(table.stdout).toContain('Jobs  off (there is no cloud.apiUrl to take jobs from)');
    expect(table.stdout).toMatch(/Shadow\n\s+reported version\s+0/);
    expect(JSON.parse(json.stdout)).toMatchObject({
      device: { uuid: expect.any(String) },
      connection: { status: expect.any(String) },
      jobs: { enabled: false },
      shadow: { reportedVersion: 0 },
    });
    expect(wrongKey.code).toBe(1);
    expect(wrongKey.stderr).toBe(`iotistic-agent: the agent at ${agent.apiUrl} refused the local API key (401): the key was read from --key; pass --key KEY, or --data-dir DIR of the agent\n`);
    expect(wrongDir.code).toBe(1);
    expect(wrongDir.stderr).toContain(`refused the local API key (401): the key was read from ${otherDir}/identity.json`);

    // The agent stopped: said so, with what to check, exit 1.
    expect((await agent.stop()).code).toBe(0);
    const stopped = await runCli(args);
    expect(stopped.code).toBe(1);
    expect(stopped.stderr).toBe(`iotistic-agent: no agent answers at ${agent.apiUrl} (connection refused, ECONNREFUSED): is it running? (systemctl status iotistic-agent) Is the address right? (--api, or the config's api section)\n`);
    expect(stopped.stdout).toBe('');
  });
});

describe('iotistic-agent logs', () => {
  it('prints a workload\'s lines, as text or NDJSON, follows them until SIGTERM, and says what the API refused (exit 2)', async () => {
    const dataDir = dirs.make();
    const agent = await start({ dataDir });
    const script = 'echo "hello from talker"; echo "<b>second</b> line" >&2; sleep 1; echo "a later line"; exec sleep 3600';
    const posted = await agent.send('POST', '/v2/local/target-state', { version: 1, apps: { demo: { services: { talker: { runtime: 'process', command: ['/bin/sh', '-c', script] } } } } });
    expect(posted.status).toBe(200);
    const args = ['--api', agent.apiUrl, '--data-dir', dataDir];
    // Following from the start: the lines come as the process prints them.
    const follower = spawn(process.execPath, [CLI, 'logs', 'talker', '-f', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let followed = '';
    follower.stdout.on('data', (c: Buffer) => (followed += c.toString('utf8')));
    const followerExit = new Promise<number | null>((resolve) => follower.once('exit', (code) => resolve(code)));

    await waitFor('the lines in the tail', async () => ((await agent.get('/v2/logs?service=demo/talker')).body as { lines: unknown[] }).lines.length >= 2, 10_000);
    const text = await runCli(['logs', 'talker', ...args]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z demo\/talker stdout hello from talker\n/);
    expect(text.stdout).toContain(' demo/talker stderr <b>second</b> line\n');
    const json = await runCli(['logs', 'demo/talker', '--json', '-n', '1', '--since', '10m', ...args]);
    expect(json.code, json.stderr).toBe(0);
    const last = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(last).toHaveLength(1);
    expect(last[0]).toMatchObject({ service: 'demo/talker', seq: expect.any(Number), ts: expect.any(Number), stream: expect.stringMatching(/^std(out|err)$/) });

    await waitFor('the later line followed', () => followed.includes(' demo/talker stdout a later line\n'), 10_000);
    expect(followed).toContain(' demo/talker stdout hello from talker\n');
    follower.kill('SIGTERM');
    expect(await followerExit).toBe(0);

    const bad = await runCli(['logs', 'nosuch', ...args]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^iotistic-agent: service: no service named "nosuch" has logs here \(services with logs: (agent, )?demo\/talker\); expected <app>\/<service>, a service name or "agent"\n$/);
    const since = await runCli(['logs', '--since', 'yesterday', ...args]);
    expect(since.code).toBe(2);
    expect(since.stderr).toContain('iotistic-agent: since: expected epoch milliseconds, an ISO time (2026-01-02T03:04:05Z) or a duration ago (30s, 10m, 2h, 1d), got "yesterday"');

    // A follower whose agent stops is told so (exit 1).
    const orphan = spawn(process.execPath, [CLI, 'logs', '-f', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let orphanOut = '';
    let orphanErr = '';
    orphan.stdout.on('data', (c: Buffer) => (orphanOut += c.toString('utf8')));
    orphan.stderr.on('data', (c: Buffer) => (orphanErr += c.toString('utf8')));
    const orphanExit = new Promise<number | null>((resolve) => orphan.once('exit', (code) => resolve(code)));
    await waitFor('the follower\'s tail', () => orphanOut.includes('"a later line"'), 10_000);
    expect((await agent.stop()).code).toBe(0);
    expect(await orphanExit).toBe(1);
    expect(orphanErr).toContain(`iotistic-agent: the agent at ${agent.apiUrl} ended the log stream (it stopped?)`);
  }, 30_000);
});
