import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, createReadStream, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireBuilt, ROOT as ROOT_DIR } from '../helpers/agent-process.js';
import { followStream, startEngine, type TestEngine } from '../helpers/docker.js';

/**
 * The Dockerfile builds on a base named by a build arg. No registry image is pulled: the base here is
 * imported from a root file system made of the host's node (with the libraries it links) and the static
 * busybox, the way docs/operations.md makes one with debootstrap. Nothing is downloaded. The image is
 * built from what deploy/install.sh --root stages, and a container of it checks the shipped example config.
 */

const ROOT = resolve(ROOT_DIR);
const BASE = 'local/iotistic-base:test';
const IMAGE = 'local/iotistic-agent:test';
let engine: TestEngine;
const dirs: string[] = [];

beforeAll(async () => {
  engine = await startEngine();
}, 120_000);
afterAll(async () => {
  for (const ref of [IMAGE, BASE]) await engine.docker.getImage(ref).remove({ force: true }).catch(() => undefined);
  await engine.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}, 120_000);

function tempDir(): string {
  const d = mkdtempSync('/tmp/ik-df-');
  dirs.push(d);
  return d;
}

/** A base with Node and a shell: the host's node, every library ldd names, busybox and its applets. */
async function importBase(): Promise<void> {
  const root = join(tempDir(), 'rootfs');
  const node = execFileSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).trim();
  const libs = execFileSync('ldd', [node], { encoding: 'utf8' }).match(/\/\S+/g) ?? [];
  for (const lib of libs) {
    mkdirSync(join(root, dirname(lib)), { recursive: true });
    copyFileSync(lib, join(root, lib));
  }
  for (const d of ['bin', 'usr/local/bin', 'tmp', 'etc']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync(node, join(root, 'usr/local/bin/node'));
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  execFileSync('chmod', ['755', join(root, 'bin/busybox'), join(root, 'usr/local/bin/node'), join(root, 'tmp')]);
  for (const a of ['sh', 'ln', 'ls', 'cat', 'rm', 'mkdir']) symlinkSync('busybox', join(root, 'bin', a));
  const tar = `${root}.tar`;
  execFileSync('tar', ['-C', root, '-cf', tar, '.']);
  await followStream(engine.docker, (await engine.docker.importImage(tar, { repo: 'local/iotistic-base', tag: 'test' })) as Readable);
}

describe('the Dockerfile', () => {
  it('builds FROM the base named by BASE from what install.sh stages, and its agent checks a config', async () => {
    requireBuilt();
    await importBase();
    const context = tempDir();
    const staged = spawnSync('/bin/sh', [join(ROOT, 'deploy/install.sh'), '--root', join(context, '.image'), '--no-start'], { encoding: 'utf8' });
    expect(staged.status, staged.stderr).toBe(0);
    copyFileSync(join(ROOT, 'Dockerfile'), join(context, 'Dockerfile'));
    copyFileSync(join(ROOT, '.dockerignore'), join(context, '.dockerignore'));
    const tar = join(tempDir(), 'context.tar');
    execFileSync('tar', ['-C', context, '-cf', tar, '.']);
    let log = '';
    const stream = (await engine.docker.buildImage(createReadStream(tar), { t: IMAGE, buildargs: { BASE }, networkmode: 'none', rm: true, forcerm: true })) as Readable;
    await new Promise<void>((resolveBuild, reject) =>
      engine.docker.modem.followProgress(stream, (err: Error | null, out: { stream?: string; error?: string }[]) => {
        log = out.map((o) => o.stream ?? o.error ?? '').join('');
        const failed = out.find((o) => o.error);
        if (err ?? failed) reject(new Error(`${err?.message ?? failed?.error ?? ''}\n${log}`));
        else resolveBuild();
      }),
    );
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(log).toContain(version);

    // The shipped example, checked by the agent in the image: the bundle and its native modules load there.
    const container = await engine.docker.createContainer({
      Image: IMAGE,
      Entrypoint: ['/usr/local/bin/iotistic-agent'],
      Cmd: ['config', 'check', '--config', '/opt/iotistic-agent/examples/local.json'],
      HostConfig: { NetworkMode: 'none' },
      Labels: { 'io.iotistic.test-run': engine.runId },
    });
    try {
      await container.start();
      const { StatusCode } = (await container.wait()) as { StatusCode: number };
      const out = (await container.logs({ stdout: true, stderr: true })).toString('utf8');
      expect(out).toContain('local.json: OK');
      expect(StatusCode).toBe(0);
    } finally {
      await container.remove({ force: true });
    }
  }, 300_000);
});
