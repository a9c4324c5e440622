import { describe, expect, it } from 'vitest';
import { LinkBudget, type BudgetStore } from '../../src/resilience/link-budget.js';
import { LinkGate, WIRE_ESTIMATE, wireEstimate } from '../../src/resilience/link-gate.js';
import { IPV4_ROUTES } from '../../src/resilience/link-route.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger } from '../helpers/logger.js';

const HEADER = 'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n';
const defaultVia = (iface: string): string => `${HEADER}${iface}\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n`;

const nothingKept: BudgetStore = { latest: () => undefined, baseline: () => null, write: () => undefined, pruneOld: () => undefined };

function setup(limitBytes: number) {
  const clock = new FakeClock(Date.UTC(2026, 11, 6, 23, 59));
  const kernel = { route: defaultVia('eth1'), bytes: 0 };
  const read = (path: string): string => {
    if (path === IPV4_ROUTES) return kernel.route;
    if (path.endsWith('/ifindex')) return '4';
    if (path.endsWith('/rx_bytes')) return String(kernel.bytes);
    if (path.endsWith('/tx_bytes')) return '0';
    throw new Error('ENOENT');
  };
  const log = captureLogger('info');
  let wakes = 0;
  const routes: (string | null)[] = [];
  const gate = new LinkGate({
    read,
    patterns: ['wwan*'],
    meteredChannels: ['events'],
    budget: new LinkBudget({ store: nothingKept, clock, kind: 'day', limitBytes }),
    cloudHost: '192.0.2.10',
    resolve: () => Promise.reject(new Error('unused')),
    clock,
    logger: log.logger,
    intervalMs: 1_000,
    onChange: () => wakes++,
  });
  gate.onRouteChange((r) => routes.push(r.iface));
  gate.check();
  return { clock, kernel, gate, log, routes, wakes: () => wakes };
}

describe('the link gate', () => {
  it('logs a change of link once and wakes the flushers for it, not for a reading that changed nothing', () => {
    const t = setup(0);
    expect(t.gate.window()).toBeUndefined();
    expect(t.wakes()).toBe(0);
    t.kernel.route = defaultVia('wwan0');
    t.gate.check();
    t.gate.check();
    expect(t.wakes()).toBe(1);
    expect(t.routes).toEqual(['wwan0']);
    const lines = t.log.records().filter((r) => String(r.msg).includes('metered link'));
    expect(lines).toHaveLength(1);
    expect(String(lines[0]?.msg)).toBe('the cloud is reached over a metered link (wwan0): only events are sent; the rest waits');
    expect(t.gate.window()).toEqual({ channels: ['events'], maxBytes: Number.POSITIVE_INFINITY });
  });

  it('caps a batch to the budget left, takes the head that fits, and opens again when the period rolls over', async () => {
    const t = setup(20_000);
    t.kernel.route = defaultVia('wwan0');
    t.gate.check();
    t.kernel.bytes = 10_000;
    const w = t.gate.window();
    expect(w?.maxBytes).toBe(Math.floor((10_000 - WIRE_ESTIMATE.perBatch - WIRE_ESTIMATE.perMessage) / WIRE_ESTIMATE.factor));
    const batch = Array.from({ length: 10 }, () => ({ storedBytes: 1_000 }));
    const r = t.gate.reserve(batch);
    expect(r.count).toBe(4);
    expect(wireEstimate([1_000, 1_000, 1_000, 1_000])).toBeLessThanOrEqual(10_000);
    expect(wireEstimate([1_000, 1_000, 1_000, 1_000, 1_000])).toBeGreaterThan(10_000);
    // While it is out, nothing else fits.
    expect(t.gate.reserve(batch).count).toBe(0);
    t.kernel.bytes = 19_500;
    r.release();
    expect(t.gate.window()?.maxBytes).toBe(0);
    expect(t.gate.state()).toMatchObject({ budgetExhausted: true, budget: { usedBytes: 19_500, remainingBytes: 500 } });
    const before = t.wakes();
    t.clock.jumpWall(60_000);
    t.gate.check();
    expect(t.wakes()).toBe(before + 1);
    expect(t.gate.state()).toMatchObject({ budgetExhausted: false, budget: { usedBytes: 0, remainingBytes: 20_000, resetsAt: Date.UTC(2026, 11, 8) } });
  });

  it('lets everything through while the link is not metered', () => {
    const t = setup(1);
    expect(t.gate.reserve([{ storedBytes: 1e9 }]).count).toBe(1);
    expect(t.gate.state()).toMatchObject({ iface: 'eth1', metered: false, budgetExhausted: false });
  });
});

describe('the link gate on a failing disk', () => {
  it('keeps counting and answering the flushers when the use cannot be written, and says so once', () => {
    const clock = new FakeClock(Date.UTC(2026, 11, 6, 23, 59));
    let failing = true;
    const writes: number[] = [];
    const store: BudgetStore = {
      ...nothingKept,
      write: (r) => {
        if (failing) throw new Error('SQLITE_FULL: database or disk is full');
        writes.push(r.usedBytes);
      },
    };
    let bytes = 0;
    const read = (path: string): string => (path === IPV4_ROUTES ? defaultVia('wwan0') : path.endsWith('/ifindex') ? '4' : path.endsWith('/rx_bytes') ? String(bytes) : '0');
    const log = captureLogger('info');
    const gate = new LinkGate({
      read,
      patterns: ['wwan*'],
      meteredChannels: ['events'],
      budget: new LinkBudget({ store, clock, kind: 'day', limitBytes: 50_000, saveEveryMs: 0 }),
      cloudHost: '192.0.2.10',
      resolve: () => Promise.reject(new Error('unused')),
      clock,
      logger: log.logger,
      intervalMs: 1_000,
      onChange: () => undefined,
    });
    gate.check();
    bytes = 30_000;
    expect(gate.window()?.maxBytes).toBeGreaterThan(0);
    gate.check();
    clock.jumpWall(120_000);
    gate.check();
    expect(gate.state().budget).toMatchObject({ usedBytes: 0, resetsAt: Date.UTC(2026, 11, 8) });
    expect(log.records().filter((r) => String(r.msg).includes('could not be written'))).toHaveLength(1);
    failing = false;
    bytes = 31_000;
    gate.check();
    expect(writes.at(-1)).toBe(1_000);
  });
});

describe('the link metrics', () => {
  it('show the link, the budget and what is held, and nothing of a channel no longer held', async () => {
    const { Registry } = await import('prom-client');
    const { linkMetrics } = await import('../../src/api/link-metrics.js');
    let held: Record<string, number> = { telemetry: 12, metrics: 3 };
    const registry = new Registry();
    linkMetrics(registry, { link: () => ({ interface: 'wwan0', metered: true, budget: { limitBytes: 204_800, usedBytes: 201_072 }, held }) });
    const text = await registry.metrics();
    expect(text).toContain('iotistic_link_metered{interface="wwan0"} 1');
    expect(text).toContain('iotistic_link_budget_used_bytes 201072');
    expect(text).toContain('iotistic_link_budget_limit_bytes 204800');
    expect(text).toContain('iotistic_link_held_messages{channel="telemetry"} 12');
    held = {};
    expect(await registry.metrics()).not.toContain('iotistic_link_held_messages{');
    const none = new Registry();
    linkMetrics(none, { link: () => null });
    // Without a cloud: no link to label, nothing held (the unlabelled gauges read 0, as the others of the agent's do).
    expect(await none.metrics()).not.toMatch(/^iotistic_link_(metered|held_messages)\{/m);
  });
});
