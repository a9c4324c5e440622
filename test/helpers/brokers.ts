import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from '../../devcloud/ports.js';

/**
 * Private MQTT brokers that speak MQTT 3.1.1 only, for the protocol negotiation tests: a NATS server
 * with its MQTT listener, and a RabbitMQ node with the MQTT plugin. Each has its own ports and data
 * dirs (RabbitMQ also its own node name, Erlang distribution port and epmd), never the system's.
 */

export interface PrivateBroker {
  host: string;
  /** The MQTT listener. */
  port: number;
  url: string;
  log(): string;
  dispose(): Promise<void>;
}

export const NATS_SERVER = '/usr/sbin/nats-server';
export const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

function watch(child: ChildProcess): { log: () => string; exited: Promise<void> } {
  let log = '';
  child.stdout?.setEncoding('utf8').on('data', (t: string) => (log += t));
  child.stderr?.setEncoding('utf8').on('data', (t: string) => (log += t));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { log: () => log, exited };
}

/** NATS (2.9 here) with JetStream, which its MQTT listener needs. It refuses an MQTT 5 CONNECT with return code 1. */
export async function startNats(): Promise<PrivateBroker> {
  const host = '127.0.0.1';
  const dir = mkdtempSync(join(tmpdir(), 'nats-'));
  const [clientPort, port] = [await freePort(), await freePort()];
  const config = join(dir, 'nats.conf');
  writeFileSync(
    config,
    [`listen: ${host}:${clientPort}`, 'server_name: agent-test', `jetstream { store_dir: "${join(dir, 'js')}" }`, `mqtt { listen: ${host}:${port} }`].join('\n'),
  );
  const child = spawn(NATS_SERVER, ['-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  const { log, exited } = watch(child);
  const dispose = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(host, port, 20_000, () => child.exitCode === null);
  } catch (err) {
    await dispose();
    throw new Error(`nats-server did not start: ${(err as Error).message}\n${log()}`);
  }
  return { host, port, url: `mqtt://${host}:${port}`, log, dispose };
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
    RABBITMQ_NODENAME: `agenttest${process.pid}@localhost`,
    RABBITMQ_NODE_PORT: String(amqpPort),
    RABBITMQ_DIST_PORT: String(distPort),
    ERL_EPMD_PORT: String(epmdPort),
    RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(dir, 'log'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
    RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq'),
    RABBITMQ_PID_FILE: join(dir, 'pid'),
  };
  const child = spawn(RABBITMQ_SERVER, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const { log, exited } = watch(child);
  const dispose = async (): Promise<void> => {
    const pidFile = join(dir, 'pid');
    const beam = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : NaN;
    if (Number.isInteger(beam) && beam > 0) {
      try {
        process.kill(beam, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
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
    await waitForPort(host, port, 90_000, () => child.exitCode === null, 250);
  } catch (err) {
    await dispose();
    throw new Error(`rabbitmq did not start: ${(err as Error).message}\n${log()}`);
  }
  return { host, port, url: `mqtt://${host}:${port}`, log, dispose };
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
  const nodes = ports.map((p, i): ClusterNode & { exited: Promise<void> } => {
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
    const child = spawn(NATS_SERVER, ['-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    const { log, exited } = watch(child);
    const running = (): boolean => child.exitCode === null && child.signalCode === null;
    const kill = async (): Promise<void> => {
      if (running()) child.kill('SIGKILL');
      await exited;
    };
    return { name, host, port: p.mqtt, url: `mqtt://${host}:${p.mqtt}`, log, running, kill, dispose: kill, exited };
  });
  const dispose = async (): Promise<void> => {
    for (const n of nodes) await n.kill();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const n of nodes) await waitForPort(host, n.port, 20_000, n.running);
  } catch (err) {
    const logs = nodes.map((n) => `${n.name}:\n${n.log()}`).join('\n');
    await dispose();
    throw new Error(`the NATS cluster did not start: ${(err as Error).message}\n${logs}`);
  }
  return { nodes, dispose };
}
