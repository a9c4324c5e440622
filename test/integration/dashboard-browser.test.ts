import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';

/**
 * The dashboard in a real browser (Debian's chromium, never a downloaded one) against the built
 * agent and the devcloud: the key entered in the form, the page live over the stream through an
 * outage (offline, a growing queue) and the drain back to 0. Every number the page shows is checked
 * against /v2/connection and /v2/queue read around it. SCREENSHOTS=1 writes docs/img/dashboard-*.png.
 */

const env = agentsWithDevCloud();
const { dirs, agents } = env;
const CHROMIUM = '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOTS === '1';

let browser: Browser;
beforeAll(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
afterAll(async () => {
  await browser?.close();
});

interface Shown {
  badge: string | null;
  connection: string | null;
  channels: Record<string, string>;
  depth: number | null;
  depths: Record<string, number>;
  services: Record<string, string>;
}

/** The little of the browser's DOM read here (the tests compile without the DOM library). */
interface El {
  textContent: string | null;
  getAttribute(name: string): string | null;
}
interface Doc {
  querySelector(selector: string): El | null;
  querySelectorAll(selector: string): Iterable<El>;
}

/** What the page shows: the raw values its data-testid elements carry. */
async function shown(page: Page): Promise<Shown> {
  return page.evaluate(() => {
    const document = (globalThis as unknown as { document: Doc }).document;
    const all = (prefix: string) => {
      const out: Record<string, string> = {};
      for (const el of document.querySelectorAll(`[data-testid^="${prefix}"]`)) out[el.getAttribute('data-testid')!.slice(prefix.length)] = el.getAttribute('data-value')!;
      return out;
    };
    const depths = Object.fromEntries(Object.entries(all('queue-depth-')).map(([k, v]) => [k, Number(v)]));
    const total = document.querySelector('[data-testid="queue-depth"]')?.getAttribute('data-value');
    return {
      badge: document.querySelector('[data-testid="badge"]')?.textContent ?? null,
      connection: document.querySelector('[data-testid="connection-status"]')?.getAttribute('data-value') ?? null,
      channels: all('channel-status-'),
      depth: total == null ? null : Number(total),
      depths,
      services: all('service-state-'),
    };
  });
}

interface Truth {
  connection: string;
  channels: Record<string, string>;
  depth: number;
  depths: Record<string, number>;
  services: Record<string, string>;
}

/** The same facts from the API. */
async function truth(agent: AgentProcess): Promise<Truth> {
  const c = (await agent.get('/v2/connection')).body as { status: string; channels: Record<string, { status: string }> };
  const q = (await agent.get('/v2/queue')).body as { depth: number; channels: Record<string, { depth: number }> };
  const s = (await agent.get('/v2/state')).body as { current: { apps: Record<string, { services: Record<string, { status: string }> }> } };
  const services: Record<string, string> = {};
  for (const [app, a] of Object.entries(s.current.apps)) for (const [svc, st] of Object.entries(a.services)) services[`${app}/${svc}`] = st.status;
  return {
    connection: c.status,
    channels: Object.fromEntries(Object.entries(c.channels).map(([k, v]) => [k, v.status])),
    depth: q.depth,
    depths: Object.fromEntries(Object.entries(q.channels).map(([k, v]) => [k, v.depth])),
    services,
  };
}

/**
 * The page agrees with the API read just before and just after it (the two reads equal: nothing
 * moved in between); the page is live, so it comes to agree within a few snapshots.
 */
async function agrees(page: Page, agent: AgentProcess, what: string, also: (t: Truth) => boolean = () => true): Promise<Truth> {
  let last: unknown;
  try {
    return await waitFor(
      what,
      async () => {
        const before = await truth(agent);
        const p = await shown(page);
        const after = await truth(agent);
        last = { before, page: p, after };
        if (JSON.stringify(before) !== JSON.stringify(after) || !also(before)) return false;
        const { badge, ...rest } = p;
        return badge === before.connection && JSON.stringify(rest) === JSON.stringify(before) ? before : false;
      },
      20_000,
      200,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; last seen ${JSON.stringify(last)}`);
  }
}

async function screenshot(page: Page, name: string): Promise<void> {
  if (!SHOTS) return;
  const dir = join(ROOT, 'docs/img');
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `dashboard-${name}.png`), fullPage: true });
}

it('shows the agent live: online, offline with a growing queue, the drain back to 0, each number as the API says', async () => {
  const dev = { uuid: `dash-${process.pid}`, apiKey: 'dash-key-0123456789abcdef' };
  env.cloud.admin.createDevice(dev);
  env.cloud.admin.setTarget(dev.uuid, { version: 1, apps: { edge: { services: { ticker: { runtime: 'process', command: ['/bin/sh', '-c', 'i=0; while :; do echo "tick $i <b>"; i=$((i+1)); sleep 1; done'] } } } } });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    config: {
      device: dev,
      cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 1_000 },
      workloads: { dockerHost: 'unix:///nonexistent/docker.sock' },
      features: { metrics: false },
      settings: {
        pollIntervalMs: 1_000,
        reconciliationIntervalMs: 1_000,
        offline: { offlineThresholdSeconds: 1, offlineAfterFailures: 1, minBackoffSeconds: 0.2, maxBackoffSeconds: 1, probeMaxIntervalSeconds: 1, wakeSpreadSeconds: 2 },
      },
    },
  });
  agents.push(agent);

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const failures: string[] = [];
  page.on('pageerror', (e) => failures.push(e.message));
  await page.goto(`${agent.apiUrl}/`);
  // The key is asked for in a form (no prompt()), once: the tab keeps it.
  await page.fill('#keyinput', agent.key);
  await page.click('#keyform button[type=submit]');
  await page.waitForSelector('[data-testid="badge"]:text("online")', { timeout: 20_000 });
  await agrees(page, agent, 'online, the service running', (t) => t.connection === 'online' && t.services['edge/ticker'] === 'running');
  // The service's first line reaches the panel with the log poll, which may come after the state (a busy machine).
  await expect.poll(async () => await page.textContent('#services'), { timeout: 20_000, interval: 250 }).toContain('tick 0 <b>');

  // A local app produces telemetry while the cloud refuses every connection.
  await env.cloud.admin.setFaults({ refuse: true });
  let producing = true;
  let sent = 0;
  const producer = (async () => {
    while (producing) {
      const r = await agent.send('POST', '/v2/telemetry', { stream: 'temp', payload: { n: sent } });
      if (r.status === 202) sent++;
      await new Promise((res) => setTimeout(res, 50));
    }
  })();
  await page.waitForSelector('[data-testid="badge"]:text("offline")', { timeout: 20_000 });
  const depthOf = async () => (await shown(page)).depths.telemetry ?? 0;
  await waitFor('the queue on the page', async () => (await depthOf()) > 0, 20_000);
  const first = await depthOf();
  await waitFor('the queue growing on the page', async () => (await depthOf()) > first, 20_000);
  producing = false;
  await producer;
  const offline = await agrees(page, agent, 'offline, the queue as the API says', (t) => t.connection === 'offline' && (t.depths.telemetry ?? 0) > 0);
  expect(offline.depths.telemetry).toBeGreaterThan(first);
  expect(await page.textContent('#outages')).toContain('ongoing');
  await screenshot(page, 'desktop');
  await page.setViewportSize({ width: 390, height: 844 });
  // One column on a phone: every card as wide as the page.
  const widths = await page.$$eval('main section', (s) => s.map((e) => Math.round(e.getBoundingClientRect().width)));
  expect(new Set(widths).size).toBe(1);
  await screenshot(page, 'phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  // The cloud is back: the queue drains to 0, the page with it.
  await env.cloud.admin.clearFaults();
  // The probe's wake is spread over up to 38 s (WAKE_SPREAD_MS, not a setting): the page is what is tested here.
  await page.waitForSelector('[data-testid="badge"]:text("online")', { timeout: 60_000 });
  await agrees(page, agent, 'online and drained', (t) => t.connection === 'online' && t.depth === 0);
  expect(await page.textContent('#outages')).not.toContain('ongoing');
  expect(await page.textContent('#events')).toMatch(/connection \w+ → online/);
  // A channel that failed and recovered shows its error as past, not current.
  expect(await page.textContent('#conn')).toMatch(/last error: .+ \(recovered at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)/);
  await screenshot(page, 'drained');
  expect(failures).toEqual([]);
  await context.close();
}, 120_000);
