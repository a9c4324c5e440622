import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CLI, requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The data dir on the built agent: one agent per dir (a lock the kernel drops with the process),
 * no trust in files others could have written, and an identity that outlives the database.
 */

const dirs = tempDirs();
const agents: AgentProcess[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
});
afterAll(() => dirs.cleanup());

async function start(dataDir: string, config: Record<string, unknown> = {}): Promise<AgentProcess> {
  const a = await spawnAgent({ dataDir, config: { features: { metrics: false }, ...config } });
  agents.push(a);
  return a;
}

/** Runs `iotistic-agent run` to its exit (a second agent that must refuse to start). */
function runToExit(dataDir: string, timeoutMs = 20_000): Promise<{ code: number | null; stderr: string }> {
  requireBuilt();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'run', '--config', join(dataDir, 'config.json'), '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.stdout.resume();
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the second agent did not exit within ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`);

async function servicePid(dataDir: string): Promise<number> {
  const log = join(dataDir, 'services', 'apps', 'lock', 'napper', 'output.log');
  return waitFor('the process workload to start', () => {
    const m = existsSync(log) ? /as pid (\d+)/.exec(readFileSync(log, 'utf8')) : null;
    return m ? Number(m[1]) : undefined;
  });
}

describe('one agent per data dir', () => {
  it('refuses a second agent, naming the holder, and starts at once after a kill -9 of the first', { timeout: 60_000 }, async () => {
    const dataDir = dirs.make();
    const first = await start(dataDir);
    const set = await first.send('POST', '/v2/local/target-state', { version: 1, apps: { lock: { services: { napper: { runtime: 'process', command: ['/bin/sleep', '3600'] } } } } });
    expect(set.status).toBe(200);
    const pid = await servicePid(dataDir);
    expect(alive(pid)).toBe(true);

    const second = await runToExit(dataDir);
    expect(second.code).not.toBe(0);
    expect(second.code).not.toBe(78);
    expect(second.stderr).toContain(`another agent is running on the data dir ${dataDir} (pid ${first.child.pid}`);
    // The first agent and its workload carry on untouched.
    expect(alive(pid)).toBe(true);
    expect((await first.get('/v2/device')).status).toBe(200);
    const state = (await first.get('/v2/state')).body as { current: { apps: Record<string, { services: Record<string, { status: string }> }> } };
    expect(state.current.apps.lock?.services.napper?.status).toBe('running');

    // The kernel drops the lock with the process: a new start works at once.
    await first.stop('SIGKILL');
    const t0 = Date.now();
    const next = await start(dataDir);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect((await next.get('/v2/device')).status).toBe(200);
    expect(readFileSync(join(dataDir, 'agent.lock.pid'), 'utf8').trim()).toBe(String(next.child.pid));
  });
});

describe('files others can write', () => {
  it('repairs a 0777 data dir and never takes a key, identity or database planted by another user', { timeout: 30_000 }, async () => {
    expect(process.getuid?.(), 'this test needs root to chown a file to another uid').toBe(0);
    const dataDir = dirs.make();
    chmodSync(dataDir, 0o777);
    const planted = 'planted-by-nobody-0123456789abcdef';
    for (const [file, text] of [
      ['local-api.key', `${planted}\n`],
      ['identity.json', JSON.stringify({ uuid: 'ab'.repeat(16), localApiKey: planted })],
      ['agent.db', 'a database someone else wrote'],
    ] as const) {
      writeFileSync(join(dataDir, file), text);
      chownSync(join(dataDir, file), 65534, 65534);
      chmodSync(join(dataDir, file), 0o666);
    }
    const a = await start(dataDir);
    expect(a.key).not.toBe(planted);
    const withPlanted = await fetch(`${a.apiUrl}/v2/device`, { headers: { authorization: `Bearer ${planted}` } });
    expect(withPlanted.status).toBe(401);
    expect((await a.get('/v2/device')).status).toBe(200);
    expect((await a.get('/v2/device')).body).not.toMatchObject({ uuid: 'ab'.repeat(16) });
    expect(statSync(dataDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dataDir, 'identity.json')).mode & 0o777).toBe(0o600);
    const aside = readdirSync(dataDir).filter((f) => f.includes('.untrusted-'));
    expect(aside.sort().map((f) => f.replace(/\.untrusted-.*/, ''))).toEqual(['agent.db', 'identity.json', 'local-api.key']);
    expect(a.records().some((r) => String(r.msg).startsWith('not trusting local-api.key'))).toBe(true);
    expect(a.records().some((r) => String(r.msg).includes('had mode 0777'))).toBe(true);
  });

  it('refuses a data dir writable by others that belongs to another user', { timeout: 30_000 }, async () => {
    const dataDir = dirs.make();
    writeFileSync(join(dataDir, 'config.json'), JSON.stringify({ api: { port: 0 } }));
    chownSync(dataDir, 65534, 65534);
    chmodSync(dataDir, 0o777);
    const r = await runToExit(dataDir);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/data dir .* has mode 0777 and belongs to uid 65534/);
    expect(existsSync(join(dataDir, 'agent.db'))).toBe(false);
  });
});

describe('identity outlives the database', () => {
  it('keeps the uuid and key when agent.db is deleted or garbage, and upgrades an old data dir', { timeout: 120_000 }, async () => {
    const dataDir = dirs.make();
    let a = await start(dataDir);
    const uuid = ((await a.get('/v2/device')).body as { uuid: string }).uuid;
    const key = a.key;
    await a.stop('SIGTERM');

    writeFileSync(join(dataDir, 'agent.db'), 'not a database '.repeat(400));
    a = await start(dataDir);
    expect(((await a.get('/v2/device')).body as { uuid: string }).uuid).toBe(uuid);
    expect(a.key).toBe(key);
    await a.stop('SIGKILL');

    for (const f of readdirSync(dataDir)) if (f.startsWith('agent.db')) rmSync(join(dataDir, f));
    a = await start(dataDir);
    expect(((await a.get('/v2/device')).body as { uuid: string }).uuid).toBe(uuid);
    expect(a.key).toBe(key);
    // The identity is read, not rewritten, at a start that finds it whole.
    const before = statSync(join(dataDir, 'identity.json')).mtimeMs;
    await a.stop('SIGTERM');
    a = await start(dataDir);
    expect(statSync(join(dataDir, 'identity.json')).mtimeMs).toBe(before);
    await a.stop('SIGTERM');

    // An older agent's data dir: the uuid in the database's kv table, the key in local-api.key.
    const oldUuid = 'cd'.repeat(16);
    const oldKey = 'old-agent-key-0123456789abcdef';
    const db = new Database(join(dataDir, 'agent.db'));
    db.prepare("INSERT INTO kv (key, value, updated_at) VALUES ('device.uuid', ?, 0) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(JSON.stringify(oldUuid));
    db.close();
    rmSync(join(dataDir, 'identity.json'));
    writeFileSync(join(dataDir, 'local-api.key'), `${oldKey}\n`, { mode: 0o600 });
    a = await start(dataDir);
    expect(((await a.get('/v2/device')).body as { uuid: string }).uuid).toBe(oldUuid);
    expect(a.key).toBe(oldKey);
    expect(JSON.parse(readFileSync(join(dataDir, 'identity.json'), 'utf8'))).toEqual({ uuid: oldUuid, localApiKey: oldKey });
  });
});
