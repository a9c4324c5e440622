import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fillDisk } from '../../bench/chaos/disk.js';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The built agent started on a data dir whose filesystem is full (a 16 MiB tmpfs, filled to the
 * last byte while the agent was down), after a kill -9 and after a clean stop: it starts, serves
 * its API and /v1/healthy, keeps its workload running, answers producers 507 naming the data dir
 * and the free bytes, says "disk full" (API, status, metrics), delivers its queue when the cloud
 * lets it, and accepts again by itself once space is freed. Mounting needs root: without it this
 * test fails, saying so.
 */

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const dirs = tempDirs();
const mounts: string[] = [];
let cloud: DevCloud | undefined;
const agents: AgentProcess[] = [];

afterAll(async () => {
  for (const a of agents) await a.stop('SIGKILL');
  await cloud?.close();
  for (const m of mounts) execFileSync('umount', [m]);
  dirs.cleanup();
});

function mountTmpfs(size: string): string {
  if (!isRoot) throw new Error(`disk-full-start.test.ts needs root to mount a tmpfs; running as uid ${process.getuid?.()}. Run the tests as root (CI does).`);
  const mnt = dirs.make('iotistic-fullstart-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', mnt]);
  mounts.push(mnt);
  return mnt;
}

type QueueView = { depth: number; dataDisk: { state: string; freeBytes: number; dataDir: string; reserve: { present: boolean } } };
type StateView = { current: { apps: Record<string, { services: Record<string, { status: string }> }> } };

let accepted = 0;
async function postTelemetry(a: AgentProcess, bytes: number): Promise<{ status: number; body: { message?: string } }> {
  const r = await a.send('POST', '/v2/telemetry', { stream: 'fill', payload: { blob: randomBytes(bytes).toString('base64') } });
  if (r.status === 202) accepted++;
  return r as { status: number; body: { message?: string } };
}

describe('a start on a full disk', () => {
  it('starts after a kill -9 and a clean stop, says disk full, answers 507, drains, and recovers alone', { timeout: 90_000 }, async () => {
    const mnt = mountTmpfs('16m');
    const dataDir = join(mnt, 'data');
    mkdirSync(dataDir, { mode: 0o700 });
    cloud = await startDevCloud();
    const dev = { uuid: `fullstart-${process.pid}`, apiKey: 'fullstart-key-0123456789' };
    cloud.admin.createDevice(dev);
    cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    await cloud.admin.setFaults({ refuse: true });
    const config = {
      device: dev,
      cloud: { apiUrl: cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      // No watermark: producers write until the filesystem itself says ENOSPC.
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 60_000, offline: { minFreeDiskBytes: 0, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
    };
    const start = async (): Promise<AgentProcess> => {
      const a = await spawnAgent({ dataDir, config });
      agents.push(a);
      return a;
    };

    // A running device with a workload and a queue (the cloud refuses, so it stays queued).
    let a = await start();
    expect((await a.send('POST', '/v2/local/target-state', { version: 1, apps: { keep: { services: { napper: { runtime: 'process', command: ['/bin/sleep', '3600'] } } } } })).status).toBe(200);
    for (let i = 0; i < 20; i++) expect((await postTelemetry(a, 256)).status).toBe(202);
    expect(existsSync(join(dataDir, 'disk-reserve'))).toBe(true);
    await a.stop('SIGKILL');
    const filler = fillDisk(mnt);

    const checkFull = async (agent: AgentProcess): Promise<void> => {
      expect((await fetch(`${agent.apiUrl}/v1/healthy`)).status).toBe(200);
      await waitFor('the workload running', async () => ((await agent.get('/v2/state')).body as StateView).current.apps.keep?.services.napper?.status === 'running');
      // Producers fill what the start freed, then get 507 naming the data dir and what is free.
      let refused: { status: number; body: { message?: string } } | undefined;
      for (let i = 0; i < 400 && !refused; i++) {
        const r = await postTelemetry(agent, 48 * 1024);
        if (r.status !== 202) refused = r;
      }
      expect(refused?.status).toBe(507);
      expect(refused?.body.message).toContain(dataDir);
      expect(refused?.body.message).toMatch(/is full \(\d+(\.\d)? (bytes|B|KiB|MiB) free/);
      const q = await waitFor('disk full in /v2/queue', async () => {
        const v = (await agent.get('/v2/queue')).body as QueueView;
        return v.dataDisk.state === 'full' ? v : undefined;
      });
      expect(q.dataDisk.dataDir).toBe(dataDir);
      const metrics = await fetch(`${agent.apiUrl}/metrics`, { headers: { authorization: `Bearer ${agent.key}` } });
      expect(await metrics.text()).toMatch(/iotistic_disk_state\{state="full"\} 1/);
      const status = await runCli(['status', '--data-dir', dataDir, '--api', agent.apiUrl]);
      expect(status.stdout).toContain('disk full');
    };

    // After a kill -9, on a full disk.
    a = await start();
    await checkFull(a);
    // After a clean stop, on a full disk.
    const stopped = await a.stop('SIGTERM');
    expect(stopped.code, a.stderr() + JSON.stringify(a.records().slice(-4))).toBe(0);
    a = await start();
    await checkFull(a);

    // The way opens: the queue goes to the cloud, full disk or not.
    expect(((await a.get('/v2/queue')).body as QueueView).depth).toBeGreaterThanOrEqual(accepted);
    await cloud.admin.clearFaults();
    await waitFor('the queue delivered', async () => ((await a.get('/v2/queue')).body as QueueView).depth === 0, 40_000);
    expect(cloud.admin.received(dev.uuid).messages.unique).toBeGreaterThanOrEqual(accepted);

    // Space returns: accepted again with no restart, the state clears and the reserve comes back.
    await cloud.admin.setFaults({ refuse: true });
    rmSync(filler);
    await waitFor('telemetry accepted again', async () => (await postTelemetry(a, 256)).status === 202);
    const back = await waitFor('the disk no longer full', async () => {
      const v = (await a.get('/v2/queue')).body as QueueView;
      return v.dataDisk.state !== 'full' && v.dataDisk.reserve.present ? v : undefined;
    }, 20_000);
    expect(back.dataDisk.freeBytes).toBeGreaterThan(4 * 1_048_576);
    expect(existsSync(join(dataDir, 'disk-reserve'))).toBe(true);
  });

  it('starts after a clean stop on a disk with not one byte free and no reserve, and runs its workload', { timeout: 30_000 }, async () => {
    const mnt = mountTmpfs('8m');
    const dataDir = join(mnt, 'data');
    mkdirSync(dataDir, { mode: 0o700 });
    const config = { features: { metrics: false }, store: { diskReserveBytes: 0 } };
    let a = await spawnAgent({ dataDir, config });
    agents.push(a);
    const uuid = ((await a.get('/v2/device')).body as { uuid: string }).uuid;
    expect((await a.send('POST', '/v2/local/target-state', { version: 1, apps: { keep: { services: { napper: { runtime: 'process', command: ['/bin/sleep', '3600'] } } } } })).status).toBe(200);
    expect((await a.stop('SIGTERM')).code).toBe(0);
    fillDisk(mnt);
    a = await spawnAgent({ dataDir, config });
    agents.push(a);
    expect((await fetch(`${a.apiUrl}/v1/healthy`)).status).toBe(200);
    expect(((await a.get('/v2/device')).body as { uuid: string }).uuid).toBe(uuid);
    await waitFor('the workload running', async () => ((await a.get('/v2/state')).body as StateView).current.apps.keep?.services.napper?.status === 'running');
    expect(((await a.get('/v2/queue')).body as QueueView).dataDisk.state).toBe('full');
    const r = await postTelemetry(a, 64);
    expect(r.status).toBe(507);
    expect(r.body.message).toContain(dataDir);
    expect((await a.stop('SIGTERM')).code).toBe(0);
  });
});
