import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statfsSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Issue 21, fault 2, at the disk watermark: the built agent on a 48 MiB tmpfs, the uplink down. Once
 * free space falls under minFreeDiskBytes, new telemetry is refused with a 507 that names the data
 * dir and the free bytes (by default, nothing queued is dropped to make room), and accepted again by
 * itself once space returns. Mounting needs root: without it this test fails, saying so.
 */

const MiB = 1_048_576;
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const dirs = tempDirs();
let mnt = '';
let mounted = false;
let cloud: DevCloud;
let agent: AgentProcess | undefined;

beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
  if (!isRoot) return;
  mnt = dirs.make('iotistic-limits-tmpfs-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m,mode=0700', 'tmpfs', mnt]);
  mounted = true;
});

afterAll(async () => {
  await agent?.stop('SIGKILL');
  await cloud.close();
  if (mounted) execFileSync('umount', [mnt]);
  dirs.cleanup();
});

const free = (dir: string): number => {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
};

describe('the disk watermark on the built agent', () => {
  it('refuses new telemetry with 507 naming the data dir and free bytes, drops nothing, and accepts again once space returns', { timeout: 60_000 }, async () => {
    if (!isRoot) throw new Error(`outbox-limits-disk.test.ts needs root to mount a tmpfs; running as uid ${process.getuid?.()}`);
    const dev = { uuid: `limits-disk-${process.pid}`, apiKey: 'limits-disk-key-0123456789' };
    cloud.admin.createDevice(dev);
    cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
    await cloud.admin.setFaults({ refuse: true });
    const watermark = 16 * MiB;
    agent = await spawnAgent({
      dataDir: mnt,
      config: {
        device: dev,
        cloud: { apiUrl: cloud.url, requestTimeoutMs: 2_000 },
        features: { metrics: false },
        settings: { pollIntervalMs: 60_000, offline: { minFreeDiskBytes: watermark, minBackoffSeconds: 0.2, maxBackoffSeconds: 1 } },
      },
    });
    const a = agent;
    const post = async (i: number) =>
      (await a.send('POST', '/v2/telemetry', { stream: 'disk', payload: { i, pad: randomBytes(512).toString('base64') } })) as {
        status: number;
        body: { ids?: string[]; error?: string; message?: string; dataDir?: string; freeBytes?: number; minFreeBytes?: number };
      };
    const accepted: string[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await post(i);
      expect(r.status).toBe(202);
      accepted.push(...(r.body.ids ?? []));
    }

    // Another process takes the space: free falls under the watermark (but the disk is not full).
    const filler = join(mnt, 'filler');
    writeFileSync(filler, Buffer.alloc(Math.max(0, free(mnt) - (watermark - 4 * MiB))));
    expect(free(mnt)).toBeLessThan(watermark);
    let i = 100;
    const refused = await waitFor('a 507 below the watermark', async () => {
      const r = await post(i++);
      if (r.status === 202) accepted.push(...(r.body.ids ?? []));
      return r.status === 507 ? r : undefined;
    }, 20_000, 200);
    expect(refused.body).toMatchObject({ error: 'OUTBOX_DISK_LOW', dataDir: mnt, minFreeBytes: watermark });
    expect(refused.body.freeBytes).toBeLessThan(watermark);
    expect(refused.body.message).toContain(mnt);
    expect(refused.body.message).toMatch(/MiB free for the data dir .*\(settings\.offline\.minFreeDiskBytes\)/);
    const q = (await a.get('/v2/queue')).body as { dropped: number; channels: Record<string, { depth: number; drops: Record<string, number> }>; disk: { low: boolean } };
    expect(q.disk.low).toBe(true);
    expect(q.dropped).toBe(0);
    expect(q.channels.telemetry?.depth).toBe(accepted.length);

    // Space returns: accepted again without a restart; then everything accepted reaches the cloud.
    rmSync(filler);
    await waitFor('a 202 again', async () => (await post(i++)).status === 202, 20_000, 200);
    await cloud.admin.clearFaults();
    await waitFor('every accepted message at the devcloud', () => {
      const ids = new Set(cloud.admin.messages(dev.uuid, { limit: 1000 }).messages.map((m) => m.id));
      return accepted.every((id) => ids.has(id));
    }, 30_000, 250);
  });
});
