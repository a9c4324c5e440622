import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import Docker from 'dockerode';
import { afterAll, beforeAll } from 'vitest';
import { ping, sweep } from '../../bench/docker-engine.js';
import { freePort } from '../../devcloud/ports.js';

/**
 * A real Docker engine for integration tests. When one answers at DOCKER_HOST (or the default
 * socket) it is used, and only what the test run created (labelled with its run id) is removed
 * afterwards. Otherwise, as root, a private `dockerd` is started with its own data root, exec root
 * and socket in a short temp dir (unix socket paths are limited to 108 bytes), no bridge, no
 * iptables and no ip forwarding (it changes nothing on the host's network), and it is stopped, its
 * processes killed and its mounts gone, at teardown. Images are built from the static busybox of
 * Debian's busybox-static: nothing is fetched from the internet.
 */

const SETUP_HINT =
  'The Docker integration tests need a Docker engine: either one answering at DOCKER_HOST or /var/run/docker.sock, ' +
  'or root and Debian\'s docker.io installed (the tests then start a private dockerd). Also: busybox-static (/bin/busybox) for ' +
  'test images, docker-registry for pull tests and apache2-utils (htpasswd) for the registry-auth tests. Install with: apt-get install -y docker.io busybox-static docker-registry apache2-utils ' +
  '(node scripts/test-services.mjs does it as root).';

/** Label put on everything a test creates by hand, so teardown can find it on a shared engine. */
/** Starts a daemon in its own process group with its output appended to `logPath`. */
function spawnLogged(cmd: string, args: string[], logPath: string, env: NodeJS.ProcessEnv = process.env): { child: ChildProcess; exited: Promise<void> } {
  const logFd = openSync(logPath, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', logFd, logFd], env });
  closeSync(logFd);
  return { child, exited: new Promise<void>((r) => child.once('exit', () => r())) };
}

export const TEST_RUN_LABEL = 'io.iotistic.test-run';

export interface TestEngine {
  docker: Docker;
  /** `unix://...`, for DOCKER_HOST. */
  host: string;
  /** True when this helper started the daemon. */
  private: boolean;
  /** Unique per test file: agent ids used by the tests should start with it. */
  runId: string;
  /** Imports a busybox image as `ref` (e.g. "local/bb:1"); `marker` makes a distinct image (its own layer). */
  buildImage(ref: string, marker?: string): Promise<string>;
  /** Removes what this run created; stops the private daemon. */
  stop(): Promise<void>;
  /** Private daemon only: stops dockerd (and so its containers) and starts it again on the same data. */
  restart?: () => Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function has(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${bin} || test -x /usr/sbin/${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function followStream(docker: Docker, stream: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    docker.modem.followProgress(stream, (err: Error | null, out: { error?: string }[]) => {
      if (err) return reject(err);
      const failed = out.find((o) => o.error);
      if (failed) return reject(new Error(failed.error));
      resolve();
    });
  });
}

/** Processes whose command line mentions `needle` (a private daemon's dir). */
async function removeRunObjects(docker: Docker, runId: string): Promise<void> {
  const containers = await docker.listContainers({ all: true });
  for (const c of containers) {
    const labels = c.Labels ?? {};
    const ours = labels[TEST_RUN_LABEL] === runId || (labels['io.iotistic.agent'] ?? '').startsWith(runId);
    if (ours) await docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined);
  }
  await removeNetworks(docker, (labels) => (labels['io.iotistic.agent'] ?? '').startsWith(runId));
  const { Volumes } = await docker.listVolumes();
  for (const v of Volumes ?? []) {
    if ((v.Labels?.['io.iotistic.agent'] ?? '').startsWith(runId)) await docker.getVolume(v.Name).remove().catch(() => undefined);
  }
}

/** Removes the user-defined networks (apps' networks) whose labels `pick` chooses. */
async function removeNetworks(docker: Docker, pick: (labels: Record<string, string>) => boolean): Promise<void> {
  const networks = await docker.listNetworks().catch(() => []);
  for (const n of networks) {
    if (['bridge', 'host', 'none'].includes(n.Name) || !pick(n.Labels ?? {})) continue;
    await docker.getNetwork(n.Id).remove().catch(() => undefined);
  }
}

/** True when the ELF file has no program interpreter (PT_INTERP), i.e. runs in an image with no libc. */
function isStaticElf(path: string): boolean {
  const b = readFileSync(path);
  if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false; // ELF, 64-bit
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

function requireStaticBusybox(): void {
  if (!existsSync('/bin/busybox')) throw new Error(`/bin/busybox is missing. ${SETUP_HINT}`);
  if (!isStaticElf('/bin/busybox')) throw new Error(`/bin/busybox is dynamically linked (Debian's busybox, not busybox-static): it cannot run in an image without libc. ${SETUP_HINT}`);
}

let runCounter = 0;

/** Connects to an engine, or starts a private one. One per test file (call in beforeAll). */
export async function startEngine(): Promise<TestEngine> {
  const runId = `t${process.pid}x${++runCounter}`;
  const shared = new Docker();
  if (await ping(shared, 2_000)) {
    return {
      docker: shared,
      host: process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock',
      private: false,
      runId,
      buildImage: (ref, marker) => buildImage(shared, ref, marker, runId),
      stop: () => removeRunObjects(shared, runId),
    };
  }
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot || !has('dockerd')) throw new Error(`no Docker engine answers and ${isRoot ? 'dockerd is not installed' : 'this is not root'}. ${SETUP_HINT}`);

  const dir = mkdtempSync('/tmp/ik-');
  mkdirSync(join(dir, 'root'));
  mkdirSync(join(dir, 'exec'));
  writeFileSync(join(dir, 'daemon.json'), '{}');
  const sock = join(dir, 'docker.sock');
  const docker = new Docker({ socketPath: sock });
  const log = (): string => {
    try {
      return readFileSync(join(dir, 'dockerd.log'), 'utf8').split('\n').slice(-15).join('\n');
    } catch {
      return '';
    }
  };
  let child: ChildProcess | undefined;
  let running = false;
  let exited: Promise<void> = Promise.resolve();

  const launch = async (): Promise<void> => {
    const c = spawnLogged('dockerd', [
        '--config-file', join(dir, 'daemon.json'),
        '--data-root', join(dir, 'root'),
        '--exec-root', join(dir, 'exec'),
        '--pidfile', join(dir, 'docker.pid'),
        '-H', `unix://${sock}`,
        '--bridge=none',
        '--iptables=false',
        '--ip6tables=false',
        '--ip-masq=false',
        '--ip-forward=false',
        '--log-level=warn',
      ], join(dir, 'dockerd.log'), { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` });
    child = c.child;
    running = true;
    exited = c.exited.then(() => {
      running = false;
    });
    const deadline = Date.now() + 30_000;
    while (!(await ping(docker, 1_000))) {
      if (!running) throw new Error(`private dockerd exited with ${c.child.exitCode} before answering:\n${log()}\n${SETUP_HINT}`);
      if (Date.now() > deadline) throw new Error(`private dockerd did not answer within 30 s:\n${log()}`);
      await sleep(100);
    }
  };

  /** SIGTERM to dockerd (it stops its containers within their stop timeout), SIGKILL to the group if it hangs. */
  const halt = async (): Promise<void> => {
    if (!child || !running || !child.pid) return;
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(20_000)]);
    if (running) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
      await Promise.race([exited, sleep(5_000)]);
    }
  };

  const stop = async (): Promise<void> => {
    try {
      if (running) {
        // Containers first (with SIGKILL), or dockerd waits out every container's stop timeout.
        const all = await docker.listContainers({ all: true }).catch(() => []);
        await Promise.all(all.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined)));
        // A user-defined bridge outlives dockerd as a host interface, using up the engine's address pools.
        await removeNetworks(docker, () => true);
      }
      await halt();
    } finally {
      // containerd and the shims run in their own sessions: anything still mentioning the dir goes.
      await sweep(dir);
    }
  };

  try {
    await launch();
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    docker,
    host: `unix://${sock}`,
    private: true,
    runId,
    buildImage: (ref, marker) => buildImage(docker, ref, marker, runId),
    stop,
    restart: async () => {
      await halt();
      await launch();
    },
  };
}

const APPLETS = ['sh', 'echo', 'sleep', 'cat', 'env', 'ls', 'true', 'false', 'printenv', 'kill', 'date', 'wc', 'head', 'touch', 'mkdir'];

async function buildImage(docker: Docker, ref: string, marker: string | undefined, runId: string): Promise<string> {
  requireStaticBusybox();
  const dir = mkdtempSync('/tmp/ik-img-');
  try {
    const root = join(dir, 'rootfs');
    mkdirSync(join(root, 'bin'), { recursive: true });
    mkdirSync(join(root, 'tmp'));
    mkdirSync(join(root, 'data'));
    copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
    execFileSync('chmod', ['755', join(root, 'bin', 'busybox')]);
    for (const a of APPLETS) symlinkSync('busybox', join(root, 'bin', a));
    writeFileSync(join(root, 'IMAGE'), `${ref} ${marker ?? ''} ${runId}\n`);
    const tar = join(dir, 'rootfs.tar');
    execFileSync('tar', ['-C', root, '-cf', tar, '.']);
    const colon = ref.lastIndexOf(':');
    const [repo, tag] = colon > ref.lastIndexOf('/') ? [ref.slice(0, colon), ref.slice(colon + 1)] : [ref, 'latest'];
    const stream = (await docker.importImage(tar, { repo, tag })) as Readable;
    await followStream(docker, stream);
    return `${repo}:${tag}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  address: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Tags `local` as `<address>/<name>`, pushes it, and drops the local tag so the engine must pull it. */
  push(docker: Docker, local: string, name: string): Promise<string>;
  /** Stops and deletes its storage. */
  destroy(): Promise<void>;
}

export interface RegistryOptions {
  /** Basic auth with one user (an htpasswd file, bcrypt, made with apache2-utils' htpasswd): pushes log in as it. */
  login?: { username: string; password: string };
}

/** The `auth:` section of the registry's config for one bcrypt htpasswd user. */
function htpasswdAuth(dir: string, login: { username: string; password: string }): string[] {
  if (!has('htpasswd')) throw new Error(`htpasswd is not installed (apache2-utils). ${SETUP_HINT}`);
  const file = join(dir, 'htpasswd');
  // docker-registry reads bcrypt entries only (-B).
  writeFileSync(file, execFileSync('htpasswd', ['-Bbn', login.username, login.password], { encoding: 'utf8' }));
  return ['auth:', '  htpasswd:', '    realm: iotistic-test', `    path: ${file}`];
}

/** Debian's docker-registry on a loopback port with its own storage (the engine treats 127.0.0.0/8 as insecure, i.e. plain HTTP). */
export async function startRegistry(opts: RegistryOptions = {}): Promise<TestRegistry> {
  if (!has('docker-registry')) throw new Error(`docker-registry is not installed. ${SETUP_HINT}`);
  const dir = mkdtempSync('/tmp/ik-reg-');
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const config = join(dir, 'config.yml');
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: error',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(dir, 'data')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${address}`,
      '  secret: test-only-secret',
      ...(opts.login ? htpasswdAuth(dir, opts.login) : []),
      '',
    ].join('\n'),
  );
  let child: ChildProcess | undefined;
  let running = false;
  let exited: Promise<void> = Promise.resolve();
  const reg: TestRegistry = {
    address,
    async start() {
      if (running) return;
      const c = spawnLogged('docker-registry', ['serve', config], join(dir, 'registry.log'));
      child = c.child;
      running = true;
      exited = c.exited.then(() => {
        running = false;
      });
      const deadline = Date.now() + 15_000;
      for (;;) {
        try {
          const res = await fetch(`http://${address}/v2/`, { signal: AbortSignal.timeout(1_000) });
          // With auth, an anonymous request is answered 401: the registry is up.
          if (res.status === 200 || (opts.login && res.status === 401)) return;
        } catch {
          // not yet
        }
        if (!running) throw new Error(`docker-registry exited: ${readFileSync(join(dir, 'registry.log'), 'utf8')}`);
        if (Date.now() > deadline) throw new Error('docker-registry did not answer within 15 s');
        await sleep(100);
      }
    },
    async stop() {
      if (!child || !running || !child.pid) return;
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // gone
      }
      await Promise.race([exited, sleep(5_000)]);
      if (running) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // gone
        }
        await exited;
      }
    },
    async push(docker, local, name) {
      const colon = name.lastIndexOf(':');
      const [repo, tag] = [name.slice(0, colon), name.slice(colon + 1)];
      const remote = `${address}/${repo}`;
      await docker.getImage(local).tag({ repo: remote, tag });
      // The engine wants an X-Registry-Auth header even for a registry without auth.
      const stream = (await docker.getImage(`${remote}:${tag}`).push({ authconfig: { ...opts.login, serveraddress: address } })) as Readable;
      await followStream(docker, stream);
      await docker.getImage(`${remote}:${tag}`).remove();
      return `${remote}:${tag}`;
    },
    async destroy() {
      await reg.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await reg.start();
  return reg;
}

/**
 * A resource of the test file: started by a `beforeAll`, stopped by an `afterAll` (after hooks run in
 * reverse, so what started later stops first), and used through the object returned, which stands for
 * it once started. Using it before its `beforeAll` ran throws, naming it.
 */
function forTheFile<T extends object>(what: string, start: () => Promise<T>, stop: (t: T) => Promise<void>, timeoutMs: number): T {
  let value: T | undefined;
  beforeAll(async () => {
    value = await start();
  }, timeoutMs);
  afterAll(async () => {
    if (value) await stop(value);
  }, timeoutMs);
  return new Proxy({} as T, {
    get(_target, prop) {
      if (!value) throw new Error(`the test file's ${what} is used before its beforeAll started it`);
      const v: unknown = Reflect.get(value, prop);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(value) : v;
    },
  });
}

/** The test file's engine (startEngine), started before its tests and stopped after them. */
export function fileEngine(timeoutMs = 120_000): TestEngine {
  return forTheFile('engine', startEngine, (e) => e.stop(), timeoutMs);
}

/** The test file's loopback registry (startRegistry), started before its tests and destroyed after them. */
export function fileRegistry(opts: RegistryOptions = {}, timeoutMs = 60_000): TestRegistry {
  return forTheFile('registry', () => startRegistry(opts), (r) => r.destroy(), timeoutMs);
}
