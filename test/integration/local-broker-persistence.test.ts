import BetterSqlite3 from 'better-sqlite3';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

// The built agent's local broker with stock mosquitto clients: what local apps rely on (retained
// messages, persistent sessions and their queued messages) outlives a restart and a kill -9, and a
// refused publish is acknowledged and reported, never a reconnect loop.
const dirs = tempDirs();
const agents: AgentProcess[] = [];
const clients: ChildProcess[] = [];
beforeAll(() => requireBuilt());
afterEach(async () => {
  for (const c of clients.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
});
afterAll(() => dirs.cleanup());

async function startAgent(dataDir: string): Promise<{ agent: AgentProcess; port: number }> {
  const agent = await spawnAgent({ dataDir, config: { features: { metrics: false, jobs: false, shadow: false, localBroker: true }, localBroker: { port: 0 } } });
  agents.push(agent);
  const listening = await waitFor('the local broker listening', () => agent.records().find((r) => r.msg === 'local MQTT broker listening'));
  return { agent, port: listening.port as number };
}

async function stopAgent(agent: AgentProcess, signal: NodeJS.Signals): Promise<void> {
  await agent.stop(signal);
  agents.splice(agents.indexOf(agent), 1);
}

interface Tool {
  child: ChildProcess;
  /** stdout lines so far. */
  lines: string[];
  stderr(): string;
  exited: Promise<number | null>;
}

/** Runs a mosquitto client (`mosquitto_pub` / `mosquitto_sub`) against the agent's local broker. */
function tool(name: 'mosquitto_pub' | 'mosquitto_sub', port: number, args: string[]): Tool {
  // Line-buffered: mosquitto_sub's debug lines (the SUBACK) are otherwise held until a message comes.
  const child = spawn('stdbuf', ['-oL', name, '-h', '127.0.0.1', '-p', String(port), '-V', 'mqttv311', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  clients.push(child);
  const lines: string[] = [];
  let partial = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => {
    const parts = (partial + c.toString('utf8')).split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  });
  child.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, lines, stderr: () => err, exited };
}

/** mosquitto_pub at QoS 1: exits 0 once the PUBACK arrived. */
async function publish(port: number, args: string[]): Promise<void> {
  const p = tool('mosquitto_pub', port, ['-q', '1', ...args]);
  const code = await p.exited;
  expect(code, `mosquitto_pub ${args.join(' ')}: ${p.stderr()}`).toBe(0);
}

/** A mosquitto_sub with -d: waits until its SUBACK arrived, so what is published next reaches it. */
async function subscribe(port: number, args: string[]): Promise<Tool> {
  const s = tool('mosquitto_sub', port, ['-d', '-v', ...args]);
  await waitFor(`mosquitto_sub ${args.join(' ')} subscribed`, () => s.lines.some((l) => l.includes('received SUBACK')), 20_000);
  return s;
}
/** The messages a `-v -d` mosquitto_sub printed ("topic payload"), without its debug lines. */
const messages = (s: Tool) => s.lines.filter((l) => !l.startsWith('Client ') && !l.startsWith('Subscribed '));

/** Rows of broker_outgoing for a client, read from the agent's database file while it runs. */
function queuedRows(dataDir: string, clientId: string): number {
  const db = new BetterSqlite3(join(dataDir, 'agent.db'), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM broker_outgoing WHERE client_id = ?').get(clientId) as { n: number }).n;
  } finally {
    db.close();
  }
}

describe('the local broker keeps its state across agent restarts (mosquitto clients)', () => {
  it('a retained message acknowledged before a kill -9 is delivered to a new subscriber after the restart; one deleted is not', async () => {
    const dataDir = dirs.make();
    let { agent, port } = await startAgent(dataDir);
    await publish(port, ['-r', '-t', 'local/config/mode', '-m', 'eco']);
    await publish(port, ['-r', '-t', 'local/config/old', '-m', 'stale']);
    await publish(port, ['-r', '-t', 'local/config/old', '-n']); // an empty retained payload deletes it
    await publish(port, ['-r', '-t', 'local/config/mode', '-m', 'boost']);
    // Acknowledged, then killed at once: the retained message was stored before the PUBACK.
    await stopAgent(agent, 'SIGKILL');

    ({ agent, port } = await startAgent(dataDir));
    const sub = await subscribe(port, ['-q', '1', '-t', 'local/config/#']);
    // Retained messages come right after the SUBACK: a message published after them marks their end.
    await publish(port, ['-t', 'local/config/zz-end', '-m', 'end']);
    await waitFor('the end marker', () => messages(sub).includes('local/config/zz-end end'), 20_000);
    expect(messages(sub)).toEqual(['local/config/mode boost', 'local/config/zz-end end']);
    // What it keeps, in the local API and the metrics.
    expect((await agent.get('/v2/local-broker')).body).toMatchObject({ enabled: true, retained: 1, retainedDropped: 0, queuedDropped: 0 });
    expect(String((await agent.get('/metrics')).body)).toContain('iotistic_local_broker_kept{kind="retained"} 1');
  });

  it('a persistent session keeps its subscription across a kill -9 and gets the QoS 1 messages published while it was away, before and after the restart', async () => {
    const dataDir = dirs.make();
    let { agent, port } = await startAgent(dataDir);
    const first = await subscribe(port, ['-c', '-i', 'dashboard', '-q', '1', '-t', 'local/alarms/#']);
    await publish(port, ['-t', 'local/alarms/door', '-m', 'online-1']);
    await waitFor('the message while online', () => messages(first).includes('local/alarms/door online-1'), 20_000);
    first.child.kill('SIGTERM');
    await first.exited;
    await waitFor('the client gone', () => agent.records().some((r) => r.msg === 'local client disconnected' && r.clientId === 'dashboard'), 20_000);

    await publish(port, ['-t', 'local/alarms/door', '-m', 'away-1']);
    await publish(port, ['-t', 'local/alarms/smoke', '-m', 'away-2']);
    await waitFor('both queued on disk', () => queuedRows(dataDir, 'dashboard') === 2, 20_000);
    await stopAgent(agent, 'SIGKILL');

    ({ agent, port } = await startAgent(dataDir));
    // Nobody re-subscribed: only the stored subscription can queue this one.
    await publish(port, ['-t', 'local/alarms/door', '-m', 'away-3']);
    await waitFor('queued after the restart', () => queuedRows(dataDir, 'dashboard') === 3, 20_000);
    // The same client id, a persistent session again, and no SUBSCRIBE of its own (mosquitto_sub
    // needs a topic: one nothing is published on).
    const back = await subscribe(port, ['-c', '-i', 'dashboard', '-q', '1', '-t', 'local/nothing']);
    await waitFor('the three messages', () => messages(back).length >= 3, 20_000);
    expect(messages(back)).toEqual(['local/alarms/door away-1', 'local/alarms/smoke away-2', 'local/alarms/door away-3']);
    // Acknowledged: nothing left queued.
    await waitFor('the queue emptied', () => queuedRows(dataDir, 'dashboard') === 0, 20_000);
  });
});

describe('a refused publish (mosquitto clients)', () => {
  it('is acknowledged (mosquitto_pub exits 0), reported on local/errors/{clientId}, logged once, and not sent again', async () => {
    const { agent, port } = await startAgent(dirs.make());
    const errors = await subscribe(port, ['-q', '1', '-t', 'local/errors/sensor-7']);
    // A persistent session: before, it was disconnected without a PUBACK and would send it again at every reconnect.
    await publish(port, ['-c', '-i', 'sensor-7', '-t', 'local/telemetry/temp', '-m', 'not json']);
    await waitFor('the reason', () => messages(errors).length > 0, 20_000);
    const [line] = messages(errors);
    expect(line!.startsWith('local/errors/sensor-7 ')).toBe(true);
    const reason = JSON.parse(line!.slice('local/errors/sensor-7 '.length)) as Record<string, unknown>;
    expect(reason).toMatchObject({ clientId: 'sensor-7', topic: 'local/telemetry/temp', code: 'LOCAL_PAYLOAD_INVALID', acknowledged: true });
    expect(String(reason.reason)).toMatch(/expected a UTF-8 JSON payload/);

    // The session comes back: nothing of the refused message is pending for it, no second refusal.
    const again = await subscribe(port, ['-c', '-i', 'sensor-7', '-q', '1', '-t', 'local/nothing']);
    await publish(port, ['-t', 'local/telemetry/temp', '-m', '{"c":21}']);
    const refusals = () => agent.records().filter((r) => String(r.msg).startsWith('local publish refused') && r.clientId === 'sensor-7');
    expect(refusals()).toHaveLength(1);
    expect(refusals()[0]).toMatchObject({ level: expect.anything() as unknown, code: 'LOCAL_PAYLOAD_INVALID' });
    expect(messages(again)).toEqual([]);
    expect(messages(errors)).toHaveLength(1);
    const connects = agent.records().filter((r) => r.msg === 'local client connected' && r.clientId === 'sensor-7');
    expect(connects).toHaveLength(2); // mosquitto_pub's, then the session's return: no reconnects in between
    // Counted where an operator looks.
    await waitFor('the valid publish counted', async () => ((await agent.get('/v2/local-broker')).body as { accepted: number }).accepted === 1, 20_000);
    expect((await agent.get('/v2/local-broker')).body).toMatchObject({ enabled: true, refused: 1, refusedAcknowledged: 1 });
    const metrics = String((await agent.get('/metrics')).body);
    expect(metrics).toContain('iotistic_local_broker_publishes_total{outcome="refused"} 1');
    expect(metrics).toContain('iotistic_local_broker_publishes_total{outcome="accepted"} 1');
  });
});
