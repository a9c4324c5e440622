import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import Docker from 'dockerode';

/**
 * A private Docker engine for a benchmark (bench/ does not import test/, so this is the bench's own,
 * smaller take on test/helpers/docker.ts): as root, `dockerd` with its own data root, exec root and
 * socket in a temp dir, no bridge, no iptables, no ip forwarding (nothing on the host's network
 * changes), never the system's engine or its state. Images are built from the static busybox of
 * Debian's busybox-static: nothing is fetched. `stop` removes the containers, stops the daemon, kills
 * what is left of its processes (containerd and shims mention the dir), unmounts and removes the dir.
 */

export interface BenchEngine {
  docker: Docker;
  /** `unix:///…/docker.sock`, for DOCKER_HOST and the agent's DockerRuntime. */
  host: string;
  /** The dockerd process (for its CPU). */
  pid: number;
  /** Imports a busybox image with `applets` as `ref`. */
  buildImage(ref: string, applets: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Whether the engine answers within `ms` (shared with test/helpers/docker.ts). */
export async function ping(docker: Docker, ms: number): Promise<boolean> {
  try {
    await (docker.ping as unknown as (o: object) => Promise<unknown>).call(docker, { abortSignal: AbortSignal.timeout(ms) });
    return true;
  } catch {
    return false;
  }
}

/** Processes (not this one) whose command line mentions `needle`: what the private daemon started. */
function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(needle)) out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

function mountsUnder(dir: string): string[] {
  const points = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
  return points.sort((a, b) => b.length - a.length);
}

function daemonArgs(dir: string, sock: string): string[] {
  return [
    ...['--config-file', join(dir, 'daemon.json'), '--data-root', join(dir, 'root'), '--exec-root', join(dir, 'exec')],
    ...['--pidfile', join(dir, 'docker.pid'), '-H', `unix://${sock}`, '--log-level=warn'],
    ...['--bridge=none', '--iptables=false', '--ip6tables=false', '--ip-masq=false', '--ip-forward=false'],
  ];
}

/** Starts the private engine; throws (having cleaned up) when it cannot. */
export async function startPrivateEngine(): Promise<BenchEngine> {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) throw new Error('the bench starts a private dockerd: run it as root');
  if (!existsSync('/bin/busybox')) throw new Error('/bin/busybox is missing: apt-get install -y busybox-static');
  const dir = mkdtempSync('/tmp/ikb-');
  mkdirSync(join(dir, 'root'));
  mkdirSync(join(dir, 'exec'));
  writeFileSync(join(dir, 'daemon.json'), '{}');
  const sock = join(dir, 'docker.sock');
  const docker = new Docker({ socketPath: sock });
  const logFd = openSync(join(dir, 'dockerd.log'), 'a');
  const env = { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };
  const child: ChildProcess = spawn('dockerd', daemonArgs(dir, sock), { detached: true, stdio: ['ignore', logFd, logFd], env });
  closeSync(logFd);
  let running = true;
  const exited = new Promise<void>((r) => child.once('exit', () => r())).then(() => void (running = false));
  child.once('error', () => void (running = false));

  const stop = async (): Promise<void> => {
    try {
      if (running) {
        const all = await docker.listContainers({ all: true }).catch(() => []);
        await Promise.all(all.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => undefined)));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(20_000)]);
        if (running && child.pid) process.kill(-child.pid, 'SIGKILL');
      }
    } finally {
      await sweep(dir);
    }
  };

  try {
    const deadline = Date.now() + 30_000;
    while (!(await ping(docker, 1_000))) {
      if (!running) throw new Error(`the private dockerd exited before answering:\n${tail(dir)}`);
      if (Date.now() > deadline) throw new Error(`the private dockerd did not answer within 30 s:\n${tail(dir)}`);
      await sleep(100);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { docker, host: `unix://${sock}`, pid: child.pid as number, buildImage: (ref, applets) => buildImage(docker, ref, applets), stop };
}

function tail(dir: string): string {
  try {
    return readFileSync(join(dir, 'dockerd.log'), 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '';
  }
}

/** What the daemon left: its processes (by pid, those naming the dir), mounts under the dir, the dir. */
export async function sweep(dir: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    const left = processesMentioning(dir);
    if (left.length === 0) break;
    for (const pid of left) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await sleep(100);
  }
  for (const m of mountsUnder(dir)) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
  rmSync(dir, { recursive: true, force: true });
}

async function buildImage(docker: Docker, ref: string, applets: readonly string[]): Promise<string> {
  const dir = mkdtempSync('/tmp/ikb-img-');
  try {
    const root = join(dir, 'rootfs');
    mkdirSync(join(root, 'bin'), { recursive: true });
    mkdirSync(join(root, 'tmp'));
    copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
    execFileSync('chmod', ['755', join(root, 'bin', 'busybox')]);
    for (const a of applets) symlinkSync('busybox', join(root, 'bin', a));
    const tar = join(dir, 'rootfs.tar');
    execFileSync('tar', ['-C', root, '-cf', tar, '.']);
    const [repo, tag] = ref.split(':') as [string, string];
    const stream = (await docker.importImage(tar, { repo, tag })) as Readable;
    await new Promise<void>((resolve, reject) => {
      docker.modem.followProgress(stream, (err: Error | null, out: { error?: string }[]) => {
        const failed = err ?? (out.find((o) => o.error) ? new Error(out.find((o) => o.error)?.error) : undefined);
        if (failed) reject(failed);
        else resolve();
      });
    });
    return ref;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
