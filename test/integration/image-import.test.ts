import { createWriteStream, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startDevCloud } from '../../devcloud/server.js';
import { requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { startEngine, startRegistry, type TestEngine, type TestRegistry } from '../helpers/docker.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Air-gapped updates through the whole agent: an image the target names sits in a registry the
 * device cannot reach (stopped); /v2/state lists it missing; a `docker save` archive of it, imported
 * with the CLI, makes the service run. A wrong sha256, a body that is no archive, one over the
 * size limit and a kill mid-import leave nothing behind.
 */

const RUN = ['/bin/sh', '-c', 'trap "exit 0" TERM; sleep 1000 & wait'];

const dirs = tempDirs();
let engine: TestEngine;
let reg: TestRegistry;
let REF: string;
let archive: string;
const agents: AgentProcess[] = [];

beforeAll(async () => {
  requireBuilt();
  engine = await startEngine();
  reg = await startRegistry();
  await engine.buildImage(`local/imp-${process.pid}:1`, 'imported');
  REF = await reg.push(engine.docker, `local/imp-${process.pid}:1`, `imp-app-${process.pid}:1`);
  // The archive of the registry's image, as an operator makes it on a connected machine.
  const pulled = (await engine.docker.pull(REF)) as Readable;
  await new Promise<void>((resolve, reject) => engine.docker.modem.followProgress(pulled, (err: Error | null) => (err ? reject(err) : resolve())));
  archive = join(dirs.make(), 'app.tar');
  await pipeline((await engine.docker.getImage(REF).get()) as unknown as Readable, createWriteStream(archive));
  await engine.docker.getImage(REF).remove();
  await engine.docker.getImage(`local/imp-${process.pid}:1`).remove();
  // The device never sees a registry.
  await reg.stop();
}, 180_000);
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
});
afterAll(async () => {
  await reg?.destroy();
  await engine?.stop();
  dirs.cleanup();
}, 120_000);

interface StateView {
  current: { apps: Record<string, { services: Record<string, { status: string; lastError: string | null; startedAt: number | null }> }> };
  missingImages: { image: string; services: string[]; lastError: string | null; nextRetryAt: number | null }[];
}

async function agent(workloads: Record<string, unknown> = {}, dataDir = dirs.make(), dockerHost = engine.host, more: Record<string, unknown> = {}): Promise<AgentProcess> {
  const a = await spawnAgent({ dataDir, env: { DOCKER_HOST: dockerHost }, config: { workloads, settings: { reconciliationIntervalMs: 2_000 }, ...more } });
  agents.push(a);
  return a;
}

/** POSTs `chunks` to the import route; with `hold`, the last one is sent once it resolves. */
function post(a: AgentProcess, path: string, chunks: Buffer[], opts: { length?: number; hold?: Promise<void> } = {}): Promise<{ status: number; body: { error?: string; message?: string; loaded?: string[] } }> {
  return new Promise((resolve, reject) => {
    const req = request(`${a.apiUrl}${path}`, { method: 'POST', headers: { authorization: `Bearer ${a.key}`, 'content-type': 'application/x-tar', 'content-length': String(opts.length ?? chunks.reduce((n, c) => n + c.length, 0)) } });
    req.on('response', (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as { error?: string; message?: string } }));
    });
    req.on('error', reject);
    void (async () => {
      // With `hold`, the last chunk waits for it.
      const last = opts.hold ? chunks.length - 1 : chunks.length;
      for (const c of chunks.slice(0, last)) req.write(c);
      if (opts.hold) await opts.hold;
      for (const c of chunks.slice(last)) req.write(c);
      req.end();
    })();
  });
}

const importDir = (a: AgentProcess) => join(a.dataDir, 'image-import');
const tempFiles = (a: AgentProcess) => (existsSync(importDir(a)) ? readdirSync(importDir(a)) : []);

describe('air-gapped image import', () => {
  it('an image imported from a tarball runs with the registry stopped; a wrong sha256 loads nothing', async () => {
    // A long interval: only the import's kick (or the pull retry falling due) makes a pass.
    const a = await agent({}, dirs.make(), engine.host, { settings: { reconciliationIntervalMs: 120_000 } });
    const app = `imp${process.pid}`;
    const applied = await a.send('POST', '/v2/local/target-state', { version: 1, apps: { [app]: { services: { web: { image: REF, command: RUN } } } } });
    expect(applied.status).toBe(200);

    // The pull fails (no registry): /v2/state names the image, the service waiting for it and why.
    const missing = await waitFor('the image listed missing', async () => ((await a.get('/v2/state')).body as StateView).missingImages.find((m) => m.image === REF), 60_000);
    expect(missing.services).toEqual([`${app}/web`]);
    expect(missing.lastError).toMatch(/pull|connect|refused/i);

    // A wrong sha256: refused, nothing loaded, no temp file left.
    const wrong = await post(a, `/v2/images/import?sha256=${'0'.repeat(64)}`, [readFileSync(archive)]);
    expect(wrong.status).toBe(400);
    expect(wrong.body.error).toBe('digest_mismatch');
    expect(wrong.body.message).toContain('0'.repeat(64));
    await expect(engine.docker.getImage(REF).inspect()).rejects.toMatchObject({ statusCode: 404 });
    expect(tempFiles(a)).toEqual([]);

    // The CLI, with the right sha256: loaded, and the service runs without waiting out the pull backoff
    // (imported while the next pull is at least 15 s away, it starts before that pull was due: the pull
    // backoff, 5-10 s then doubling, leaves that much by its third wait; 4 s failed once on a loaded machine).
    const backoff = await waitFor('a pull backoff with time to spare', async () => ((await a.get('/v2/state')).body as StateView).missingImages.find((m) => m.image === REF && m.nextRetryAt !== null && m.nextRetryAt > Date.now() + 15_000), 150_000);
    const sha = createHash('sha256').update(readFileSync(archive)).digest('hex');
    const cli = await runCli(['images', 'import', archive, '--sha256', sha, '--api', a.apiUrl, '--key', a.key]);
    expect(cli.stderr).not.toMatch(/refused/);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain(`loaded ${REF}`);
    expect(cli.stdout).toContain(sha);
    await waitFor('the service running', async () => ((await a.get('/v2/state')).body as StateView).current.apps[app]?.services.web?.status === 'running', 60_000);
    const after = (await a.get('/v2/state')).body as StateView;
    expect(after.missingImages).toEqual([]);
    expect(after.current.apps[app]?.services.web?.startedAt).toBeLessThan(backoff.nextRetryAt!);
    const [c] = await engine.docker.listContainers({ filters: { label: [`io.iotistic.app=${app}`] } });
    expect(c).toMatchObject({ State: 'running', Image: REF });
    expect(tempFiles(a)).toEqual([]);
    expect(a.records().some((r) => String(r.msg).startsWith(`imported 1 image(s) from an archive: ${REF}`))).toBe(true);

    const ls = await runCli(['images', 'ls', '--json', '--api', a.apiUrl, '--key', a.key]);
    expect(ls.code).toBe(0);
    const listed = JSON.parse(ls.stdout) as { images: { image: string; present: boolean; sizeBytes: number; services: string[] }[] };
    expect(listed.images).toEqual([expect.objectContaining({ image: REF, present: true, services: [`${app}/web`] })]);
    expect(listed.images[0]!.sizeBytes).toBeGreaterThan(0);
  }, 300_000);

  it('a body that is no archive is a 400; one over the size limit a 413 with no temp file left; one import at a time', async () => {
    const a = await agent({ maxImageImportBytes: 1_048_576 });
    const notTar = await post(a, '/v2/images/import', [Buffer.from('this is not a tar archive at all\n'.repeat(40))]);
    expect(notTar.status).toBe(400);
    expect(notTar.body.message).toContain('not a tar archive');

    const big = await post(a, '/v2/images/import', [Buffer.alloc(3 * 1_048_576)]);
    expect(big.status).toBe(413);
    expect(big.body.message).toContain('workloads.maxImageImportBytes (1048576 bytes)');
    // Without a length, the limit is found while it streams.
    const streamed = await new Promise<number>((resolve, reject) => {
      const req = request(`${a.apiUrl}/v2/images/import`, { method: 'POST', headers: { authorization: `Bearer ${a.key}`, 'transfer-encoding': 'chunked' } });
      req.on('response', (res) => (res.resume(), resolve(res.statusCode ?? 0)));
      req.on('error', reject);
      for (let i = 0; i < 24; i++) req.write(Buffer.alloc(131_072));
      req.end();
    });
    expect(streamed).toBe(413);
    expect(tempFiles(a)).toEqual([]);

    // A slow upload holds the importer: a second one is refused with 409.
    let release!: () => void;
    const hold = new Promise<void>((r) => (release = r));
    const slow = post(a, '/v2/images/import', [Buffer.alloc(1_024), Buffer.alloc(1_024)], { hold });
    await waitFor('the first import spooling', () => tempFiles(a).length === 1);
    const second = await post(a, '/v2/images/import', [Buffer.alloc(10)]);
    expect(second.status).toBe(409);
    release();
    expect((await slow).status).toBe(400);
  }, 120_000);

  it('a gzip\'d archive loads as it is; without an engine the import is a 503 and nothing is spooled', async () => {
    const cloud = await startDevCloud();
    onTestFinished(() => cloud.close());
    const dev = { uuid: `imp-gz-${process.pid}`, apiKey: `imp-gz-${process.pid}-key-0123456789` };
    cloud.admin.createDevice(dev);
    const a = await agent({}, dirs.make(), engine.host, { device: dev, cloud: { apiUrl: cloud.url } });
    const gz = gzipSync(readFileSync(archive));
    const sha256 = createHash('sha256').update(gz).digest('hex');
    const ok = await post(a, '/v2/images/import', [gz.subarray(0, 1000), gz.subarray(1000)], { hold: Promise.resolve() });
    expect(ok.status).toBe(200);
    expect(ok.body).toEqual({ loaded: [REF], bytes: gz.length, sha256 });
    // The import is an event the cloud hears of (the outbox's events channel).
    const event = await waitFor('the event at the cloud', () => cloud.admin.messages(dev.uuid, { limit: 1000 }).messages.find((m) => m.channel === 'events' && (m.payload as { type?: string }).type === 'image-imported'), 30_000);
    expect(event.payload).toMatchObject({ images: [REF], sha256, bytes: gz.length });

    const none = await agent({}, dirs.make(), `unix://${join(dirs.make(), 'no-docker.sock')}`);
    const refused = await post(none, '/v2/images/import', [readFileSync(archive)]);
    expect(refused.status).toBe(503);
    expect(refused.body.error).toBe('engine_unavailable');
    expect(refused.body.message).toContain('no-docker.sock');
    expect(tempFiles(none)).toEqual([]);
    expect((await none.get('/v2/images')).status).toBe(503);
  }, 120_000);

  it('the temp file of an import cut by a kill is removed at the next start', async () => {
    const dataDir = dirs.make();
    const a = await agent({}, dataDir);
    const req = request(`${a.apiUrl}/v2/images/import`, { method: 'POST', headers: { authorization: `Bearer ${a.key}`, 'content-length': String(statSync(archive).size) } });
    req.on('error', () => undefined);
    req.write(readFileSync(archive).subarray(0, 65_536));
    await waitFor('the temp file', () => tempFiles(a).length === 1);
    await a.stop('SIGKILL');
    agents.splice(agents.indexOf(a), 1);
    req.destroy();
    expect(readdirSync(join(dataDir, 'image-import'))).toHaveLength(1);
    const b = await agent({}, dataDir);
    expect(tempFiles(b)).toEqual([]);
  }, 120_000);
});
