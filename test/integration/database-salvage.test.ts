import BetterSqlite3 from 'better-sqlite3';
import { closeSync, existsSync, openSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { freePort } from '../../devcloud/ports.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

/**
 * Issue 21, fault 3: a database damaged while the agent was stopped. The agent starts at once (the
 * full check runs once it is up), finds the damage, and at the next start salvages what can be read:
 * the queued messages that survive reach the cloud with their original ids, and the quarantine is
 * visible in /v2/state, status, /metrics and as an event at the env.cloud.
 */

const env = agentsWithDevCloud();
const { dirs, agents } = env;

const PAGE = 4096;


/** The outbox's leaf pages in key order, each with the channels of the rows it holds. */
function outboxLeaves(path: string): { page: number; channels: Set<string> }[] {
  const db = new BetterSqlite3(path, { readonly: true });
  const leaves = db.prepare("SELECT pageno, ncell FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf' ORDER BY path").all() as { pageno: number; ncell: number }[];
  const rows = (db.prepare('SELECT channel FROM outbox ORDER BY seq').all() as { channel: string }[]).map((r) => r.channel);
  db.close();
  expect(leaves.reduce((n, l) => n + l.ncell, 0)).toBe(rows.length);
  let at = 0;
  return leaves.map((l) => {
    const channels = new Set(rows.slice(at, at + l.ncell));
    at += l.ncell;
    return { page: l.pageno, channels };
  });
}

function overwritePages(path: string, pages: readonly number[], fill: number): void {
  const fd = openSync(path, 'r+');
  for (const p of pages) writeSync(fd, Buffer.alloc(PAGE, fill), 0, PAGE, (p - 1) * PAGE);
  closeSync(fd);
}

/**
 * Overwrites `count` leaf pages of the outbox table with garbage, as a failing disk would: pages of
 * telemetry only, after the first leaf (the checks at open read the first and last rows), so within
 * the first batch a flush reads (flushBatchMessages, 500) and nothing else reads them (the start
 * reads the state report's row to replace it: damage there is found while starting,
 * `damagedWhereTheStartReads`).
 */
function damageOutboxFront(path: string, count: number): void {
  const leaves = outboxLeaves(path);
  expect(leaves.length).toBeGreaterThan(20);
  const onlyTelemetry = (i: number): boolean => leaves.slice(i, i + count).every((l) => l.channels.size === 1 && l.channels.has('telemetry'));
  let from = 1;
  while (from < 10 && !onlyTelemetry(from)) from++;
  expect(onlyTelemetry(from), `${count} leaves of telemetry only from leaf ${from}`).toBe(true);
  overwritePages(path, leaves.slice(from, from + count).map((l) => l.page), 0xa5);
}

/** A wait that fails says what the agent logged about its database and its loops. */
async function orTheLog<T>(agent: AgentProcess, wait: Promise<T>): Promise<T> {
  try {
    return await wait;
  } catch (err) {
    const lines = agent.records().filter((r) => /database|integrity|salvag|quarantin|restart|started|loop/.test(String(r.msg)));
    throw new Error(`${err instanceof Error ? err.message : String(err)}; the agent logged:\n${lines.map((r) => `${String(r.time)} ${String(r.msg)}`).join('\n')}\nstderr: ${agent.stderr()}`);
  }
}

interface DatabaseView {
  quarantine: { quarantinedTo: string; at: string; reason: string; recovered: number; lost: number; tables: Record<string, { recovered: number; lost: number | null }> } | null;
  quarantinedThisStart: boolean;
  integrity: { state: string; detail: string | null };
  salvagePending: string | null;
}
const databaseView = async (agent: AgentProcess): Promise<DatabaseView> => ((await agent.get('/v2/state')).body as { database: DatabaseView }).database;

/** Waits for a quarantine made at this start of the agent (after its restart to salvage, if it makes one). */
const quarantinedThisStart = (agent: AgentProcess): Promise<DatabaseView> =>
  orTheLog(
    agent,
    waitFor(
      'the quarantine and salvage',
      async () => {
        const v = await databaseView(agent);
        return v.quarantinedThisStart ? v : undefined;
      },
      30_000,
      200,
    ),
  );

/**
 * `vouched`: the damage is invisible to the clean-close marker (as silent media decay would be), so the
 * start checks nothing and the damage is found through a read that fails in use.
 */
async function damagedWhileStopped(vouched: boolean): Promise<void> {
  const dev = { uuid: `salvage-${process.pid}-${vouched ? 'v' : 'u'}`, apiKey: 'salvage-key-0123456789abcdef' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  const config = {
    device: dev,
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
    features: { metrics: false },
    settings: { pollIntervalMs: 60_000, reportIntervalMs: 500, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
  };
  // A fixed port: the agent's in-process restart listens on the same address again.
  const port = await freePort();
  const start = async (): Promise<AgentProcess> => {
    const a = await spawnAgent({ dataDir, config: { ...config, api: { port } } });
    agents.push(a);
    return a;
  };

  // Messages queued while the cloud is unreachable.
  await env.cloud.admin.setFaults({ refuse: true });
  const first = await start();
  const accepted: string[] = [];
  for (let b = 0; b < 20; b++) {
    const r = await first.send('POST', '/v2/telemetry', Array.from({ length: 100 }, (_, i) => ({ stream: 'temp', payload: { b, i, pad: 'p'.repeat(200) } })));
    expect(r.status).toBe(202);
    accepted.push(...(r.body as { ids: string[] }).ids);
  }
  expect((await first.stop()).code).toBe(0);

  // Damaged while stopped. The start is quick (the full check runs once the agent is up); the check
  // finds the damage and the agent restarts itself to quarantine and salvage.
  const dbPath = join(dataDir, 'agent.db');
  damageOutboxFront(dbPath, 4);
  if (vouched) {
    for (const suffix of ['-wal', '-shm']) rmSync(dbPath + suffix, { force: true });
    const st = statSync(dbPath);
    writeFileSync(`${dbPath}.clean`, `${st.size}:${st.mtimeMs}`);
  }
  const second = await start();
  const d = await quarantinedThisStart(second);
  // The log is written asynchronously: on a busy machine its lines may arrive after the API's answer.
  const said = (text: string): boolean => second.records().some((r) => String(r.msg).includes(text));
  await orTheLog(second, waitFor('the finding and the restart in the log', () => said('failed its integrity check') && said('restarting the agent to quarantine and salvage'), 30_000));
  if (vouched) expect(said('database error in use')).toBe(true);
  expect((await second.get('/v1/healthy')).status).toBe(200);
  expect(d.salvagePending).toBeNull();
  expect(d.quarantine?.reason).toMatch(/integrity check/);
  expect(d.integrity.state).not.toBe('failed');
  expect(existsSync(d.quarantine!.quarantinedTo)).toBe(true);
  const outbox = d.quarantine!.tables.outbox!;
  expect(outbox.lost).toBeGreaterThan(0);
  const acceptedSet = new Set(accepted);
  const ro = new BetterSqlite3(dbPath, { readonly: true });
  const survivors = (ro.prepare("SELECT id FROM outbox WHERE channel = 'telemetry'").all() as { id: string }[]).map((r) => r.id);
  ro.close();
  expect(survivors.every((id) => acceptedSet.has(id))).toBe(true);
  expect(survivors.length).toBeGreaterThan(accepted.length - 200);
  expect(survivors.length).toBeLessThan(accepted.length);

  // Status and metrics say so.
  const status = await runCli(['status', '--api', second.apiUrl, '--data-dir', dataDir]);
  expect(status.code).toBe(0);
  expect(status.stdout).toContain('quarantined');
  expect(status.stdout).toContain(d.quarantine!.quarantinedTo);
  const metrics = (await second.get('/metrics')).body as string;
  expect(metrics).toMatch(/iotistic_database_quarantined_timestamp_seconds [1-9]/);
  expect(metrics).toContain(`iotistic_database_salvaged_rows{table="outbox",outcome="lost"} ${outbox.lost}`);
  // Each lost message is a counted drop of its channel (the outbox_lane index still named them).
  const lostCount = accepted.length - survivors.length;
  expect(outbox.lost).toBeGreaterThanOrEqual(lostCount);
  const queue = (await second.get('/v2/queue')).body as { channels: Record<string, { dropped: number; drops: Record<string, number> }> };
  expect(queue.channels['telemetry']).toMatchObject({ dropped: lostCount, drops: { corrupt: lostCount, count: 0 } });
  expect(metrics).toContain(`iotistic_queue_drops_total{channel="telemetry",reason="corrupt"} ${lostCount}`);
  // The damaged pages may hold rows of other tables or channels too: the line names each; telemetry's part is what is checked.
  const lossLines = second.records().map((r) => String(r.msg)).filter((m) => /^outbox: \d+ messages were lost with the damaged database \(/.test(m));
  // (Channels in name order: the agent's own log chunks, `logs: n`, may come before telemetry.)
  expect(lossLines, lossLines.join('\n')).toEqual([expect.stringMatching(new RegExp(`[(] ?(?:[a-z]+: \\d+; )*telemetry: ${lostCount}[;)]`))]);

  // The cloud comes back: every surviving message arrives with its original id, and the event too.
  await env.cloud.admin.clearFaults();
  const event = await waitFor(
    'the quarantine event and the salvaged messages at the devcloud',
    () => {
      const all = env.storedMessages(dev.uuid);
      const telemetry = all.filter((m) => m.channel === 'telemetry');
      const ev = all.find((m) => m.channel === 'events' && (m.payload as { type?: string }).type === 'database-quarantined');
      return ev && telemetry.length >= survivors.length ? { ev, telemetry } : undefined;
    },
    60_000,
    250,
  );
  // Exactly the survivors, by their original ids: nothing lost from them, nothing invented.
  expect(new Set(event.telemetry.map((m) => m.id))).toEqual(new Set(survivors));
  expect(event.ev.payload).toMatchObject({ type: 'database-quarantined', quarantinedTo: d.quarantine!.quarantinedTo, tables: { outbox: { recovered: outbox.recovered, lost: outbox.lost } } });
}

/** The interior pages of the outbox's b-tree (its root among them), overwritten: every leaf under them is intact. */
function damageOutboxInterior(path: string): number {
  const db = new BetterSqlite3(path, { readonly: true });
  const interior = (db.prepare("SELECT pageno FROM dbstat WHERE name = 'outbox' AND pagetype = 'internal'").all() as { pageno: number }[]).map((r) => r.pageno);
  db.close();
  expect(interior.length).toBeGreaterThan(0);
  const fd = openSync(path, 'r+');
  for (const p of interior) writeSync(fd, Buffer.alloc(PAGE, 0x5a), 0, PAGE, (p - 1) * PAGE);
  closeSync(fd);
  return interior.length;
}

/** The whole queue survives damage that hides its pages from SQLite (the salvage reads the pages themselves). */
async function interiorDamaged(): Promise<void> {
  const dev = { uuid: `salvage-${process.pid}-i`, apiKey: 'salvage-key-0123456789abcdef' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  const port = await freePort();
  const config = {
    device: dev,
    api: { port },
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
    features: { metrics: false },
    settings: { pollIntervalMs: 60_000, reportIntervalMs: 500, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
  };
  await env.cloud.admin.setFaults({ refuse: true });
  const first = await spawnAgent({ dataDir, config });
  agents.push(first);
  const accepted: string[] = [];
  for (let b = 0; b < 20; b++) {
    const r = await first.send('POST', '/v2/telemetry', Array.from({ length: 100 }, (_, i) => ({ stream: 'temp', payload: { b, i, pad: 'p'.repeat(200) } })));
    expect(r.status).toBe(202);
    accepted.push(...(r.body as { ids: string[] }).ids);
  }
  expect((await first.stop()).code).toBe(0);
  damageOutboxInterior(join(dataDir, 'agent.db'));

  const second = await spawnAgent({ dataDir, config });
  agents.push(second);
  const d = await quarantinedThisStart(second);
  expect(d.quarantine!.tables.outbox).toMatchObject({ lost: 0 });
  await env.cloud.admin.clearFaults();
  const delivered = await waitFor('every accepted message at the devcloud', () => {
    const ids = new Set(env.storedMessages(dev.uuid).filter((m) => m.channel === 'telemetry').map((m) => m.id));
    return accepted.every((id) => ids.has(id)) ? ids : undefined;
  }, 60_000, 250);
  expect(delivered.size).toBe(accepted.length);
  const queue = (await second.get('/v2/queue')).body as { channels: Record<string, { drops: Record<string, number> }> };
  expect(queue.channels['telemetry']?.drops['corrupt']).toBe(0);
}

/**
 * Damage where the start itself reads: the page holding the queued state report, which a start's first
 * report replaces. The start fails on it, leaves the salvage marker and starts once more in the same
 * process, which quarantines and salvages the file: the device comes up, says so, and what survived
 * reaches the cloud.
 */
async function damagedWhereTheStartReads(): Promise<void> {
  const dev = { uuid: `salvage-${process.pid}-s`, apiKey: 'salvage-key-0123456789abcdef' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  const config = {
    device: dev,
    api: { port: await freePort() },
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
    features: { metrics: false },
    settings: { pollIntervalMs: 60_000, reportIntervalMs: 500, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 } },
  };
  await env.cloud.admin.setFaults({ refuse: true });
  // Two runs, each queueing telemetry: the second's start queues a new state report between them.
  const accepted: string[] = [];
  for (let run = 0; run < 2; run++) {
    const a = await spawnAgent({ dataDir, config });
    agents.push(a);
    for (let b = 0; b < 10; b++) {
      const r = await a.send('POST', '/v2/telemetry', Array.from({ length: 100 }, (_, i) => ({ stream: 'temp', payload: { run, b, i, pad: 'p'.repeat(200) } })));
      expect(r.status).toBe(202);
      accepted.push(...(r.body as { ids: string[] }).ids);
    }
    expect((await a.stop()).code).toBe(0);
  }
  const dbPath = join(dataDir, 'agent.db');
  const leaves = outboxLeaves(dbPath);
  const at = leaves.findIndex((l) => l.channels.has('state'));
  // Neither the first nor the last leaf: those the checks at open read, which is another path.
  expect(at, `the state report's leaf: ${at} of ${leaves.length}`).toBeGreaterThan(0);
  expect(at).toBeLessThan(leaves.length - 1);
  overwritePages(dbPath, [leaves[at]!.page], 0xc3);

  const second = await spawnAgent({ dataDir, config });
  agents.push(second);
  expect((await second.get('/v1/healthy')).status).toBe(200);
  const d = await databaseView(second);
  expect(d.quarantinedThisStart).toBe(true);
  expect(d.quarantine?.reason).toMatch(/^found while starting: /);
  const said = (text: string): boolean => second.records().some((r) => String(r.msg).includes(text));
  expect(said('found while starting): quarantining and salvaging it')).toBe(true);
  expect(said('restarting the agent')).toBe(false);
  const ro = new BetterSqlite3(dbPath, { readonly: true });
  const survivors = (ro.prepare("SELECT id FROM outbox WHERE channel = 'telemetry'").all() as { id: string }[]).map((r) => r.id);
  ro.close();
  const acceptedSet = new Set(accepted);
  expect(survivors.every((id) => acceptedSet.has(id))).toBe(true);
  // One page lost: at most the rows one page holds (~15 of these).
  expect(survivors.length).toBeGreaterThan(accepted.length - 30);

  await env.cloud.admin.clearFaults();
  const delivered = await waitFor('the survivors at the devcloud', () => {
    const ids = new Set(env.storedMessages(dev.uuid).filter((m) => m.channel === 'telemetry').map((m) => m.id));
    return survivors.every((id) => ids.has(id)) ? ids : undefined;
  }, 60_000, 250);
  expect(delivered.size).toBe(survivors.length);
}

describe('a corrupt database is salvaged and reported', () => {
  it('queued messages survive a damaged file and reach the cloud with their ids; the quarantine is visible', () => damagedWhileStopped(false), 90_000);

  it('the same when a clean close vouched for the damaged file: a read failing in use starts the check', () => damagedWhileStopped(true), 90_000);

  it("the outbox's interior pages overwritten: the leaves under them are read page by page, nothing is lost", () => interiorDamaged(), 90_000);

  it('the page of the outbox counters overwritten: the drops counted before come back from their copy', () => countersDamaged(), 90_000);

  it('damage where the start reads (the queued state report): the start salvages at once and comes up', () => damagedWhereTheStartReads(), 90_000);

  it('damage the checks at open do not see (the lane index): the start goes on, the background check finds it, and the salvage loses nothing', () => laneIndexDamaged(), 90_000);
});

/**
 * Leaf pages of the outbox's lane index overwritten while stopped: the checks at open read the tables'
 * first and last rows, not the indexes. A start once read the whole index to rebuild its ledger, and
 * that read failed the start, and every start after it (a bricked device, chaos soak 4). The start now
 * loads the ledger's persisted totals; the background check finds the damage and the agent restarts
 * itself to salvage.
 */
async function laneIndexDamaged(): Promise<void> {
  const dataDir = dirs.make();
  const port = await freePort();
  const config = { api: { port }, features: { metrics: false } };
  const first = await spawnAgent({ dataDir, config });
  agents.push(first);
  const accepted: string[] = [];
  for (let b = 0; b < 20; b++) {
    const r = await first.send('POST', '/v2/telemetry', Array.from({ length: 100 }, (_, i) => ({ stream: 'temp', payload: { b, i, pad: 'p'.repeat(200) } })));
    accepted.push(...(r.body as { ids: string[] }).ids);
  }
  expect((await first.stop()).code).toBe(0);
  const dbPath = join(dataDir, 'agent.db');
  const db = new BetterSqlite3(dbPath, { readonly: true });
  const leaves = (db.prepare("SELECT pageno FROM dbstat WHERE name = 'outbox_lane' AND pagetype = 'leaf' ORDER BY path").all() as { pageno: number }[]).map((r) => r.pageno);
  db.close();
  expect(leaves.length).toBeGreaterThan(4);
  const mid = Math.floor(leaves.length / 2);
  overwritePages(dbPath, leaves.slice(mid, mid + 2), 0x6b);

  const second = await spawnAgent({ dataDir, config });
  agents.push(second);
  expect((await second.get('/v1/healthy')).status).toBe(200);
  const d = await quarantinedThisStart(second);
  await waitFor('the finding in the log', () => second.records().some((r) => String(r.msg).includes('failed its integrity check')), 15_000);
  expect(d.quarantine?.reason).toMatch(/integrity check/);
  expect(d.salvagePending).toBeNull();
  // Only an index was hit: every row is read back, nothing is lost (the rows include what the
  // damaged run queued itself before the check found the damage: its start event).
  expect(d.quarantine!.tables.outbox).toMatchObject({ lost: 0 });
  expect(d.quarantine!.tables.outbox!.recovered).toBeGreaterThanOrEqual(accepted.length);
  expect(((await second.get('/v2/queue')).body as { channels: Record<string, { depth: number }> }).channels['telemetry']?.depth).toBe(accepted.length);
  // And the next start is an ordinary one.
  expect((await second.stop()).code).toBe(0);
  const third = await spawnAgent({ dataDir, config });
  agents.push(third);
  expect((await databaseView(third)).quarantinedThisStart).toBe(false);
}

/** Overwrites every page of one table (and of its indexes) with garbage. */
function damageTable(path: string, table: string): number {
  const db = new BetterSqlite3(path, { readonly: true });
  const pages = (db.prepare('SELECT pageno FROM dbstat WHERE name = ? OR name IN (SELECT name FROM sqlite_master WHERE type = \'index\' AND tbl_name = ?)').all(table, table) as { pageno: number }[]).map((r) => r.pageno);
  db.close();
  expect(pages.length).toBeGreaterThan(0);
  const fd = openSync(path, 'r+');
  for (const p of pages) writeSync(fd, Buffer.alloc(PAGE, 0x3c), 0, PAGE, (p - 1) * PAGE);
  closeSync(fd);
  return pages.length;
}

/**
 * The drops the outbox had counted (here: the oldest messages dropped at a full queue) live in one small
 * table; damage to its page must not erase them, or a device that lost nothing unaccounted would look as
 * if it had. They come back from `outbox-counters.json`.
 */
async function countersDamaged(): Promise<void> {
  const dev = { uuid: `salvage-${process.pid}-c`, apiKey: 'salvage-key-0123456789abcdef' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = dirs.make();
  const port = await freePort();
  const config = {
    device: dev,
    api: { port },
    cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
    features: { metrics: false },
    settings: {
      pollIntervalMs: 60_000, reportIntervalMs: 500,
      offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, maxQueueSize: 100, onLimit: { count: 'drop-oldest' } },
    },
  };
  await env.cloud.admin.setFaults({ refuse: true });
  const first = await spawnAgent({ dataDir, config });
  agents.push(first);
  for (let b = 0; b < 3; b++) {
    const r = await first.send('POST', '/v2/telemetry', Array.from({ length: 50 }, (_, i) => ({ stream: 'temp', payload: { b, i } })));
    expect(r.status).toBe(202);
  }
  type Queue = { channels: Record<string, { drops: Record<string, number> }> };
  const dropsBefore = ((await first.get('/v2/queue')).body as Queue).channels['telemetry']!.drops;
  expect(dropsBefore['count']).toBeGreaterThanOrEqual(50);
  expect((await first.stop()).code).toBe(0);
  const copy = join(dataDir, 'outbox-counters.json');
  expect(statSync(copy).mode & 0o777).toBe(0o600);

  damageTable(join(dataDir, 'agent.db'), 'outbox_counters');
  const second = await spawnAgent({ dataDir, config });
  agents.push(second);
  const d = await quarantinedThisStart(second);
  expect(d.quarantine!.tables['outbox_counters']?.recovered ?? 0).toBe(0);
  const after = ((await second.get('/v2/queue')).body as Queue).channels['telemetry']!.drops;
  expect(after['count']).toBe(dropsBefore['count']);
  await waitFor('the counters taken back, in the log', () => second.records().some((r) => /^outbox: \d+ counters lost with the damaged database were taken back from .*outbox-counters\.json$/.test(String(r.msg))), 15_000);
  const metrics = (await second.get('/metrics')).body as string;
  expect(metrics).toContain(`iotistic_queue_drops_total{channel="telemetry",reason="count"} ${dropsBefore['count']}`);
}
