import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Flusher, type Sink, type SinkResult } from '../../src/outbox/flusher.js';
import { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { LinkBudget, type BudgetRecord, type BudgetStore, type CounterBaseline } from '../../src/resilience/link-budget.js';
import { LinkGate } from '../../src/resilience/link-gate.js';
import { IPV4_ROUTES } from '../../src/resilience/link-route.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { IdGenerator } from '../../src/util/ids.js';
import { seededRandom } from '../../src/util/random.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';
import { Store } from '../helpers/store.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

const HEADER = 'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n';
const defaultVia = (iface: string): string => `${HEADER}${iface}\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n`;

/** The kernel as the gate reads it: the routing table and wwan0's counters, which the fake peer drives. */
class FakeKernel {
  route = defaultVia('wwan0');
  wwanBytes = 0;
  read = (path: string): string => {
    if (path === IPV4_ROUTES) return this.route;
    if (path.endsWith('/wwan0/ifindex')) return '5';
    if (path.endsWith('/wwan0/statistics/rx_bytes')) return '0';
    if (path.endsWith('/wwan0/statistics/tx_bytes')) return String(this.wwanBytes);
    throw new Error(`ENOENT ${path}`);
  };
}

class MemoryBudgetStore implements BudgetStore {
  latest(): BudgetRecord | undefined {
    return undefined;
  }
  baseline(): CounterBaseline | null {
    return null;
  }
  write(): void {}
  pruneOld(): void {}
}

/** The cloud: takes everything; what it is sent crosses wwan0 while the route is on it (payload + 600 bytes a message). */
class Peer implements Sink {
  readonly name = 'http';
  readonly monitorChannel = 'api';
  received: OutboxMessage[] = [];
  constructor(private readonly kernel: FakeKernel) {}
  send(batch: OutboxMessage[]): Promise<SinkResult> {
    this.received.push(...batch);
    if (this.kernel.route.includes('wwan0')) this.kernel.wwanBytes += batch.reduce((n, m) => n + m.storedBytes + 600, 400);
    return Promise.resolve({ accepted: batch.map((m) => m.id), rejected: [] });
  }
  isPermanent(): boolean {
    return false;
  }
}

function setup(opts: { limitBytes: number; channels?: string[] }) {
  const clock = new FakeClock();
  const random = seededRandom(3);
  const kernel = new FakeKernel();
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 100_000, maxBytes: 64 * 1_048_576 } });
  const peer = new Peer(kernel);
  const marks: string[] = [];
  let wakes = 0;
  const woken: { flusher?: Flusher } = {};
  const gate = new LinkGate({
    read: kernel.read,
    patterns: ['wwan*'],
    meteredChannels: opts.channels ?? ['events', 'state'],
    budget: new LinkBudget({ store: new MemoryBudgetStore(), clock, kind: 'month', limitBytes: opts.limitBytes }),
    cloudHost: '192.0.2.10',
    resolve: () => Promise.reject(new Error('not used')),
    clock,
    logger: silentLogger(),
    intervalMs: 1_000,
    onChange: () => {
      wakes++;
      woken.flusher?.kick();
    },
  });
  gate.check();
  const f = new Flusher({
    outbox,
    sink: peer,
    monitor: { markSuccess: () => marks.push('ok'), markFailure: () => marks.push('fail') },
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock, random }), sleeper: new Wakeup({ clock, random }), clock }),
    clock,
    logger: silentLogger(),
    batch: { maxCount: 10, maxBytes: 1_048_576 },
    maxInflight: 2,
    // Held messages wait for a kick: a recheck this rare shows that nothing else moves them.
    idleRecheckMs: 3_600_000,
    link: gate,
  });
  woken.flusher = f;
  const stop = new AbortController();
  const done = f.run(stop.signal);
  cleanup(async () => {
    stop.abort();
    await done;
    await outbox.close();
    store.close();
  });
  /** One transaction for all the groups, so only priority orders them. */
  const enqueue = async (...groups: [count: number, channel: string, bytes?: number][]): Promise<void> => {
    await outbox.enqueueMany(groups.flatMap(([count, channel, bytes]) => Array.from({ length: count }, (_, i) => ({ channel, payload: { i, pad: 'x'.repeat(bytes ?? 100) } }))));
    f.kick();
  };
  return { clock, kernel, outbox, peer, gate, marks, enqueue, wakes: () => wakes };
}

describe('the flusher on a metered link', () => {
  it('sends only the allowed channels, highest priority first, and holds the rest without counting a failure', async () => {
    const t = setup({ limitBytes: 0 });
    await t.enqueue([20, 'telemetry'], [5, 'state'], [5, 'events']);
    await t.clock.advance(100);
    expect(t.peer.received.map((m) => m.channel)).toEqual([...Array<string>(5).fill('events'), ...Array<string>(5).fill('state')]);
    expect(t.outbox.stats().channels['telemetry']?.depth).toBe(20);
    expect(t.marks.every((m) => m === 'ok')).toBe(true);
    expect(t.gate.state()).toMatchObject({ iface: 'wwan0', metered: true, budgetExhausted: false });
  });

  it('stops within the budget: the interface bytes never pass it, and the rest waits', async () => {
    const t = setup({ limitBytes: 20_000 });
    await t.enqueue([200, 'events', 200]);
    await t.clock.advance(100);
    await t.clock.advance(10_000);
    const sent = t.peer.received.length;
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThan(200);
    expect(t.kernel.wwanBytes).toBeLessThanOrEqual(20_000);
    expect(t.gate.state()).toMatchObject({ budgetExhausted: true, budget: { limitBytes: 20_000 } });
    // More of it does not move anything either.
    await t.enqueue([5, 'events', 200]);
    await t.clock.advance(10_000);
    expect(t.peer.received.length).toBe(sent);
    expect(t.marks.every((m) => m === 'ok')).toBe(true);
  });

  it('is woken by a change of route: on the unmetered link everything goes at once', async () => {
    const t = setup({ limitBytes: 5_000 });
    await t.enqueue([30, 'telemetry'], [30, 'events']);
    await t.clock.advance(100);
    const onWwan = t.peer.received.length;
    expect(t.peer.received.every((m) => m.channel === 'events')).toBe(true);
    expect(t.outbox.stats().depth).toBeGreaterThan(30);
    t.kernel.route = defaultVia('eth1');
    const before = t.wakes();
    t.gate.check();
    expect(t.wakes()).toBe(before + 1);
    await t.clock.advance(100);
    expect(t.outbox.stats().depth).toBe(0);
    expect(t.peer.received.length).toBe(60);
    expect(onWwan).toBeLessThan(30);
    expect(t.gate.state()).toMatchObject({ iface: 'eth1', metered: false });
    // Checking again without a change wakes nobody.
    t.gate.check();
    expect(t.wakes()).toBe(before + 1);
  });
});
