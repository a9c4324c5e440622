import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

/**
 * A private Mosquitto (Debian's /usr/sbin/mosquitto) for one test: its own config, port and data
 * dir on 127.0.0.1, started, killed and restarted on the same port. Nothing shared, nothing left.
 */

export const MOSQUITTO = '/usr/sbin/mosquitto';

export interface MosquittoTls {
  caFile: string;
  certFile: string;
  keyFile: string;
  /** Mutual TLS: clients must present a certificate signed by `caFile`. */
  requireCertificate?: boolean;
}

export interface MosquittoOptions {
  /** 0 or absent: a free port. */
  port?: number;
  /** Keep sessions, subscriptions and queued messages on disk, saved after every change. */
  persistence?: boolean;
  /** Without it anonymous clients are allowed; with it only these users (mosquitto_passwd). */
  users?: Record<string, string>;
  /** The text of an ACL file (`user x` / `topic readwrite ...`). */
  acl?: string;
  tls?: MosquittoTls;
  /** More configuration lines. */
  extra?: string[];
}

export interface Mosquitto {
  host: string;
  port: number;
  /** mqtt:// or mqtts:// URL of the listener. */
  url: string;
  dir: string;
  configFile: string;
  /** Log lines so far (stderr). */
  log(): string;
  running(): boolean;
  /** SIGTERM: a clean stop (persistence saved). */
  stop(): Promise<void>;
  /** SIGKILL: as in a crash. */
  kill(): Promise<void>;
  /** Starts again on the same port, with the same config and data dir. */
  start(): Promise<void>;
  /** Stops and removes the data dir. */
  dispose(): Promise<void>;
}

/** A port that was free a moment ago (bound, read, released). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Resolves once `host:port` accepts a TCP connection, polling every 25 ms. */
export async function waitForPort(host: string, port: number, timeoutMs: number, alive: () => boolean = () => true): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ host, port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error(`the process that should listen on ${host}:${port} has exited`);
    if (Date.now() > deadline) throw new Error(`nothing accepted connections on ${host}:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<Mosquitto> {
  const host = '127.0.0.1';
  const port = opts.port || (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'mosquitto-'));
  const data = join(dir, 'data');
  mkdirSync(data);
  const lines = [
    `listener ${port} ${host}`,
    // As root, mosquitto would switch to the "mosquitto" user, who cannot read this private temp dir.
    `user ${userInfo().username}`,
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    'log_type notice',
    'log_type information',
    'connection_messages true',
    'max_queued_messages 100000',
    `persistence ${opts.persistence ? 'true' : 'false'}`,
  ];
  if (opts.persistence) {
    lines.push(`persistence_location ${data}/`, 'autosave_on_changes true', 'autosave_interval 1');
  }
  if (opts.users) {
    const file = join(dir, 'passwords');
    writeFileSync(file, '');
    for (const [user, password] of Object.entries(opts.users)) {
      const r = spawnSync('/usr/bin/mosquitto_passwd', ['-b', file, user, password], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`mosquitto_passwd failed: ${r.stderr}`);
    }
    lines.push('allow_anonymous false', `password_file ${file}`);
  } else {
    lines.push('allow_anonymous true');
  }
  if (opts.acl !== undefined) {
    const file = join(dir, 'acl');
    writeFileSync(file, opts.acl);
    lines.push(`acl_file ${file}`);
  }
  if (opts.tls) {
    lines.push(`cafile ${opts.tls.caFile}`, `certfile ${opts.tls.certFile}`, `keyfile ${opts.tls.keyFile}`);
    lines.push(`require_certificate ${opts.tls.requireCertificate ? 'true' : 'false'}`);
  }
  lines.push(...(opts.extra ?? []));
  const configFile = join(dir, 'mosquitto.conf');
  writeFileSync(configFile, `${lines.join('\n')}\n`);

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let log = '';

  const start = async (): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) throw new Error('mosquitto is already running');
    const c = spawn(MOSQUITTO, ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.stdout?.setEncoding('utf8').on('data', (t: string) => (log += t));
    c.stderr?.setEncoding('utf8').on('data', (t: string) => (log += t));
    try {
      // mosquitto binds with SO_REUSEADDR, so a restart right after a kill gets the same port.
      await waitForPort(host, port, 10_000, () => c.exitCode === null && c.signalCode === null);
    } catch (err) {
      c.kill('SIGKILL');
      throw new Error(`mosquitto did not start on ${host}:${port}: ${(err as Error).message}\n${log}`);
    }
  };

  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };

  try {
    await start();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    host,
    port,
    url: `${opts.tls ? 'mqtts' : 'mqtt'}://${host}:${port}`,
    dir,
    configFile,
    log: () => log,
    running: () => child !== undefined && child.exitCode === null && child.signalCode === null,
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    start,
    async dispose() {
      await signal('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
