import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports.js';

export { freePort, waitForPort };

/**
 * The MQTT side of the devcloud: a private Mosquitto (Debian's /usr/sbin/mosquitto) with its own
 * config, port and data dir on 127.0.0.1, started, stopped, killed and restarted on the same port.
 * Nothing shared with a system broker, nothing left behind. The tests and the MQTT benchmark use it.
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
  /** `max_inflight_messages`, announced to MQTT 5 clients as the Receive Maximum. Absent: Mosquitto's 20. */
  maxInflight?: number;
  /** `max_queued_messages` per client. Default 100,000. */
  maxQueued?: number;
  /** Also log connections (notice, information), not only errors and warnings. Default true; off where the broker's CPU is measured. */
  verbose?: boolean;
  /** How often `start` tries the port, ms: the resolution of the instant it returns. Default 25. */
  pollMs?: number;
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
  /** PID of the running broker (for its CPU time); undefined while stopped. */
  pid(): number | undefined;
  /** SIGTERM: a clean stop (persistence saved). */
  stop(): Promise<void>;
  /** SIGKILL: as in a crash. */
  kill(): Promise<void>;
  /**
   * Starts again on the same port, with the same config and data dir. Resolves with performance.now()
   * of the first accepted TCP connection (the "broker is back" instant).
   */
  start(): Promise<number>;
  /** SIGKILL and remove the data dir. */
  dispose(): Promise<void>;
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<Mosquitto> {
  const host = '127.0.0.1';
  const port = opts.port || (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'mosquitto-'));
  const data = join(dir, 'data');
  mkdirSync(data);
  const lines = configLines(opts, { host, port, dir, data });
  const configFile = join(dir, 'mosquitto.conf');
  writeFileSync(configFile, `${lines.join('\n')}\n`);

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let log = '';
  const running = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null;

  const start = async (): Promise<number> => {
    if (running()) throw new Error('mosquitto is already running');
    const c = spawn(MOSQUITTO, ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.stdout?.setEncoding('utf8').on('data', (t: string) => (log += t));
    c.stderr?.setEncoding('utf8').on('data', (t: string) => (log += t));
    try {
      // mosquitto binds with SO_REUSEADDR, so a restart right after a kill gets the same port.
      return await waitForPort(host, port, 10_000, () => c.exitCode === null && c.signalCode === null, opts.pollMs);
    } catch (err) {
      c.kill('SIGKILL');
      throw new Error(`mosquitto did not start on ${host}:${port}: ${(err as Error).message}\n${log}`);
    }
  };

  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    if (running()) child?.kill(sig);
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
    running,
    pid: () => (running() ? child?.pid : undefined),
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    start,
    async dispose() {
      await signal('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The broker's config file, line by line: a private listener, its data dir, and what `opts` asks for. */
function configLines(opts: MosquittoOptions, at: { host: string; port: number; dir: string; data: string }): string[] {
  const { host, port, dir, data } = at;
  const lines = [
    `listener ${port} ${host}`,
    // As root, mosquitto would switch to the "mosquitto" user, who cannot read this private temp dir.
    `user ${userInfo().username}`,
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    ...(opts.verbose === false ? [] : ['log_type notice', 'log_type information']),
    'connection_messages true',
    `max_queued_messages ${opts.maxQueued ?? 100_000}`,
    `persistence ${opts.persistence ? 'true' : 'false'}`,
  ];
  if (opts.maxInflight !== undefined) lines.push(`max_inflight_messages ${opts.maxInflight}`);
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
  return lines;
}
