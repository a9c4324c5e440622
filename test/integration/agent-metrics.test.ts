import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_CHANNEL_PRIORITIES } from '../../src/outbox/channel-policies.js';
import { AGENT_VERSION } from '../../src/version.js';
import { ROOT, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { agentsWithDevCloud } from '../helpers/devcloud-agents.js';
import { startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';

// docs/metrics.md on the built agent: its /metrics, read as Prometheus reads it (the bearer key),
// passes `promtool check metrics` and has the series the docs list; the alert rules pass `promtool
// check rules`; every metric the rules and the Grafana dashboard query is in that /metrics.
const env = agentsWithDevCloud();
let broker: Mosquitto;
beforeAll(async () => {
  broker = await startMosquitto();
});
afterAll(async () => {
  await broker?.dispose();
});

const RULES = join(ROOT, 'deploy/prometheus/iotistic-alerts.yml');
const DASHBOARD = join(ROOT, 'deploy/grafana/iotistic-agent.json');

/** Runs promtool; the test fails with what it printed. */
function promtool(args: string[], input?: string): string {
  const r = spawnSync('promtool', args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  if (r.error) throw new Error(`promtool did not run (scripts/test-services.mjs installs the prometheus package): ${r.error.message}`);
  const out = `${r.stdout}${r.stderr}`;
  expect(r.status, `promtool ${args.join(' ')} exited ${r.status}:\n${out}`).toBe(0);
  return out;
}

async function scrape(agent: AgentProcess): Promise<string> {
  const res = await fetch(`${agent.apiUrl}/metrics`, { headers: { authorization: `Bearer ${agent.key}` } });
  expect(res.status).toBe(200);
  return res.text();
}

/** The metric families of an exposition: the names in its TYPE lines and of its samples. */
function familiesOf(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) /.exec(line) ?? /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (m?.[1]) names.add(m[1]);
  }
  return names;
}

/** The agent's metric names a PromQL expression reads (every one starts with iotistic_). */
const metricsIn = (expr: string): string[] => [...expr.matchAll(/\biotistic_[a-z0-9_]+/g)].map((m) => m[0]);

const sample = (text: string, series: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
};

describe('/metrics on the built agent', () => {
  let text = '';

  it('passes promtool check metrics and shows the agent, its services, MQTT, the last successes and every outbox channel', async () => {
    const dev = { uuid: `metrics-${process.pid}`, apiKey: 'metrics-key-0123456789' };
    env.cloud.admin.createDevice(dev);
    env.cloud.admin.setTarget(dev.uuid, {
      version: 1,
      apps: {
        edge: {
          services: {
            ticker: { runtime: 'process', command: ['/bin/sleep', '3600'] },
            crasher: { runtime: 'process', command: ['/bin/sh', '-c', 'exit 3'], restart: 'always' },
          },
        },
      },
    });
    const agent = await env.spawn({
      dataDir: env.dirs.make(),
      config: {
        device: dev,
        cloud: { apiUrl: env.cloud.url, requestTimeoutMs: 2_000 },
        mqtt: { url: broker.url, keepAliveSeconds: 10 },
        features: { metrics: false },
        settings: { pollIntervalMs: 1_000, reportIntervalMs: 200, reconciliationIntervalMs: 1_000 },
      },
    });
    const posted = await agent.send('POST', '/v2/telemetry', [1, 2, 3].map((i) => ({ stream: 'temp', payload: { i } })));
    expect(posted.status).toBe(202);
    // The crasher is restarted after the crash back-off (10 s); the telemetry goes over MQTT.
    text = await waitFor(
      'a restart of the crasher, the telemetry acknowledged over MQTT',
      async () => {
        const t = await scrape(agent);
        const restarts = sample(t, 'iotistic_service_restarts_total{app="edge",service="crasher"}') ?? 0;
        return restarts >= 1 && (sample(t, 'iotistic_queue_delivered_total{channel="telemetry"}') ?? 0) >= 3 ? t : undefined;
      },
      45_000,
      500,
    );
    promtool(['check', 'metrics'], text);

    expect(text).toContain(`\niotistic_agent_info{version="${AGENT_VERSION}",uuid="${dev.uuid}"} 1\n`);
    expect(text).not.toContain(dev.apiKey);
    expect(sample(text, 'iotistic_service_up{app="edge",service="ticker"}')).toBe(1);
    expect(sample(text, 'iotistic_service_state{app="edge",service="ticker",state="running"}')).toBe(1);
    expect(sample(text, 'iotistic_service_state{app="edge",service="ticker",state="backoff"}')).toBe(0);
    expect(sample(text, 'iotistic_service_restarts_total{app="edge",service="ticker"}')).toBe(0);
    expect(text).toContain('# TYPE iotistic_service_restarts_total counter');
    // The birth message and the three readings at least; nothing refused.
    expect(sample(text, 'iotistic_mqtt_publishes_total{outcome="acknowledged"}')).toBeGreaterThanOrEqual(4);
    expect(sample(text, 'iotistic_mqtt_publishes_total{outcome="rejected"}')).toBe(0);
    // The latest success of each way to the cloud, in seconds: the HTTP API's poll, the broker's publish.
    for (const series of ['iotistic_last_success_timestamp_seconds{monitor_channel="api",operation="poll"}', 'iotistic_last_success_timestamp_seconds{monitor_channel="mqtt",operation="publish"}']) {
      expect(Math.abs((sample(text, series) ?? 0) - Date.now() / 1000), series).toBeLessThan(60);
    }
    expect(sample(text, 'iotistic_channel_status{monitor_channel="mqtt",state="online"}')).toBe(1);
    expect(text).not.toMatch(/^iotistic_(channel_status|channel_consecutive_failures|cloud_failures_total)\{channel=/m);
    // Every built-in outbox channel, whether it was used or not.
    for (const channel of Object.keys(DEFAULT_CHANNEL_PRIORITIES)) {
      for (const family of ['iotistic_queue_depth', 'iotistic_queue_delivered_total', 'iotistic_queue_accepted_total']) {
        expect(sample(text, `${family}{channel="${channel}"}`), `${family}{channel="${channel}"}`).toBeGreaterThanOrEqual(0);
      }
      expect(sample(text, `iotistic_queue_drops_total{channel="${channel}",reason="count"}`)).toBeGreaterThanOrEqual(0);
    }
    expect(sample(text, 'iotistic_queue_limit_messages')).toBeGreaterThan(0);
    expect(sample(text, 'iotistic_queue_limit_bytes')).toBeGreaterThan(0);
    // prom-client's gauges named *_total are left out (promtool refuses them).
    expect(text).not.toContain('iotistic_agent_nodejs_active_handles_total');
  }, 90_000);

  it('the alert rules pass promtool check rules and read only metrics the agent exposes', () => {
    expect(text, 'the first test scrapes the agent').not.toBe('');
    expect(promtool(['check', 'rules', RULES])).toMatch(/SUCCESS: \d+ rules found/);
    const families = familiesOf(text);
    const rules = readFileSync(RULES, 'utf8');
    // `expr: <one line>`, or `expr: >` and the more indented lines under it.
    const exprs = [...rules.matchAll(/^ +expr: (?:>\n((?: {10,}\S.*\n)+)|(.+))/gm)].map((m) => m[1] ?? m[2] ?? '');
    expect(exprs.length).toBeGreaterThanOrEqual(10);
    // Each reads the agent's metrics, but the one on the scrape itself (`up`, Prometheus's own).
    for (const e of exprs) expect(metricsIn(e).length > 0 || e.startsWith('up{job="iotistic-agent"}'), e).toBe(true);
    const used = exprs.flatMap(metricsIn);
    expect(used.filter((n) => !families.has(n))).toEqual([]);
    for (const needed of ['iotistic_connection_status', 'iotistic_queue_ledger_balanced', 'iotistic_service_restarts_total', 'iotistic_disk_state', 'iotistic_logs_dropped_total']) {
      expect(used).toContain(needed);
    }
  });

  it('the Grafana dashboard is JSON whose every query reads metrics the agent exposes', () => {
    expect(text, 'the first test scrapes the agent').not.toBe('');
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { uid: string; panels: { title: string; type: string; targets?: { expr: string }[] }[] };
    expect(dashboard.uid).toBe('iotistic-agent');
    const families = familiesOf(text);
    const queries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
    expect(queries.length).toBeGreaterThanOrEqual(15);
    const missing = queries.flatMap((q) => metricsIn(q.expr).filter((n) => !families.has(n)).map((n) => `${q.panel}: ${n}`));
    expect(missing).toEqual([]);
    for (const q of queries) expect(metricsIn(q.expr).length, `${q.panel}: ${q.expr}`).toBeGreaterThan(0);
    const titles = dashboard.panels.map((p) => p.title);
    for (const t of ['Connection', 'Outbox depth per channel', 'Drain rate (delivered)', 'Drops by reason', 'Services up', 'Log lines dropped']) expect(titles).toContain(t);
  });
});
