import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FaultProxy } from '../../devcloud/fault-proxy.js';
import { freePort, startMosquitto, type Mosquitto } from '../../devcloud/mosquitto.js';
import { adminClient, spawnDevCloud, type AdminClient, type SpawnedDevCloud } from '../../devcloud/spawn.js';
import { AgentUnderTest, LIBFAKETIME, type Uplink } from './agent.js';
import { MqttCloudStore } from './cloud-store.js';

/**
 * Everything a chaos run starts: the devcloud (SQLite file, so a kill keeps what it stored), a
 * private Mosquitto (persistence on), a fault proxy in front of each (the agents only ever reach
 * the cloud through them), the cloud-side MQTT subscriber, and two agents, each on its own small
 * tmpfs data dir: `http` sends its telemetry over the HTTP device API, `mqtt` over the broker (and
 * the rest over HTTP). Preconditions that are not met fail the run; nothing is skipped.
 */

export const DISK_BYTES = 256 * 1024 * 1024;
/** The devcloud must take the huge target documents the campaign sends. */
const DEVCLOUD_BODY_LIMIT = 64 * 1024 * 1024;

export class World {
  readonly agents: AgentUnderTest[] = [];
  private readonly mounts: string[] = [];

  private constructor(
    readonly runDir: string,
    public devcloud: SpawnedDevCloud,
    readonly devcloudData: string,
    readonly admin: AdminClient,
    readonly broker: Mosquitto,
    readonly httpProxy: FaultProxy,
    readonly mqttProxy: FaultProxy,
    readonly cloudMqtt: MqttCloudStore,
  ) {}

  static checkPreconditions(): void {
    const problems: string[] = [];
    if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
      problems.push(`the disk-full fault mounts a tmpfs as each agent's data dir, which needs root (running as uid ${process.getuid?.()})`);
    }
    if (!existsSync(LIBFAKETIME)) problems.push(`the clock-step fault runs the agents under libfaketime: ${LIBFAKETIME} is missing (apt-get install -y faketime)`);
    if (!existsSync('/usr/sbin/mosquitto')) problems.push('the broker faults need /usr/sbin/mosquitto (apt-get install -y mosquitto)');
    if (problems.length > 0) throw new Error(`chaos: cannot run every fault kind, refusing to run a partial campaign:\n  - ${problems.join('\n  - ')}`);
  }

  static async start(opts: { startDeadlineMs: number; keepRunDir?: string }): Promise<World> {
    World.checkPreconditions();
    const runDir = opts.keepRunDir ?? mkdtempSync(join(tmpdir(), 'iotistic-chaos-'));
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const devcloudData = join(runDir, 'devcloud.db');
    const devcloud = await spawnDevCloud({ dataFile: devcloudData, args: ['--body-limit', String(DEVCLOUD_BODY_LIMIT)] });
    const admin = adminClient(devcloud.adminUrl);
    const broker = await startMosquitto({ persistence: true, maxInflight: 0, verbose: false });
    const httpProxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: devcloud.port } });
    const mqttProxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: broker.port } });
    const cloudMqtt = await MqttCloudStore.start(broker.url);
    const world = new World(runDir, devcloud, devcloudData, admin, broker, httpProxy, mqttProxy, cloudMqtt);
    try {
      for (const name of ['http', 'mqtt'] as Uplink[]) world.agents.push(await world.makeAgent(name, opts.startDeadlineMs));
    } catch (err) {
      await world.close();
      throw err;
    }
    return world;
  }

  get cloudUrl(): string {
    return `http://127.0.0.1:${this.httpProxy.port}`;
  }

  agent(name: Uplink): AgentUnderTest {
    const a = this.agents.find((x) => x.name === name);
    if (!a) throw new Error(`no agent ${name}`);
    return a;
  }

  /** Kills the devcloud (SIGKILL) and starts it again on the same ports and data file. */
  async restartDevcloud(downMs: number): Promise<void> {
    await this.devcloud.kill();
    await new Promise((r) => setTimeout(r, downMs));
    this.devcloud = await spawnDevCloud({
      dataFile: this.devcloudData,
      port: this.devcloud.port,
      adminPort: this.devcloud.adminPort,
      args: ['--body-limit', String(DEVCLOUD_BODY_LIMIT)],
    });
  }

  /**
   * Kills the broker and starts it again. Agents are held off (the proxy refuses) until the cloud
   * subscriber is back, so what the broker takes from them has a subscriber to go to.
   */
  async restartBroker(downMs: number): Promise<void> {
    const connects = this.cloudMqtt.connectCount;
    await this.broker.kill();
    this.mqttProxy.refuse(true);
    this.mqttProxy.cut();
    await new Promise((r) => setTimeout(r, downMs));
    try {
      await this.broker.start();
      await this.cloudMqtt.reconnected(connects);
    } finally {
      this.mqttProxy.refuse(false);
    }
  }

  async close(): Promise<void> {
    for (const a of this.agents) await a.kill().catch(() => undefined);
    await this.cloudMqtt.close().catch(() => undefined);
    await this.httpProxy.close().catch(() => undefined);
    await this.mqttProxy.close().catch(() => undefined);
    await this.broker.dispose().catch(() => undefined);
    await this.devcloud.stop().catch(() => undefined);
    for (const m of this.mounts.splice(0)) {
      try {
        execFileSync('umount', ['-l', m]);
      } catch {
        // already gone
      }
    }
  }

  /** Removes the run dir (logs, ledgers); kept when a run fails, for the post-mortem. */
  removeRunDir(): void {
    rmSync(this.runDir, { recursive: true, force: true });
  }

  private async makeAgent(name: Uplink, startDeadlineMs: number): Promise<AgentUnderTest> {
    const dataDir = join(this.runDir, `data-${name}`);
    mkdirSync(dataDir, { mode: 0o700 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${DISK_BYTES},mode=0700`, 'tmpfs', dataDir]);
    this.mounts.push(dataDir);
    return new AgentUnderTest(
      {
        name,
        runDir: this.runDir,
        dataDir,
        apiPort: await freePort(),
        brokerPort: await freePort(),
        cloudUrl: this.cloudUrl,
        ...(name === 'mqtt' ? { mqttUrl: `mqtt://127.0.0.1:${this.mqttProxy.port}` } : {}),
        apiKey: `chaos-${name}-${randomBytes(12).toString('hex')}`,
        localKey: randomBytes(24).toString('hex'),
      },
      startDeadlineMs,
    );
  }
}
