import { spawn, type ChildProcess } from 'node:child_process';
import BetterSqlite3 from 'better-sqlite3';
import { createInterface } from 'node:readline';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { defaultConfig, type AgentConfig } from '../../src/config/schema.js';
import { MqttSession, type MqttSessionDeps } from '../../src/mqtt/session.js';
import { backoffFromSettings } from '../../src/resilience/backoff.js';
import { MIGRATIONS } from '../../src/database-schema.js';
import { ConnectionMonitor } from '../../src/resilience/connection-monitor.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { Store } from './store.js';
import { systemClock } from '../../src/util/clock.js';
import type { Logger } from '../../src/util/logger.js';
import { systemRandom } from '../../src/util/random.js';
import { silentLogger } from './logger.js';

/** Helpers for the MQTT integration tests: a session wired as the agent wires it, and observers. */

export function openStore(path: string, logger: Logger = silentLogger()): Store {
  return Store.open({ path, logger, clock: systemClock, migrations: MIGRATIONS });
}

export interface TestSession {
  session: MqttSession;
  store: Store;
  monitor: ConnectionMonitor;
  wakeup: Wakeup;
  /** Starts the session (its loop runs until `close`). */
  start(): void;
  /** Stops the session (gracefully) and closes the database. */
  close(): Promise<void>;
}

export interface TestSessionOptions {
  dbPath: string;
  url: string;
  uuid?: string;
  apiKey?: string;
  mqtt?: Partial<AgentConfig['mqtt']>;
  /** Backoff between attempts; short by default so tests do not wait. */
  minBackoffSeconds?: number;
  maxBackoffSeconds?: number;
  logger?: Logger;
  deps?: Partial<MqttSessionDeps>;
}

export const TEST_UUID = 'device-0001';

export function testSession(opts: TestSessionOptions): TestSession {
  const logger = opts.logger ?? silentLogger();
  const store = openStore(opts.dbPath, logger);
  const config = defaultConfig();
  const offline = { ...config.settings.offline, minBackoffSeconds: opts.minBackoffSeconds ?? 0.1, maxBackoffSeconds: opts.maxBackoffSeconds ?? 1 };
  const monitor = new ConnectionMonitor({ clock: systemClock, channels: ['mqtt'] });
  const wakeup = new Wakeup({ clock: systemClock, random: systemRandom, staggerMaxMs: 50 });
  const session = new MqttSession({
    config: { mqtt: { ...config.mqtt, url: opts.url, ...opts.mqtt }, uuid: opts.uuid ?? TEST_UUID, apiKey: opts.apiKey },
    store,
    monitor,
    backoff: backoffFromSettings(offline, { clock: systemClock, random: systemRandom }),
    wakeup,
    clock: systemClock,
    logger,
    ...opts.deps,
  });
  const controller = new AbortController();
  let running: Promise<void> | undefined;
  return {
    session,
    store,
    monitor,
    wakeup,
    start() {
      running = session.start(controller.signal);
    },
    async close() {
      await session.stop();
      controller.abort();
      await running;
      store.close();
    },
  };
}

export interface Received {
  topic: string;
  payload: string;
  retain: boolean;
  dup: boolean;
  at: number;
}

export interface Observer {
  client: MqttClient;
  received: Received[];
  /** `id` of every received JSON payload that has one, in arrival order (duplicates included). */
  ids(): string[];
  close(): Promise<void>;
}

/**
 * An mqtt.js subscriber (another process's view of the broker), QoS 1. With `clean: false` and a
 * fixed client id its session outlives disconnects and broker restarts (with broker persistence).
 */
export async function observe(url: string, topic: string, opts: IClientOptions = {}): Promise<Observer> {
  const client = connect(url, { clientId: `observer-${Math.random().toString(16).slice(2, 10)}`, reconnectPeriod: 100, connectTimeout: 5_000, ...opts });
  const received: Received[] = [];
  client.on('message', (t, payload, packet) => {
    received.push({ topic: t, payload: payload.toString('utf8'), retain: packet.retain, dup: packet.dup, at: Date.now() });
  });
  client.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  await client.subscribeAsync(topic, { qos: 1 });
  return {
    client,
    received,
    ids: () =>
      received.flatMap((r) => {
        try {
          const id = (JSON.parse(r.payload) as { id?: unknown }).id;
          return typeof id === 'string' ? [id] : [];
        } catch {
          return [];
        }
      }),
    close: () => client.endAsync(true),
  };
}

export interface MosquittoSub {
  child: ChildProcess;
  /** `topic payload` lines printed by `mosquitto_sub -v`. */
  lines: string[];
  stop(): Promise<void>;
}

/** `mosquitto_sub -v` on `topic` (QoS 1); resolves once it is subscribed. */
export async function mosquittoSub(host: string, port: number, topic: string, extra: string[] = []): Promise<MosquittoSub> {
  // stdbuf: mosquitto_sub's stdout is block-buffered on a pipe; lines are needed as they come.
  // -W 120: it exits by itself should the test process die without stopping it.
  const args = ['-oL', '/usr/bin/mosquitto_sub', '-h', host, '-p', String(port), '-t', topic, '-q', '1', '-v', '-d', '-W', '120', ...extra];
  const child = spawn('/usr/bin/stdbuf', args, {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let subscribed = false;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    // -d prints the protocol exchange; keep the message lines ("topic payload") only.
    if (line.startsWith('Client ') || line.startsWith('Subscribed')) {
      if (line.includes('SUBACK')) subscribed = true;
      return;
    }
    lines.push(line);
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (t: string) => (stderr += t));
  const deadline = Date.now() + 10_000;
  while (!subscribed) {
    if (child.exitCode !== null) throw new Error(`mosquitto_sub exited (${child.exitCode}): ${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`mosquitto_sub did not subscribe in time: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    child,
    lines,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Polls `check` every 20 ms until it returns a truthy value; fails with `what` after `timeoutMs`. */
export async function until<T>(what: string, check: () => T | undefined | null | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The outgoing rows of an agent database, read through a connection of our own (the database may
 * belong to another process, which is fine in WAL mode).
 */
export function outgoingRows(dbPath: string): Array<{ message_id: number; app_id: string | null; topic: string }> {
  const db = new BetterSqlite3(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare("SELECT message_id, app_id, topic FROM mqtt_inflight WHERE store = 'outgoing' ORDER BY seq").all() as Array<{
      message_id: number;
      app_id: string | null;
      topic: string;
    }>;
  } finally {
    db.close();
  }
}

export interface ChildEvent {
  event: string;
  [key: string]: unknown;
}

export interface SessionChild {
  child: ChildProcess;
  events: ChildEvent[];
  send(command: object): void;
  /** Resolves with the first event (from the start) that matches. */
  waitFor(what: string, match: (e: ChildEvent) => boolean, timeoutMs?: number): Promise<ChildEvent>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  stderr(): string;
}

const CHILD_SCRIPT = new URL('./mqtt-child.ts', import.meta.url).pathname;

/** Runs `mqtt-child.ts` (an MqttSession in its own process) with `config` (a `ChildConfig`). */
export function spawnSessionChild(config: { dbPath: string; url: string; uuid: string; mqtt?: Partial<AgentConfig['mqtt']> }): SessionChild {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD_SCRIPT, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: ChildEvent[] = [];
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (t: string) => (stderr += t));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      events.push(JSON.parse(line) as ChildEvent);
    } catch {
      stderr += `${line}\n`;
    }
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    events,
    send: (command) => child.stdin!.write(`${JSON.stringify(command)}\n`),
    async waitFor(what, match, timeoutMs = 15_000) {
      return until(`${what} (child stderr: ${stderr.slice(-500)})`, () => {
        if (child.exitCode !== null && !events.some(match)) throw new Error(`the session child exited (${child.exitCode}) before ${what}: ${stderr}`);
        return events.find(match);
      }, timeoutMs);
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    stderr: () => stderr,
  };
}
