import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CLI, runCli, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

/** `iotistic-agent queue`, `queue parked`, `queue retry`, `queue purge` against a built agent whose devcloud refuses some messages for good. */

const env = agentsWithDevCloud();

interface Queue {
  channels: Record<string, { parked: number; delivered: number; drops: { purged: number } }>;
}

async function agentWithParked(): Promise<{ agent: AgentProcess; uuid: string; ids: string[]; poisoned: string[]; args: string[] }> {
  const dev = { uuid: `cli-queue-${process.pid}`, apiKey: 'cli-queue-key-0123456789' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: {} });
  const dataDir = env.dirs.make();
  const agent = await spawnAgent({
    dataDir,
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
      features: { metrics: false },
      settings: { pollIntervalMs: 60_000, reportIntervalMs: 60_000, offline: { minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2, flushBatchMessages: 50 } },
    },
  });
  env.agents.push(agent);
  await env.cloud.admin.setFaults({ refuse: true });
  const res = await fetch(`${agent.apiUrl}/v2/telemetry`, {
    method: 'POST',
    headers: { authorization: `Bearer ${agent.key}`, 'content-type': 'application/json' },
    body: JSON.stringify(Array.from({ length: 6 }, (_, i) => ({ stream: 'temp', payload: { i } }))),
  });
  const ids = ((await res.json()) as { ids: string[] }).ids;
  const poisoned = [ids[1], ids[3], ids[5]] as string[];
  await env.cloud.admin.setFaults({ refuse: null, poisonMessageIds: poisoned });
  await waitFor('three parked', async () => ((await agent.get('/v2/queue')).body as Queue).channels.telemetry?.parked === 3, 10_000, 100);
  return { agent, uuid: dev.uuid, ids, poisoned, args: ['--api', agent.apiUrl, '--data-dir', dataDir] };
}

describe('iotistic-agent queue', () => {
  it('lists the outbox and the parked messages, purges one with --yes (refused without it off a terminal) and retries the rest', async () => {
    const { agent, uuid, poisoned, args } = await agentWithParked();
    const [first, ...rest] = poisoned as [string, string, string];

    // The reads (and the refusals) at once: each CLI run is a node start.
    const [list, listJson, parked, parkedJsonRun, unasked, neither] = await Promise.all([
      runCli(['queue', ...args]),
      runCli(['queue', '--json', ...args]),
      runCli(['queue', 'parked', ...args]),
      runCli(['queue', 'parked', '--json', ...args]),
      // stdin is not a terminal here: a purge without --yes is refused, and nothing is deleted.
      runCli(['queue', 'purge', first, ...args]),
      runCli(['queue', 'purge', '--yes', ...args]),
    ]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^channel\s+waiting\s+bytes\s+oldest\s+delivered\s+dropped\s+expired\s+parked$/m);
    expect(list.stdout).toMatch(/^telemetry\s+0\s+0 B\s+-\s+3\s+0\s+0\s+3$/m);
    // Not a terminal: no colour.
    expect(list.stdout).not.toContain('\u001b[');
    expect(JSON.parse(listJson.stdout)).toMatchObject({ channels: { telemetry: { parked: 3, delivered: 3 } } });

    expect(parked.code, parked.stderr).toBe(0);
    expect(parked.stdout.split('\n')[0]).toBe('3 parked messages; retry: iotistic-agent queue retry ID... | --all; delete: iotistic-agent queue purge ID... | --all');
    for (const id of poisoned) expect(parked.stdout).toMatch(new RegExp(`^${id}  telemetry  \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ \\(\\d+s ago\\)  .*422`, 'm'));
    const parkedJson = JSON.parse(parkedJsonRun.stdout) as { total: number; parked: { id: string }[] };
    expect(parkedJson.total).toBe(3);
    expect(parkedJson.parked.map((m) => m.id).sort()).toEqual([...poisoned].sort());

    expect(unasked.code).toBe(2);
    expect(unasked.stderr).toBe('iotistic-agent: refusing to delete parked messages without --yes: stdin is not a terminal to ask on\n');
    expect(neither.code).toBe(2);
    expect(neither.stderr).toContain('queue purge: expected parked message IDs (iotistic-agent queue parked lists them) or --all, got neither');
    expect(((await agent.get('/v2/queue')).body as Queue).channels.telemetry?.parked).toBe(3);

    const purged = await runCli(['queue', 'purge', first, '--yes', ...args]);
    expect(purged.code, purged.stderr).toBe(0);
    expect(purged.stdout).toBe('deleted 1 parked message for good\n');
    const after = (await agent.get('/v2/queue')).body as Queue;
    expect(after.channels.telemetry).toMatchObject({ parked: 2, drops: { purged: 1 } });

    // The cloud takes them now: a retry of all of them delivers them.
    await env.cloud.admin.clearFaults();
    // The purged one is not parked any more, whatever the order of the two.
    const [retried, none] = await Promise.all([runCli(['queue', 'retry', '--all', '--json', ...args]), runCli(['queue', 'retry', first, ...args])]);
    expect(retried.code, retried.stderr).toBe(0);
    expect(JSON.parse(retried.stdout)).toEqual({ requeued: 2 });
    expect(none.stdout).toBe('requeued 0 parked messages (back in the queue, delivered in turn); 1 of the 1 ID named is not parked (iotistic-agent queue parked lists those that are)\n');
    expect(((await agent.get('/v2/queue')).body as Queue).channels.telemetry?.parked).toBe(0);
    await waitFor('the retried ones at the devcloud', () => {
      const stored = new Set(env.storedMessages(uuid).map((m) => m.id));
      return rest.every((id) => stored.has(id));
    }, 10_000, 100);
  }, 20_000);

  it('on a terminal: colours, none with NO_COLOR, and a purge asks first and deletes nothing on "n"', async () => {
    const dataDir = env.dirs.make();
    const agent = await env.spawn({ dataDir });
    const args = `--api ${agent.apiUrl} --data-dir ${dataDir}`;
    // util-linux script(1) runs the command on a pseudo-terminal; what is piped in is typed on it.
    const onTerminal = (command: string, input = ''): { code: number | null; out: string } => {
      const r = spawnSync('script', ['-qec', command, '/dev/null'], { input, encoding: 'utf8', timeout: 10_000 });
      return { code: r.status, out: r.stdout };
    };
    const coloured = onTerminal(`${process.execPath} ${CLI} status ${args}`);
    expect(coloured.code).toBe(0);
    expect(coloured.out).toContain('Ledger  \u001b[32mbalanced\u001b[39m');
    const plain = onTerminal(`NO_COLOR=1 ${process.execPath} ${CLI} status ${args}`);
    expect(plain.out).toMatch(/^Ledger {2}balanced\r?$/m);
    expect(plain.out).not.toContain('\u001b[');
    const declined = onTerminal(`${process.execPath} ${CLI} queue purge --all ${args}`, 'n\n');
    expect(declined.out).toContain('delete all 0 parked messages for good (they count as purged drops)? [y/N] ');
    expect(declined.out).toContain('iotistic-agent: nothing deleted');
    expect(declined.code).toBe(1);
  }, 20_000);
});

