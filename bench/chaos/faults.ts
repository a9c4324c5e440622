import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../../devcloud/ports.js';
import type { Random } from '../../src/util/random.js';
import type { AgentUnderTest, Uplink } from './agent.js';
import { fillDisk } from './disk.js';
import { hostileTarget, type HostileKind } from './targets.js';
import type { World } from './world.js';

/**
 * The fault kinds of the campaign and how each is injected. A fault returns its record: what was
 * done to whom, when it ended (recovery is measured from there), and `findings` when the agent did
 * not do what it must right away (a refused second instance, the same uuid after a corruption...).
 */

export const FAULT_KINDS = [
  'agent-sigkill',
  'broker-kill',
  'devcloud-kill',
  'blackhole-http',
  'blackhole-mqtt',
  'reset-http',
  'reset-mqtt',
  'latency-http',
  'latency-mqtt',
  'disk-full',
  'db-corrupt',
  'second-instance',
  'target-hostile-names',
  'target-huge',
  'target-deep',
  'clock-step',
] as const;

export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultRecord {
  kind: FaultKind;
  /** The agent or endpoint hit. */
  target: string;
  at: number;
  endAt: number;
  /** Agents whose telemetry path the fault was on (recovery is measured for them). */
  affects: Uplink[];
  notes: string[];
  /** What the agent did that it must not (empty: nothing seen). */
  findings: string[];
}

/** Free bytes left in the "disk low" phase: under the default minFreeDiskBytes (64 MiB). */
const DISK_LOW_BYTES = 32 * 1_048_576;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Faults {
  private targetVersion = 1_000;

  constructor(
    private readonly world: World,
    private readonly random: Random,
    /** Telemetry an agent acknowledged so far (both producers), to see it accept again. */
    private readonly acceptedBy: (agent: Uplink) => number,
  ) {}

  async inject(kind: FaultKind): Promise<FaultRecord> {
    const rec: FaultRecord = { kind, target: '', at: Date.now(), endAt: 0, affects: [], notes: [], findings: [] };
    try {
      await this.run(kind, rec);
    } catch (err) {
      rec.findings.push(`the fault could not be injected as planned: ${(err as Error).message}`);
    }
    rec.endAt = Date.now();
    return rec;
  }

  private between(min: number, max: number): number {
    return Math.round(min + this.random() * (max - min));
  }

  private pickAgent(): AgentUnderTest {
    const agents = this.world.agents;
    return agents[Math.floor(this.random() * agents.length)] as AgentUnderTest;
  }

  private async run(kind: FaultKind, rec: FaultRecord): Promise<void> {
    const w = this.world;
    switch (kind) {
      case 'agent-sigkill':
        return this.onAgent(rec, async (a) => {
          await a.kill();
          await this.restart(a, rec);
        });
      case 'broker-kill': {
        rec.target = 'mosquitto';
        rec.affects = ['mqtt'];
        const down = this.between(2_000, 6_000);
        await w.restartBroker(down);
        rec.notes.push(`down ${down} ms`);
        return;
      }
      case 'devcloud-kill': {
        rec.target = 'devcloud';
        rec.affects = ['http', 'mqtt'];
        const down = this.between(2_000, 6_000);
        await w.restartDevcloud(down);
        rec.notes.push(`down ${down} ms`);
        return;
      }
      case 'blackhole-http':
      case 'blackhole-mqtt':
      case 'reset-http':
      case 'reset-mqtt':
      case 'latency-http':
      case 'latency-mqtt':
        return this.proxyFault(kind, rec);
      case 'disk-full':
        return this.onAgent(rec, (a) => this.diskFull(a, rec));
      case 'db-corrupt':
        return this.onAgent(rec, (a) => this.dbCorrupt(a, rec));
      case 'second-instance':
        return this.onAgent(rec, (a) => this.secondInstance(a, rec));
      case 'target-hostile-names':
      case 'target-huge':
      case 'target-deep':
        return this.onAgent(rec, (a) => this.hostileTarget(a, kind.slice('target-'.length) as HostileKind, rec));
      case 'clock-step':
        return this.onAgent(rec, (a) => this.clockStep(a, rec));
    }
  }

  /** Faults on the way to an endpoint: the proxy in front of the device API or the broker. */
  private async proxyFault(kind: FaultKind, rec: FaultRecord): Promise<void> {
    const [proxy, uplink] = kind.endsWith('-http') ? [this.world.httpProxy, 'http' as const] : [this.world.mqttProxy, 'mqtt' as const];
    rec.target = `${uplink} proxy`;
    rec.affects = [uplink];
    if (kind.startsWith('blackhole-')) {
      // MQTT: longer than 1.5 x keep-alive (5 s), so the watchdog must find the dead connection.
      const hold = uplink === 'mqtt' ? this.between(9_000, 12_000) : this.between(6_000, 10_000);
      proxy.blackhole('both', { newConnections: true });
      await sleep(hold);
      // A forgotten connection never comes back: drop the held ones, new ones pass again.
      proxy.reset();
      proxy.pass();
      rec.notes.push(`accepted and never answered for ${hold} ms`);
    } else if (kind.startsWith('reset-')) {
      // Often, for a few seconds, with a little latency so requests and publishes are cut in
      // flight, not only idle sockets.
      const hold = this.between(3_000, 6_000);
      let resets = 0;
      proxy.delay(200);
      for (const t0 = Date.now(); Date.now() - t0 < hold; ) {
        resets += proxy.connections;
        proxy.reset();
        await sleep(250);
      }
      proxy.pass();
      rec.notes.push(`every connection reset every 250 ms for ${hold} ms (${resets} resets)`);
    } else {
      const ms = this.between(300, 2_000);
      const hold = this.between(4_000, 8_000);
      proxy.delay(ms);
      await sleep(hold);
      proxy.pass();
      rec.notes.push(`${ms} ms each way for ${hold} ms`);
    }
  }


  private async onAgent(rec: FaultRecord, f: (a: AgentUnderTest) => Promise<void>): Promise<void> {
    const a = this.pickAgent();
    rec.target = `agent ${a.name}`;
    rec.affects = [a.name as Uplink];
    await f(a);
  }

  private async restart(a: AgentUnderTest, rec: FaultRecord): Promise<boolean> {
    const s = await a.start();
    if (s.ok) rec.notes.push(`healthy ${s.ms} ms after start`);
    else rec.findings.push(`start did not reach /v1/healthy: ${s.why ?? ''}`);
    return s.ok;
  }

  /**
   * Lowers the agent's free disk (its own tmpfs) under the default watermark, then fills it to the
   * last byte, restarts it on the full disk (after a kill -9 and after a clean stop), then frees it.
   */
  private async diskFull(a: AgentUnderTest, rec: FaultRecord): Promise<void> {
    const fillers = [fillDisk(a.spec.dataDir, DISK_LOW_BYTES, 'chaos-low')];
    // The agent can free space itself (a WAL checkpoint truncates the WAL): fill up again before each step.
    const topUp = (): void => void fillers.push(fillDisk(a.spec.dataDir, 0, `chaos-full-${fillers.length}`));
    try {
      const drops = a.drops().disk;
      let before = this.acceptedBy(a.name as Uplink);
      await sleep(this.between(3_000, 5_000));
      await a.pollQueue();
      rec.notes.push(`${DISK_LOW_BYTES / 1_048_576} MiB free: ${this.acceptedBy(a.name as Uplink) - before} acknowledged, ${a.drops().disk - drops} dropped for disk`);
      topUp();
      before = this.acceptedBy(a.name as Uplink);
      await sleep(this.between(3_000, 5_000));
      rec.notes.push(`full: ${this.acceptedBy(a.name as Uplink) - before} acknowledged`);
      // After a kill -9 the WAL keeps its blocks and a boot write may fit in them; after a clean
      // stop it is gone and any write at boot needs a block the disk does not have. Both happen.
      await a.kill();
      topUp();
      rec.notes.push('SIGKILL:');
      await this.restart(a, rec);
      await a.stop();
      topUp();
      rec.notes.push('clean stop:');
      await this.restart(a, rec);
      await sleep(1_000);
    } finally {
      for (const f of fillers) rmSync(f, { force: true });
    }
    const freedAt = Date.now();
    const base = this.acceptedBy(a.name as Uplink);
    while (this.acceptedBy(a.name as Uplink) === base && Date.now() - freedAt < 30_000) await sleep(100);
    if (this.acceptedBy(a.name as Uplink) > base) rec.notes.push(`accepting ${Date.now() - freedAt} ms after space returned`);
    else rec.findings.push('accepted nothing within 30 s after space returned');
  }

  /** A clean stop, pages of agent.db overwritten with garbage, a start: same identity, healthy. */
  private async dbCorrupt(a: AgentUnderTest, rec: FaultRecord): Promise<void> {
    const uuidBefore = a.uuids.at(-1);
    await a.stop();
    const pages = corruptPages(join(a.spec.dataDir, 'agent.db'), this.random);
    rec.notes.push(`overwrote pages ${pages.join(', ')} of agent.db`);
    if (!(await this.restart(a, rec))) return;
    const uuidAfter = a.uuids.at(-1);
    if (uuidAfter !== uuidBefore) rec.findings.push(`identity reset: uuid ${uuidBefore} became ${uuidAfter}`);
  }

  private async secondInstance(a: AgentUnderTest, rec: FaultRecord): Promise<void> {
    // Generous: on a loaded machine a start takes seconds before it reaches the lock; its API answering is what proves it ran.
    const r = await a.secondInstance(await freePort(), await freePort(), 60_000);
    if (r.exit === null) {
      rec.findings.push(`a second agent on the same data dir ${r.answered ? 'answered on its local API' : 'neither exited nor answered'} after ${r.ranMs} ms (killed): ${r.output.slice(-200)}`);
    }
    else if (r.exit === 0) rec.findings.push('a second agent on the same data dir exited 0');
    else rec.notes.push(`second instance exited ${r.exit} after ${r.ranMs} ms: ${r.output.slice(-160)}`);
    if (!a.running() || !(await a.healthy())) rec.findings.push('the first agent was not healthy after the second instance');
  }

  private async hostileTarget(a: AgentUnderTest, kind: HostileKind, rec: FaultRecord): Promise<void> {
    const uuid = a.uuids.at(-1);
    if (uuid === undefined) throw new Error(`agent ${a.name} never told its uuid`);
    const doc = hostileTarget(kind, ++this.targetVersion);
    const rssBefore = a.rssMiB();
    await this.world.admin.setTarget(uuid, doc);
    await a.post('/v1/update').catch(() => undefined);
    const health = await watchHealth(a, 6_000);
    rec.notes.push(
      `${kind} target (${JSON.stringify(doc).length.toLocaleString('en-US')} bytes); RSS ${rssBefore ?? '?'} -> ${a.rssMiB() ?? '?'} MiB; /v1/healthy slowest ${health.slowestMs} ms`,
    );
    if (health.failures > 0) rec.findings.push(`not healthy while taking the target (${health.failures} checks failed or took over 2 s)`);
    await a.kill();
    const benign = ++this.targetVersion;
    await this.world.admin.setTarget(a.uuids.at(-1) ?? uuid, { version: benign, apps: {} });
    if (!(await this.restart(a, rec))) await this.repairByHand(a, benign, rec);
    await a.post('/v1/update').catch(() => undefined);
  }

  /**
   * What an operator would do for a bricked agent, so the rest of the campaign still has it (the
   * finding stands): delete the workloads' files, start it, let it take the harmless target the
   * cloud now has, and delete them once more (the stored hostile target made them again).
   */
  private async repairByHand(a: AgentUnderTest, benignVersion: number, rec: FaultRecord): Promise<void> {
    const services = join(a.spec.dataDir, 'services');
    await a.kill();
    rmSync(services, { recursive: true, force: true });
    if ((await a.start()).ok) {
      await a.post('/v1/update').catch(() => undefined);
      const t0 = Date.now();
      while (Date.now() - t0 < 20_000 && (await targetVersion(a)) !== benignVersion) await sleep(250);
      await a.kill();
      rmSync(services, { recursive: true, force: true });
    }
    const again = await a.start();
    rec.notes.push(`repaired by hand (deleted services/): ${again.ok ? `healthy ${again.ms} ms after start` : `still not healthy: ${again.why ?? ''}`}`);
  }

  /** The agent's wall clock jumps (libfaketime reads the step from its file), then jumps back. */
  private async clockStep(a: AgentUnderTest, rec: FaultRecord): Promise<void> {
    const step = this.random() < 0.5 ? '+2h' : '-2h';
    writeFileSync(a.clockFile, `${step}\n`);
    const hold = this.between(6_000, 10_000);
    const health = await watchHealth(a, hold);
    writeFileSync(a.clockFile, '+0\n');
    rec.notes.push(`wall clock ${step} for ${hold} ms, then back; /v1/healthy slowest ${health.slowestMs} ms`);
    if (health.failures > 0) rec.findings.push(`not healthy while its clock was stepped (${health.failures} checks failed or took over 2 s)`);
  }
}

/** Asks `/v1/healthy` every 0.5 s for `ms`: how many checks failed (or took over 2 s), and the slowest answer. */
async function watchHealth(a: AgentUnderTest, ms: number): Promise<{ failures: number; slowestMs: number }> {
  let failures = 0;
  let slowestMs = 0;
  for (const t0 = Date.now(); Date.now() - t0 < ms; ) {
    const t = Date.now();
    if (!(await a.healthy())) failures++;
    slowestMs = Math.max(slowestMs, Date.now() - t);
    await sleep(500);
  }
  return { failures, slowestMs };
}

async function targetVersion(a: AgentUnderTest): Promise<number | undefined> {
  try {
    const body = (await a.get('/v2/state')).body as { target?: { version?: number }; state?: { target?: { version?: number } } };
    return body.target?.version ?? body.state?.target?.version;
  } catch {
    return undefined;
  }
}

/**
 * Overwrites up to 8 pages (never the header page) with random bytes: half among the first ones,
 * where the schema's tables and their roots usually are, half anywhere. Returns their numbers.
 */
export function corruptPages(dbPath: string, random: Random): number[] {
  const fd = openSync(dbPath, 'r+');
  try {
    const header = Buffer.alloc(18);
    readSync(fd, header, 0, 18, 0);
    const raw = header.readUInt16BE(16);
    const pageSize = raw === 1 ? 65_536 : raw || 4_096;
    const count = Math.floor(statSync(dbPath).size / pageSize);
    if (count < 2) return [];
    const pages = new Set<number>();
    const want = Math.min(8, count - 1);
    const early = Math.min(count - 1, 12);
    while (pages.size < want) pages.add(2 + Math.floor(random() * (pages.size < want / 2 ? early : count - 1)));
    for (const p of pages) writeSync(fd, randomBytes(pageSize), 0, pageSize, (p - 1) * pageSize);
    return [...pages].sort((x, y) => x - y);
  } finally {
    closeSync(fd);
  }
}
