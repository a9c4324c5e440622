import { randomBytes, randomInt } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adminClient, spawnDevCloud, type AdminClient, type SpawnedDevCloud } from '../helpers/devcloud.js';
import { requireBuilt, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { canMakeNetns, NetnsLab } from '../helpers/netns.js';
import { tempDirs } from '../helpers/tmp.js';

// Issue 14, part 3, on the built agent: the agent in a network namespace of its own, the devcloud in
// another, two veth links between them (eth1 unmetered, wwan0 metered), and the default route switched
// from one to the other. The test reaches each namespace over a third veth from its own.
const BUDGET = 200 * 1024;
const ALLOWED = ['state', 'events', 'jobs', 'shadow', 'telemetry'];

const dirs = tempDirs();
const lab = new NetnsLab();
let cloud: SpawnedDevCloud | undefined;
let agent: AgentProcess | undefined;

// 10.<a>.<b..b+4>.0: b, eth1; b+1, wwan0; b+2, the test to the agent; b+3, the test to the cloud; b+4, the cloud's address.
const a = randomInt(100, 200);
const b = randomInt(0, 50) * 4;
const net = (i: number, host: number): string => `10.${a}.${b + i}.${host}`;
const CLOUD_ADDRESS = net(4, 1);

let agentNs = '';
let cloudNs = '';

beforeAll(() => {
  requireBuilt();
  // Loudly, not skipped (scripts/test-services.mjs installs iproute2).
  if (!canMakeNetns()) throw new Error('this test makes network namespaces and veth pairs: it needs root and iproute2 (ip)');
  agentNs = lab.namespace('agent');
  cloudNs = lab.namespace('cloud');
  lab.link({ ns: agentNs, name: 'eth1', addr: `${net(0, 2)}/30` }, { ns: cloudNs, name: 'c-eth1', addr: `${net(0, 1)}/30` });
  lab.link({ ns: agentNs, name: 'wwan0', addr: `${net(1, 2)}/30` }, { ns: cloudNs, name: 'c-wwan0', addr: `${net(1, 1)}/30` });
  lab.link({ name: `ta${lab.id}`, addr: `${net(2, 1)}/30` }, { ns: agentNs, name: 'ctl0', addr: `${net(2, 2)}/30` });
  lab.link({ name: `tc${lab.id}`, addr: `${net(3, 1)}/30` }, { ns: cloudNs, name: 'ctl0', addr: `${net(3, 2)}/30` });
  // The cloud's address is on neither link: which one carries it is the agent's default route alone.
  lab.exec(cloudNs, 'ip', 'addr', 'add', `${CLOUD_ADDRESS}/32`, 'dev', 'lo');
  lab.exec(agentNs, 'ip', 'route', 'add', 'default', 'via', net(1, 1), 'dev', 'wwan0');
});

afterAll(async () => {
  try {
    await agent?.stop('SIGKILL');
    await cloud?.kill();
  } finally {
    lab.cleanup();
    dirs.cleanup();
  }
});

/** rx + tx of the agent's wwan0, as the kernel counts them (what the carrier would bill). */
function wwanBytes(): number {
  const read = (f: string): number => Number(lab.exec(agentNs, 'cat', `/sys/class/net/wwan0/statistics/${f}`).trim());
  return read('rx_bytes') + read('tx_bytes');
}

interface LinkView {
  interface: string | null;
  metered: boolean;
  budget: { period: string; limitBytes: number; usedBytes: number; remainingBytes: number | null; resetsAt: number; exhausted: boolean };
  held: Record<string, number>;
}

it(
  'on wwan0 only the allowed channels go, within the budget (the interface counters say so); once the route is on eth1 everything arrives',
  async () => {
    const devcloud = await spawnDevCloud({ prefix: lab.prefix(cloudNs), args: ['--host', '0.0.0.0'] });
    cloud = devcloud;
    const admin: AdminClient = adminClient(`http://${net(3, 2)}:${devcloud.adminPort}`);
    const dev = { uuid: `budget-${lab.id}`, apiKey: 'budget-key-0123456789' };
    await admin.createDevice(dev);
    await admin.setTarget(dev.uuid, { version: 1, apps: {} });
    const before = wwanBytes();
    const dataDir = dirs.make();
    const start = async (): Promise<AgentProcess> => spawnAgent({
      dataDir,
      prefix: lab.prefix(agentNs),
      config: {
        device: dev,
        api: { host: net(2, 2), port: 0 },
        cloud: { apiUrl: `http://${CLOUD_ADDRESS}:${devcloud.port}`, requestTimeoutMs: 5_000 },
        // System metrics every second: a channel that is not sent on the metered link.
        features: { metrics: true, jobs: false },
        settings: {
          // Polls cost bytes the gate does not stop (docs/connectivity.md, worst-case overrun): only the
          // start's polls fall in this test's time on wwan0, so the bound checked is the outbox's own.
          pollIntervalMs: 600_000,
          metricsIntervalMs: 1_000,
          network: { meteredChannels: ALLOWED, meteredBudgetBytes: BUDGET, meteredBudgetPeriod: 'day', routeCheckIntervalMs: 500 },
          offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 2, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 },
        },
      },
    });
    agent = await start();
    let running = agent;
    const link = async (): Promise<LinkView> => ((await running.get('/v2/connection')).body as { link: LinkView }).link;
    await waitFor('the agent on wwan0, metered', async () => {
      const l = await link();
      return l.interface === 'wwan0' && l.metered;
    }, 30_000);

    // Telemetry (allowed here) well past the budget: 600 messages of ~1 KiB that do not compress.
    const ids: string[] = [];
    for (let batch = 0; batch < 12; batch++) {
      const items = Array.from({ length: 50 }, (_, i) => ({ stream: 'vibration', payload: { seq: batch * 50 + i, data: randomBytes(720).toString('base64') } }));
      const r = await running.send('POST', '/v2/telemetry', items);
      expect(r.status).toBe(202);
      ids.push(...(r.body as { ids: string[] }).ids);
    }
    const spent = await waitFor('the budget spent', async () => {
      const l = await link();
      return l.budget.exhausted && (l.held['telemetry'] ?? 0) > 0 && (l.held['metrics'] ?? 0) > 0 ? l : undefined;
    }, 60_000);
    const received = await admin.allMessages(dev.uuid);
    const usedOnWwan = wwanBytes() - before;
    expect(new Set(received.map((m) => m.channel)).size).toBeGreaterThan(0);
    expect(received.every((m) => ALLOWED.includes(m.channel))).toBe(true);
    expect(received.filter((m) => m.channel === 'telemetry').length).toBeLessThan(ids.length);
    expect(usedOnWwan).toBeLessThanOrEqual(BUDGET);
    expect(spent.budget).toMatchObject({ period: 'day', limitBytes: BUDGET });
    expect(spent.budget.usedBytes).toBeGreaterThan(BUDGET * 0.8);
    expect(spent.budget.usedBytes).toBeLessThanOrEqual(usedOnWwan);
    const metrics = String((await running.get('/metrics')).body);
    expect(metrics).toMatch(/iotistic_link_metered\{interface="wwan0"\} 1/);
    expect(metrics).toMatch(new RegExp(`iotistic_link_budget_limit_bytes ${BUDGET}`));
    expect(metrics).toMatch(/iotistic_link_held_messages\{channel="telemetry"\} \d+/);
    // Nothing more goes while it stays spent.
    const telemetryOnWwan = received.filter((m) => m.channel === 'telemetry').length;
    let last = -1;
    await waitFor('the use standing still', async () => {
      const used = (await link()).budget.usedBytes;
      const still = used === last;
      last = used;
      return still;
    }, 30_000, 1_000);
    expect(wwanBytes() - before).toBeLessThanOrEqual(BUDGET);
    console.log(JSON.stringify({ budget: BUDGET, agentCounted: spent.budget.usedBytes, interfaceCounted: usedOnWwan, interfaceAfterWait: wwanBytes() - before, telemetrySentOnWwan: telemetryOnWwan, telemetryQueued: ids.length, held: spent.held }));

    // A restart on the metered link: the use is still there (SQLite), so nothing more of the outbox goes.
    await running.stop('SIGTERM');
    agent = running = await start();
    await waitFor('the restarted agent on wwan0, its budget spent', async () => {
      const l = await link();
      return l.interface === 'wwan0' && l.budget.exhausted ? l : undefined;
    }, 30_000);
    const restarted = await link();
    // Nothing lost across the restart: the use read now is the interface's growth since the first start.
    expect(restarted.budget.usedBytes).toBeGreaterThanOrEqual(spent.budget.usedBytes);
    expect(restarted.budget.usedBytes).toBeLessThanOrEqual(wwanBytes() - before);
    expect((await admin.allMessages(dev.uuid)).filter((m) => m.channel === 'telemetry').length).toBe(telemetryOnWwan);
    const status = await runCli(['status', '--api', running.apiUrl, '--key', running.key]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/^ {2}link +wwan0 \(metered\): [\d.]+ KiB of 200\.0 KiB today \(spent\), resets \S+ \S+; held: .*telemetry \d+/m);
    console.log(JSON.stringify({ afterRestart: { agentCounted: restarted.budget.usedBytes, interfaceCounted: wwanBytes() - before } }));

    // The unmetered link comes back: everything arrives, nothing missing.
    const wwanAtSwitch = wwanBytes();
    lab.exec(agentNs, 'ip', 'route', 'replace', 'default', 'via', net(0, 1), 'dev', 'eth1');
    await waitFor('the agent on eth1', async () => {
      const l = await link();
      return l.interface === 'eth1' && !l.metered;
    }, 10_000);
    await waitFor('every telemetry message at the cloud', async () => {
      const got = new Set((await admin.allMessages(dev.uuid)).map((m) => m.id));
      return ids.every((id) => got.has(id));
    }, 60_000);
    const all = await admin.allMessages(dev.uuid);
    expect(all.some((m) => m.channel === 'metrics')).toBe(true);
    const telemetry = all.filter((m) => m.channel === 'telemetry');
    expect(new Set(telemetry.map((m) => m.id)).size).toBe(ids.length);
    const after = await link();
    expect(after.held).toEqual({});
    // The kept-alive connections were renewed on the switch: no answer comes back over wwan0 to its old address.
    const wwanAfterSwitch = wwanBytes() - wwanAtSwitch;
    expect(wwanAfterSwitch).toBeLessThan(4_096);
    console.log(JSON.stringify({ telemetryDelivered: new Set(telemetry.map((m) => m.id)).size, telemetryStored: telemetry.length, wwanAfterSwitch }));
  },
  180_000,
);
