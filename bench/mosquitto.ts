import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

/**
 * A private Mosquitto (Debian's /usr/sbin/mosquitto) for a benchmark: its own config in a temp dir,
 * a free port on 127.0.0.1, persistence off. It can be stopped and started again on the same port,
 * and `start` says when the port first accepted a connection (the "broker is back" instant).
 */

export const MOSQUITTO_BIN = '/usr/sbin/mosquitto';

export interface BenchBroker {
  host: string;
  port: number;
  url: string;
  /** PID of the running broker, for its CPU time; undefined while stopped. */
  pid(): number | undefined;
  /** Starts the broker; resolves with performance.now() of the first accepted TCP connection. */
  start(): Promise<number>;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<void>;
  /** Stops it and removes its temp dir. */
  dispose(): Promise<void>;
  log(): string;
}

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

/** One TCP connect attempt; resolves with performance.now() at the connect, or null when refused. */
function tryConnect(host: string, port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      const at = performance.now();
      socket.destroy();
      resolve(at);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(null);
    });
  });
}

/**
 * `maxInflight`: `max_inflight_messages`, which Mosquitto announces to MQTT 5 clients as its
 * Receive Maximum. `pollMs`: how often `start` tries the port (the resolution of the "back" instant).
 */
export async function startBroker(opts: { maxInflight: number; maxQueued?: number; pollMs?: number }): Promise<BenchBroker> {
  const host = '127.0.0.1';
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'iotistic-bench-mosquitto-'));
  const configFile = join(dir, 'mosquitto.conf');
  const lines = [
    `listener ${port} ${host}`,
    // As root, Mosquitto would otherwise switch to the "mosquitto" user.
    `user ${userInfo().username}`,
    'allow_anonymous true',
    'persistence false',
    `max_inflight_messages ${opts.maxInflight}`,
    `max_queued_messages ${opts.maxQueued ?? 1_000_000}`,
    'log_dest stderr',
    'log_type error',
    'log_type warning',
  ];
  writeFileSync(configFile, `${lines.join('\n')}\n`);
  const pollMs = opts.pollMs ?? 2;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let log = '';
  const alive = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null;

  const start = async (): Promise<number> => {
    if (alive()) throw new Error('mosquitto is already running');
    const c = spawn(MOSQUITTO_BIN, ['-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = c;
    exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.stderr?.setEncoding('utf8').on('data', (t: string) => (log += t));
    const deadline = performance.now() + 10_000;
    for (;;) {
      const at = await tryConnect(host, port);
      if (at !== null) return at;
      if (!alive()) throw new Error(`mosquitto exited before listening on ${host}:${port}:\n${log}`);
      if (performance.now() > deadline) {
        c.kill('SIGKILL');
        throw new Error(`mosquitto did not listen on ${host}:${port} within 10 s:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  };
  const stop = async (): Promise<void> => {
    if (alive()) child?.kill('SIGTERM');
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
    url: `mqtt://${host}:${port}`,
    pid: () => (alive() ? child?.pid : undefined),
    start,
    stop,
    async dispose() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
    log: () => log,
  };
}
