import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from '../../devcloud/ports.js';

/**
 * Private MQTT brokers that speak MQTT 3.1.1 only, for the protocol negotiation tests: a NATS server
 * with its MQTT listener, and a RabbitMQ node with the MQTT plugin. Each has its own ports and data
 * dirs (RabbitMQ also its own node name, Erlang distribution port and epmd), never the system's; each
 * can be stopped and started again on the same ports with its data kept (the broker matrix restarts them).
 */

export interface PrivateBroker {
  host: string;
  /** The MQTT listener. */
  port: number;
  url: string;
  /** Everything the broker printed, over every start. */
  log(): string;
  running(): boolean;
  /** A clean stop (SIGTERM): its data dir, and with it sessions, queued and retained messages, stays. */
  stop(): Promise<void>;
  /** Starts it again: the same ports, node name, config and data dir. */
  start(): Promise<void>;
  /** SIGKILL and remove the data dir. */
  dispose(): Promise<void>;
}

export const NATS_SERVER = '/usr/sbin/nats-server';
export const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

interface Supervised {
  log(): string;
  running(): boolean;
  /** Spawns the process and waits until it listens on the MQTT port. */
  start(): Promise<void>;
  /** Sends `signal` to the process (or to `pid()` when given, e.g. the Erlang VM under a script) and waits for the exit. */
  signal(signal: NodeJS.Signals): Promise<void>;
}

/**
 * One broker process, started and stopped again and again: its output collected across starts, a
 * start that fails killed and reported with what it printed.
 */
function supervise(
  what: string,
  launch: () => ChildProcess,
  listen: { host: string; port: number; timeoutMs: number; pollMs?: number },
  pid: () => number | undefined = () => undefined,
): Supervised {
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let log = '';
  const running = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null;
  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    if (!running()) return;
    const target = pid();
    try {
      if (target !== undefined) process.kill(target, sig);
    } catch {
      // already gone
    }
    if (target === undefined || sig === 'SIGKILL') child?.kill(sig);
    await exited;
  };
  return {
    log: () => log,
    running,
    signal,
    async start() {
      if (running()) throw new Error(`${what} is already running`);
      const c = launch();
      child = c;
      exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.stdout?.setEncoding('utf8').on('data', (t: string) => (log += t));
      c.stderr?.setEncoding('utf8').on('data', (t: string) => (log += t));
      try {
        await waitForPort(listen.host, listen.port, listen.timeoutMs, () => c.exitCode === null && c.signalCode === null, listen.pollMs);
      } catch (err) {
        await signal('SIGKILL');
        throw new Error(`${what} did not start: ${(err as Error).message}\n${log}`);
      }
    },
  };
}

/** NATS (2.9 here) with JetStream, which its MQTT listener needs. It refuses an MQTT 5 CONNECT with return code 1. */
export async function startNats(): Promise<PrivateBroker> {
  const host = '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'nats-'));
  const [clientPort, port] = [await freePort(), await freePort()];
  const config = join(dir, 'nats.conf');
  // JetStream keeps the MQTT sessions, their QoS 1 messages and the retained messages in store_dir.
  writeFileSync(
    config,
    [`listen: ${host}:${clientPort}`, 'server_name: agent-test', `jetstream { store_dir: "${join(dir, 'js')}" }`, `mqtt { listen: ${host}:${port} }`].join('\n'),
  );
  const proc = supervise('nats-server', () => spawn(NATS_SERVER, ['-c', config], { stdio: ['ignore', 'pipe', 'pipe'] }), { host, port, timeoutMs: 20_000 });
  const dispose = async (): Promise<void> => {
    await proc.signal('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await proc.start();
  } catch (err) {
    await dispose();
    throw err;
  }
  return { host, port, url: `mqtt://${host}:${port}`, log: proc.log, running: proc.running, stop: () => proc.signal('SIGTERM'), start: proc.start, dispose };
}

/**
 * A RabbitMQ node (3.10 here) with rabbitmq_mqtt, which closes the connection on an MQTT 5 CONNECT.
 * Starting one takes about 20 s.
 */
export async function startRabbitMq(opts: { user?: { name: string; password: string } } = {}): Promise<PrivateBroker> {
  const host = '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'rabbitmq-'));
  for (const d of ['mnesia', 'log']) mkdirSync(join(dir, d));
  const [amqpPort, distPort, epmdPort, port] = [await freePort(), await freePort(), await freePort(), await freePort()];
  writeFileSync(join(dir, 'enabled_plugins'), '[rabbitmq_mqtt].\n');
  const conf = [`listeners.tcp.default = ${host}:${amqpPort}`, `mqtt.listeners.tcp.default = ${host}:${port}`, 'mqtt.allow_anonymous = true'];
  // The node creates its default user at first boot: the device's credentials, as a cloud would provision them.
  if (opts.user) conf.push(`default_user = ${opts.user.name}`, `default_pass = ${opts.user.password}`, 'loopback_users = none');
  writeFileSync(join(dir, 'rabbitmq.conf'), `${conf.join('\n')}\n`);
  const env = {
    ...process.env,
    HOME: dir,
    RABBITMQ_NODENAME: `agenttest${process.pid}-${port}@localhost`,
    RABBITMQ_NODE_PORT: String(amqpPort),
    RABBITMQ_DIST_PORT: String(distPort),
    ERL_EPMD_PORT: String(epmdPort),
    RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(dir, 'log'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
    RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq'),
    RABBITMQ_PID_FILE: join(dir, 'pid'),
  };
  const pidFile = join(dir, 'pid');
  // The script runs the Erlang VM as a child: signals go to the VM (SIGTERM: a clean shutdown), whose pid the node writes.
  const beam = (): number | undefined => {
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : NaN;
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  };
  const proc = supervise('rabbitmq', () => spawn(RABBITMQ_SERVER, [], { env, stdio: ['ignore', 'pipe', 'pipe'] }), { host, port, timeoutMs: 90_000, pollMs: 250 }, beam);
  // A pid file left by a stopped node must not name some other process by the next signal.
  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    await proc.signal(sig);
    rmSync(pidFile, { force: true });
  };
  const dispose = async (): Promise<void> => {
    await signal('SIGKILL');
    // The node started an epmd of its own on epmdPort; stop that one only, once the node has gone
    // (epmd refuses -kill while a node is registered).
    for (let i = 0; i < 50; i++) {
      const r = spawnSync('/usr/bin/epmd', ['-kill'], { env: { ...process.env, ERL_EPMD_PORT: String(epmdPort) }, encoding: 'utf8' });
      if (/Killed|Cannot connect/.test(r.stdout + r.stderr)) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await proc.start();
  } catch (err) {
    await dispose();
    throw err;
  }
  return { host, port, url: `mqtt://${host}:${port}`, log: proc.log, running: proc.running, stop: () => signal('SIGTERM'), start: proc.start, dispose };
}

export interface ClusterNode extends PrivateBroker {
  name: string;
  /** SIGKILL: the node crashes. */
  kill(): Promise<void>;
  running(): boolean;
}

export interface NatsCluster {
  nodes: ClusterNode[];
  dispose(): Promise<void>;
}

/**
 * A NATS cluster of `size` nodes on loopback, each with JetStream (its own store dir) and its MQTT
 * listener. MQTT sessions and QoS 1 messages live in JetStream streams replicated on every node
 * (`stream_replicas`, `consumer_replicas`), so a session outlives the loss of the node it was on.
 */
export async function startNatsCluster(size = 3): Promise<NatsCluster> {
  const host = '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'nats-cluster-'));
  const ports: Array<{ client: number; cluster: number; mqtt: number }> = [];
  for (let i = 0; i < size; i++) ports.push({ client: await freePort(), cluster: await freePort(), mqtt: await freePort() });
  const routes = ports.map((p) => `nats-route://${host}:${p.cluster}`).join(', ');
  const nodes = ports.map((p, i): ClusterNode & { boot: () => Promise<void> } => {
    const name = `n${i + 1}`;
    const config = join(dir, `${name}.conf`);
    writeFileSync(
      config,
      [
        `server_name: ${name}`,
        `listen: ${host}:${p.client}`,
        `jetstream { store_dir: "${join(dir, name)}" }`,
        `cluster { name: agent-test, listen: ${host}:${p.cluster}, routes: [${routes}] }`,
        `mqtt { listen: ${host}:${p.mqtt}, stream_replicas: ${size}, consumer_replicas: ${size} }`,
      ].join('\n'),
    );
    const proc = supervise(`nats-server ${name}`, () => spawn(NATS_SERVER, ['-c', config], { stdio: ['ignore', 'pipe', 'pipe'] }), { host, port: p.mqtt, timeoutMs: 20_000 });
    const kill = (): Promise<void> => proc.signal('SIGKILL');
    return { name, host, port: p.mqtt, url: `mqtt://${host}:${p.mqtt}`, log: proc.log, running: proc.running, kill, stop: () => proc.signal('SIGTERM'), start: proc.start, dispose: kill, boot: proc.start };
  });
  const dispose = async (): Promise<void> => {
    for (const n of nodes) await n.kill();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    // All at once: a node's MQTT listener may wait for the cluster (JetStream's meta leader) to form.
    await Promise.all(nodes.map((n) => n.boot()));
  } catch (err) {
    const logs = nodes.map((n) => `${n.name}:\n${n.log()}`).join('\n');
    await dispose();
    throw new Error(`the NATS cluster did not start: ${(err as Error).message}\n${logs}`);
  }
  return { nodes, dispose };
}
