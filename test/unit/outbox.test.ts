import BetterSqlite3 from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MetricsBuffer, isAggregate, levelOf, toAggregate, type MetricsRecord } from '../../src/outbox/downsample.js';
import { Outbox, type OutboxOptions } from '../../src/outbox/outbox.js';
import { outboxSettings } from '../../src/outbox/policy.js';
import { isOutboxError, type CommitInfo, type OutboxMessage } from '../../src/outbox/types.js';
import { defaultConfig } from '../../src/config/schema.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Json } from '../../src/util/json-diff.js';
import { seededRandom } from '../../src/util/random.js';
import { silentLogger } from '../helpers/logger.js';
import { flushOutbox } from '../helpers/outbox-flush.js';
import { tempDirs } from '../helpers/tmp.js';
import { handFs } from '../helpers/hand-fs.js';

const dirs = tempDirs();
const open: { store: Store; outbox: Outbox }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) {
    await o.outbox.close();
    o.store.close();
  }
  dirs.cleanup();
});

type Overrides = Partial<Omit<OutboxOptions, 'store' | 'clock' | 'ids' | 'logger'>>;

/** An outbox on a real database file in a temp dir, on fake time. `reopen` simulates a restart. */
function setup(overrides: Overrides = {}, opts: { dir?: string; clock?: FakeClock; synchronous?: 'full' | 'normal' } = {}) {
  const dir = opts.dir ?? dirs.make();
  const clock = opts.clock ?? new FakeClock();
  const path = join(dir, 'agent.db');
  const commits: CommitInfo[] = [];
  const make = () => {
    const store = Store.open({ path, logger: silentLogger(), clock, synchronous: opts.synchronous });
    const outbox = new Outbox({
      store,
      clock,
      ids: new IdGenerator(() => clock.now()),
      logger: silentLogger(),
      limits: { maxCount: 1000, maxBytes: 64 * 1_048_576 },
      disk: { minFreeBytes: 0 },
      // Sequential awaits in these tests would each wait out a window; the group-commit tests set one.
      groupCommit: { windowMs: 0 },
      onCommit: (c) => commits.push(c),
      ...overrides,
    });
    const entry = { store, outbox };
    open.push(entry);
    return entry;
  };
  let current = make();
  return {
    dir,
    clock,
    commits,
    get outbox() {
      return current.outbox;
    },
    get store() {
      return current.store;
    },
    /** Closes and opens the same database again (leases and other memory are gone). */
    async reopen() {
      await current.outbox.close();
      current.store.close();
      open.splice(open.indexOf(current), 1);
      current = make();
      return current.outbox;
    },
  };
}

/** Everything queued, in delivery order, without leasing. */
function all(outbox: Outbox, channels?: string[]): OutboxMessage[] {
  return outbox.peekBatch({ maxCount: 1_000_000, lease: false, channels });
}

/** Every channel gives way at every limit: the mechanics of drop-oldest, whatever the defaults. */
const DROP_ALL = { count: 'drop-oldest', bytes: 'drop-oldest', disk: 'drop-oldest' } as const;

const tag = (m: OutboxMessage): string => `${m.channel}:${JSON.stringify(m.payload)}`;

/** The payloads queued in the database at `dir`, as another connection (another process) sees them. */
function queuedPayloads(dir: string): string[] {
  const db = new BetterSqlite3(join(dir, 'agent.db'), { readonly: true });
  try {
    return (db.prepare('SELECT payload FROM outbox ORDER BY seq').all() as { payload: string }[]).map((r) => r.payload);
  } finally {
    db.close();
  }
}

/** Waits (a turn at a time, at most 5 s) until `cond` holds. */
async function until(cond: () => boolean): Promise<void> {
  const end = Date.now() + 5_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for a condition');
    await new Promise((r) => setImmediate(r));
  }
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('outbox: order', () => {
  it('delivers the highest priority first and keeps arrival order within a channel', async () => {
    const { outbox } = setup();
    const sent: [string, number][] = [
      ['metrics', 1],
      ['telemetry', 1],
      ['events', 1],
      ['metrics', 2],
      ['state', 1],
      ['telemetry', 2],
      ['events', 2],
      ['telemetry', 3],
    ];
    for (const [channel, n] of sent) await outbox.enqueue({ channel, payload: n });
    expect(all(outbox).map(tag)).toEqual([
      'events:1',
      'events:2',
      'state:1',
      'telemetry:1',
      'telemetry:2',
      'telemetry:3',
      'metrics:1',
      'metrics:2',
    ]);
    // Same priority, different channels: interleaved by arrival.
    const two = setup().outbox;
    await two.enqueue({ channel: 'telemetry', payload: 1 });
    await two.enqueue({ channel: 'bulk', payload: 1 });
    await two.enqueue({ channel: 'telemetry', payload: 2 });
    expect(all(two).map(tag)).toEqual(['telemetry:1', 'bulk:1', 'telemetry:2']);
    // An explicit priority beats the channel default; channels filter.
    await two.enqueue({ channel: 'bulk', payload: 2, priority: 99 });
    expect(all(two).map(tag)[0]).toBe('bulk:2');
    expect(all(two, ['bulk']).map(tag)).toEqual(['bulk:2', 'bulk:1']);
  });

  it('stops a batch at maxBytes without skipping ahead in a channel, but always takes one', async () => {
    const { outbox } = setup();
    for (let i = 0; i < 5; i++) await outbox.enqueue({ channel: 'telemetry', payload: 'x'.repeat(98) }); // 100 bytes each
    expect(outbox.peekBatch({ maxCount: 10, maxBytes: 250 })).toHaveLength(2);
    expect(outbox.peekBatch({ maxCount: 10, maxBytes: 10 })).toHaveLength(1);
  });
});

describe('outbox: limits and drop policy', () => {
  it('drops the oldest of the lowest priority first, never a higher one while a lower one is queued', async () => {
    const { outbox } = setup({ limits: { maxCount: 6, maxBytes: 1 << 30 }, onLimit: DROP_ALL });
    for (let i = 1; i <= 2; i++) await outbox.enqueue({ channel: 'metrics', payload: i });
    for (let i = 1; i <= 2; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    for (let i = 1; i <= 2; i++) await outbox.enqueue({ channel: 'events', payload: i });
    await outbox.enqueue({ channel: 'telemetry', payload: 3 });
    expect(all(outbox).map(tag)).toEqual(['events:1', 'events:2', 'telemetry:1', 'telemetry:2', 'telemetry:3', 'metrics:2']);
    await outbox.enqueue({ channel: 'events', payload: 3 });
    await outbox.enqueue({ channel: 'events', payload: 4 });
    // metrics:2 went first, then the oldest telemetry; events untouched.
    expect(all(outbox).map(tag)).toEqual(['events:1', 'events:2', 'events:3', 'events:4', 'telemetry:2', 'telemetry:3']);
    // Same priority as the oldest: drop-oldest within the priority (the seed's behaviour).
    await outbox.enqueue({ channel: 'telemetry', payload: 4 });
    expect(all(outbox).map(tag)).toEqual(['events:1', 'events:2', 'events:3', 'events:4', 'telemetry:3', 'telemetry:4']);
    // Lower than everything queued: refused, nothing dropped.
    const err = await rejection(outbox.enqueue({ channel: 'metrics', payload: 3 }));
    expect(isOutboxError(err, 'OUTBOX_FULL')).toBe(true);
    expect((err as Error).message).toMatch(/outbox's limit of 6 messages \(settings\.offline\.maxQueueSize\)/);
    expect(all(outbox)).toHaveLength(6);
    const s = outbox.stats();
    expect(s.channels.metrics?.drops.count).toBe(2);
    expect(s.channels.telemetry?.drops.count).toBe(2);
    expect(s.channels.events?.dropped).toBe(0);
    expect(s.dropped).toBe(4);
  });

  it('keeps the invariant under a random mix of priorities (model check)', async () => {
    const random = seededRandom(42);
    const { outbox } = setup({ limits: { maxCount: 20, maxBytes: 1 << 30 }, onLimit: DROP_ALL });
    const channels = ['metrics', 'telemetry', 'state', 'events'];
    for (let i = 0; i < 300; i++) {
      const before = all(outbox);
      const channel = channels[Math.floor(random() * channels.length)] as string;
      const priority = Math.floor(random() * 4) * 10;
      const r = await outbox.enqueue({ channel, payload: i, priority }).catch((e: unknown) => e);
      const after = all(outbox);
      const afterIds = new Set(after.map((m) => m.id));
      const dropped = before.filter((m) => !afterIds.has(m.id));
      if (isOutboxError(r, 'OUTBOX_FULL')) {
        expect(after.map((m) => m.id)).toEqual(before.map((m) => m.id));
        expect(Math.min(...before.map((m) => m.priority))).toBeGreaterThan(priority);
        continue;
      }
      expect(after.length).toBeLessThanOrEqual(20);
      for (const d of dropped) {
        expect(d.priority).toBeLessThanOrEqual(priority);
        // Nothing of a lower priority survived it, and nothing older of its priority did either.
        for (const kept of after) {
          expect(kept.priority).toBeGreaterThanOrEqual(d.priority);
          if (kept.priority === d.priority) expect(kept.createdAt >= d.createdAt && kept.id > d.id).toBe(true);
        }
      }
    }
  });

  it('applies count and byte limits per channel and in total', async () => {
    const { outbox } = setup({
      limits: { maxCount: 100, maxBytes: 2_000 },
      channels: { telemetry: { maxCount: 3 }, logs: { maxBytes: 1_024 } },
      onLimit: DROP_ALL,
    });
    await outbox.enqueue({ channel: 'metrics', payload: 0 });
    for (let i = 1; i <= 5; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    // The channel's own limit drops within the channel, even though a lower priority (metrics) exists elsewhere.
    expect(all(outbox, ['telemetry']).map(tag)).toEqual(['telemetry:3', 'telemetry:4', 'telemetry:5']);
    expect(all(outbox, ['metrics'])).toHaveLength(1);
    const big = (n: number): Json => ({ n, pad: randomBytes(150).toString('hex') }); // ~320 bytes, incompressible
    for (let i = 1; i <= 4; i++) await outbox.enqueue({ channel: 'logs', payload: big(i) });
    const logs = all(outbox, ['logs']);
    expect(logs.map((m) => (m.payload as { n: number }).n)).toEqual([2, 3, 4]);
    expect(outbox.stats().channels.logs!.bytes).toBeLessThanOrEqual(1_024);
    // Total bytes: events (priority 50) push out the lowest first: metrics, then logs (20) by age.
    for (let i = 1; i <= 4; i++) await outbox.enqueue({ channel: 'events', payload: big(10 + i) });
    const s = outbox.stats();
    expect(s.bytes).toBeLessThanOrEqual(2_000);
    expect(s.channels.metrics!.depth).toBe(0);
    expect(s.channels.events!.depth).toBe(4);
    expect(s.channels.telemetry!.drops.count + s.channels.logs!.drops.bytes + s.channels.metrics!.drops.bytes).toBeGreaterThan(2);
    // A message larger than any limit is refused up front.
    const err = await rejection(outbox.enqueue({ channel: 'logs', payload: randomBytes(1_000).toString('hex') }));
    expect(isOutboxError(err, 'OUTBOX_TOO_LARGE')).toBe(true);
  });

  it('refuses malformed messages with OUTBOX_INVALID naming the field', async () => {
    const { outbox } = setup();
    const bad = [
      { channel: 'no spaces', payload: 1 },
      { channel: 'telemetry', payload: undefined as unknown as Json },
      { channel: 'telemetry', payload: 1, ttlMs: -5 },
      { channel: 'telemetry', payload: 1, priority: 1.5 },
    ];
    const errs = await Promise.all(bad.map((m) => rejection(outbox.enqueue(m))));
    expect(errs.map((e) => (e as { code: string }).code)).toEqual(['OUTBOX_INVALID', 'OUTBOX_INVALID', 'OUTBOX_INVALID', 'OUTBOX_INVALID']);
    expect((errs[0] as Error).message).toMatch(/^channel:/);
    expect((errs[1] as Error).message).toMatch(/^payload:/);
  });

  it('enqueueMany is all or nothing', async () => {
    const { outbox } = setup({ limits: { maxCount: 3, maxBytes: 1 << 30 }, onLimit: DROP_ALL });
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'events', payload: i });
    const err = await rejection(
      outbox.enqueueMany([
        { channel: 'events', payload: 4 }, // would drop events:1
        { channel: 'metrics', payload: 1 }, // cannot fit: refuses the whole call
      ]),
    );
    expect(isOutboxError(err, 'OUTBOX_FULL')).toBe(true);
    expect(all(outbox).map(tag)).toEqual(['events:1', 'events:2', 'events:3']);
    expect(outbox.stats().dropped).toBe(0);
    const ok = await outbox.enqueueMany([
      { channel: 'events', payload: 5 },
      { channel: 'events', payload: 6 },
    ]);
    expect(ok).toHaveLength(2);
    expect(all(outbox).map(tag)).toEqual(['events:3', 'events:5', 'events:6']);
  });

  it('treats an id that is already queued as a duplicate, not a second message', async () => {
    const { outbox } = setup();
    expect(await outbox.enqueue({ channel: 'telemetry', payload: 1, id: 'app-msg-1' })).toEqual({ id: 'app-msg-1' });
    expect(await outbox.enqueue({ channel: 'telemetry', payload: 2, id: 'app-msg-1' })).toEqual({ id: 'app-msg-1', duplicate: true });
    expect(all(outbox).map(tag)).toEqual(['telemetry:1']);
  });
});

describe('outbox: TTL', () => {
  it('expires messages at peek, at enqueue and in expire(), counting them', async () => {
    const { outbox, clock } = setup({ channels: { health: { ttlMs: 5_000 } } });
    await outbox.enqueue({ channel: 'telemetry', payload: 'short', ttlMs: 1_000 });
    await outbox.enqueue({ channel: 'telemetry', payload: 'forever' });
    await outbox.enqueue({ channel: 'health', payload: 'policy-ttl' });
    await clock.advance(1_001);
    expect(all(outbox).map(tag)).toEqual(['health:"policy-ttl"', 'telemetry:"forever"']);
    await clock.advance(5_000);
    expect(outbox.expire()).toBe(1);
    const s = outbox.stats();
    expect(s.expired).toBe(2);
    expect(s.channels.telemetry?.drops.ttl).toBe(1);
    expect(s.channels.health?.expired).toBe(1);
    expect(s.dropped).toBe(0); // expiry is not a drop (QueueStats counts them apart)
    // At enqueue time too: an expired message never counts against the limits of a newcomer.
    await outbox.enqueue({ channel: 'telemetry', payload: 'x', ttlMs: 10 });
    await clock.advance(20);
    await outbox.enqueue({ channel: 'telemetry', payload: 'y' });
    expect(outbox.stats().expired).toBe(3);
  });
});

describe('outbox: counters and restarts', () => {
  it('persists depth and every counter across a reopen, and forgets leases', async () => {
    const env = setup({ limits: { maxCount: 5, maxBytes: 1 << 30 } });
    for (let i = 0; i < 7; i++) await env.outbox.enqueue({ channel: 'telemetry', payload: i }); // 2 dropped
    await env.outbox.enqueue({ channel: 'events', payload: 'e', ttlMs: 100 }); // drops one more telemetry
    const batch = env.outbox.peekBatch({ maxCount: 2, channels: ['telemetry'] });
    env.outbox.ack(batch.map((m) => m.id));
    env.outbox.park([env.outbox.peekBatch({ maxCount: 1, channels: ['telemetry'] })[0]!.id], 'HTTP 400: bad payload');
    env.outbox.peekBatch({ maxCount: 10 }); // leases what is left
    await env.clock.advance(200);
    env.outbox.expire();
    const before = env.outbox.stats();
    expect(before.delivered).toBe(2);
    expect(before.dropped).toBe(3);
    expect(before.expired).toBe(1);
    expect(before.parked).toBe(1);
    const again = await env.reopen();
    const after = again.stats();
    for (const k of ['depth', 'bytes', 'delivered', 'dropped', 'expired', 'parked', 'parkedTotal'] as const) expect(after[k]).toBe(before[k]);
    expect(after.channels.telemetry?.drops).toEqual(before.channels.telemetry?.drops);
    expect(after.leased).toBe(0);
    expect(again.peekBatch({ maxCount: 10 })).toHaveLength(before.depth);
  });

  it('reports how durable a resolved enqueue is, from the store', () => {
    expect(setup().outbox.stats().durability).toBe('power-loss');
    expect(setup({}, { synchronous: 'normal' }).outbox.stats().durability).toBe('process-crash');
  });

  it('keeps the store\'s durability in force after every ack, acked or not, and the stats say what is in force', async () => {
    for (const synchronous of ['full', 'normal'] as const) {
      const { outbox, store } = setup({}, { synchronous });
      const level = synchronous === 'full' ? 2 : 1;
      const said = synchronous === 'full' ? 'power-loss' : 'process-crash';
      const inForce = () => ({ pragma: store.db.pragma('synchronous', { simple: true }), stats: outbox.stats().durability });
      await outbox.enqueueMany([1, 2, 3, 4].map((n) => ({ channel: 'telemetry', payload: n })));
      const [a, b, ...rest] = outbox.peekBatch({ maxCount: 10 });
      outbox.ack([a!.id]);
      expect(inForce(), `${synchronous}: after an ack`).toEqual({ pragma: level, stats: said });
      outbox.ack([b!.id, 'no-such-id']);
      expect(inForce(), `${synchronous}: after an ack naming an unknown id`).toEqual({ pragma: level, stats: said });
      outbox.nack(rest.map((m) => m.id));
      outbox.ack([]);
      expect(inForce(), `${synchronous}: after a nack and an empty ack`).toEqual({ pragma: level, stats: said });
      // An enqueue after an ack is as durable as the store says: the ack did not leave it weaker.
      await outbox.enqueue({ channel: 'events', payload: 'after' });
      expect(inForce(), `${synchronous}: after the next enqueue`).toEqual({ pragma: level, stats: said });
    }
  });

  it('stats report a weaker setting left in force, instead of what the store was opened with', () => {
    const { outbox, store } = setup();
    store.db.pragma('synchronous = NORMAL');
    expect(outbox.stats().durability).toBe('process-crash');
    store.db.pragma('synchronous = OFF');
    expect(outbox.stats().durability).toBe('none');
  });

  it('reports the age of the oldest message per channel', async () => {
    const { outbox, clock } = setup();
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await clock.advance(3_000);
    await outbox.enqueue({ channel: 'events', payload: 1 });
    await clock.advance(1_000);
    const s = outbox.stats();
    expect(s.channels.telemetry!.oldestAgeMs).toBe(4_000);
    expect(s.channels.events!.oldestAgeMs).toBe(1_000);
    expect(s.oldestAgeMs).toBe(4_000);
    outbox.ack(all(outbox, ['telemetry']).map((m) => m.id));
    expect(outbox.stats().oldestAgeMs).toBe(1_000);
  });
});

describe('outbox: coalescing', () => {
  it('keeps only the latest undelivered message per key, atomically', async () => {
    const { outbox } = setup();
    await outbox.enqueue({ channel: 'telemetry', payload: 'other' });
    for (let v = 1; v <= 3; v++) await outbox.enqueue({ channel: 'state', payload: { v }, coalesceKey: 'current' });
    expect(all(outbox).map(tag)).toEqual(['state:{"v":3}', 'telemetry:"other"']);
    expect(outbox.stats().channels.state).toMatchObject({ depth: 1, coalesced: 2, dropped: 0 });
    // Concurrent replacements in one group commit: still one.
    await Promise.all([4, 5, 6].map((v) => outbox.enqueue({ channel: 'state', payload: { v }, coalesceKey: 'current' })));
    expect(all(outbox, ['state']).map(tag)).toEqual(['state:{"v":6}']);
  });

  it('leaves a message in flight alone: the new one is queued beside it and takes the key; a failed send of the old one then drops it', async () => {
    const { outbox } = setup();
    await outbox.enqueue({ channel: 'state', payload: 1, coalesceKey: 'k' });
    const [inFlight] = outbox.peekBatch({ maxCount: 1 });
    await outbox.enqueue({ channel: 'state', payload: 2, coalesceKey: 'k' });
    await outbox.enqueue({ channel: 'state', payload: 3, coalesceKey: 'k' });
    expect(outbox.stats().channels['state']?.depth).toBe(2);
    outbox.nack([inFlight!.id]);
    expect(all(outbox).map(tag)).toEqual(['state:3']);
  });
});

describe('outbox: compression', () => {
  it('stores payloads above the threshold gzipped, smaller, and returns them intact', async () => {
    const { outbox } = setup({ compressAboveBytes: 1_024 });
    const large = { readings: Array.from({ length: 200 }, (_, i) => ({ sensor: 'temperature', i, value: 20 + (i % 7) })) };
    const small = { v: 'x'.repeat(500) };
    const noise = randomBytes(1_500).toString('base64');
    await outbox.enqueue({ channel: 'telemetry', payload: large });
    await outbox.enqueue({ channel: 'telemetry', payload: small });
    await outbox.enqueue({ channel: 'telemetry', payload: noise });
    const [a, b, c] = all(outbox);
    expect(a!.payload).toEqual(large);
    expect(a!.compressed).toBe(true);
    expect(a!.storedBytes).toBeLessThan(JSON.stringify(large).length / 4);
    expect(b!.compressed).toBe(false);
    expect(b!.storedBytes).toBe(JSON.stringify(small).length);
    expect(c!.payload).toBe(noise); // compression would not help: stored as is
    expect(outbox.stats().bytes).toBe(a!.storedBytes + b!.storedBytes + c!.storedBytes);
  });
});

describe('outbox: delivery', () => {
  it('does not hand a leased message out again until nack or lease expiry; after a restart all are eligible', async () => {
    const env = setup({ leaseMs: 10_000 });
    const ids: string[] = [];
    for (let i = 1; i <= 5; i++) ids.push((await env.outbox.enqueue({ channel: 'telemetry', payload: i })).id);
    const first = env.outbox.peekBatch({ maxCount: 2 });
    expect(first.map(tag)).toEqual(['telemetry:1', 'telemetry:2']);
    expect(env.outbox.peekBatch({ maxCount: 2 }).map(tag)).toEqual(['telemetry:3', 'telemetry:4']);
    expect(env.outbox.peekBatch({ maxCount: 2, excludeIds: [ids[4]!] })).toEqual([]);
    expect(env.outbox.stats().leased).toBe(4);
    expect(env.outbox.nack([first[0]!.id])).toBe(1);
    expect(env.outbox.peekBatch({ maxCount: 5 }).map(tag)).toEqual(['telemetry:1', 'telemetry:5']);
    await env.clock.advance(10_001); // leases run out
    expect(env.outbox.peekBatch({ maxCount: 5 })).toHaveLength(5);
    const again = await env.reopen();
    expect(again.peekBatch({ maxCount: 10 })).toHaveLength(5);
  });

  it('hands out exactly the next unleased messages in order under a random mix of peeks, acks, nacks and lapsed leases (model check)', async () => {
    // peekBatch starts each lane after its leased prefix; this checks that the shortcut never hides
    // a message: nacked, lapsed, inserted after the tail was acked (SQLite reuses those seqs), or
    // skipped by excludeIds.
    const env = setup({ leaseMs: 5_000 });
    const random = seededRandom(7);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;
    interface Model {
      n: number;
      id: string;
      priority: number;
      leasedUntil: number;
    }
    let queued: Model[] = [];
    let n = 0;
    for (let step = 0; step < 400; step++) {
      const now = env.clock.monotonic();
      const r = random();
      if (r < 0.35) {
        const k = 1 + Math.floor(random() * 6);
        for (let i = 0; i < k; i++) {
          const priority = pick([10, 50, 50, 90]);
          const { id } = await env.outbox.enqueue({ channel: pick(['a', 'b', 'c']), payload: ++n, priority });
          queued.push({ n, id, priority, leasedUntil: -Infinity });
        }
      } else if (r < 0.7) {
        const maxCount = 1 + Math.floor(random() * 8);
        const free = queued.filter((m) => m.leasedUntil <= now);
        const exclude = free.length > 0 && random() < 0.2 ? [pick(free).id] : [];
        const want = free
          .filter((m) => !exclude.includes(m.id))
          .sort((x, y) => y.priority - x.priority || x.n - y.n)
          .slice(0, maxCount);
        const got = env.outbox.peekBatch({ maxCount, excludeIds: exclude });
        expect(got.map((m) => m.payload), `step ${step}`).toEqual(want.map((m) => m.n));
        for (const m of want) m.leasedUntil = now + 5_000;
      } else if (r < 0.85) {
        const leased = queued.filter((m) => m.leasedUntil > now);
        const acked = leased.filter(() => random() < 0.6);
        expect(env.outbox.ack(acked.map((m) => m.id))).toBe(acked.length);
        queued = queued.filter((m) => !acked.includes(m));
      } else if (r < 0.95) {
        const leased = queued.filter((m) => m.leasedUntil > now);
        const back = leased.filter(() => random() < 0.5);
        env.outbox.nack(back.map((m) => m.id));
        for (const m of back) m.leasedUntil = -Infinity;
      } else {
        await env.clock.advance(2_000);
      }
    }
    expect(env.outbox.stats().depth).toBe(queued.length);
  });

  it('acks delete and count as delivered; unknown ids are ignored', async () => {
    const { outbox } = setup();
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'events', payload: i });
    const batch = outbox.peekBatch({ maxCount: 2 });
    expect(outbox.ack([...batch.map((m) => m.id), 'no-such-id'])).toBe(2);
    expect(outbox.ack(batch.map((m) => m.id))).toBe(0);
    expect(outbox.stats().channels.events).toMatchObject({ depth: 1, delivered: 2, leased: 0 });
  });

  it('parks rejected messages apart, visible, not retried until an operator says so', async () => {
    const { outbox, clock } = setup();
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    const [poison] = outbox.peekBatch({ maxCount: 1 });
    expect(outbox.park([poison!.id], 'HTTP 422: schema mismatch')).toBe(1);
    expect(all(outbox).map(tag)).toEqual(['telemetry:2', 'telemetry:3']);
    const parked = outbox.parked();
    expect(parked).toHaveLength(1);
    expect(parked[0]).toMatchObject({ id: poison!.id, payload: 1, reason: 'HTTP 422: schema mismatch', parkedAt: clock.now() });
    expect(outbox.stats().channels.telemetry).toMatchObject({ parked: 1, parkedTotal: 1, depth: 2 });
    expect(outbox.retryParked()).toBe(1);
    expect(all(outbox).map(tag)).toEqual(['telemetry:2', 'telemetry:3', 'telemetry:1']);
    outbox.park([poison!.id], 'again');
    expect(outbox.purgeParked()).toBe(1);
    expect(outbox.parked()).toEqual([]);
    expect(outbox.stats().channels.telemetry).toMatchObject({ parked: 0, parkedTotal: 2, depth: 2 });
  });

  it('flush(sendFn) sends in order, acks each batch, and stops at the first failure leaving the rest queued', async () => {
    const { outbox } = setup();
    for (let i = 1; i <= 7; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    const got: number[] = [];
    let calls = 0;
    const err = await rejection(
      flushOutbox(
        outbox,
        async (batch) => {
          if (++calls === 3) throw new Error('cloud down');
          got.push(...batch.map((m) => m.payload as number));
        },
        { maxCount: 2 },
      ),
    );
    expect((err as Error).message).toBe('cloud down');
    expect(got).toEqual([1, 2, 3, 4]);
    expect(all(outbox).map((m) => m.payload)).toEqual([5, 6, 7]);
    expect(outbox.stats().leased).toBe(0);
    expect(await flushOutbox(outbox, async (batch) => void got.push(...batch.map((m) => m.payload as number)))).toBe(3);
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });
});

describe('outbox: group commit', () => {
  it('writes many concurrent enqueues in few transactions, and every promise resolves after its commit', async () => {
    const { outbox, commits } = setup({ limits: { maxCount: 10_000, maxBytes: 1 << 30 }, groupCommit: { windowMs: 50, maxBatch: 100 } });
    const results = await Promise.all(Array.from({ length: 1_000 }, (_, i) => outbox.enqueue({ channel: 'telemetry', payload: i })));
    expect(new Set(results.map((r) => r.id)).size).toBe(1_000);
    expect(commits.length).toBeGreaterThanOrEqual(10);
    expect(commits.length).toBeLessThanOrEqual(11);
    expect(commits.every((c) => c.messages <= 100)).toBe(true);
    expect(outbox.stats().commits).toBe(commits.length);
    expect(outbox.stats().depth).toBe(1_000);
  });

  it('lets producers that await each enqueue share commits without waiting out the window', async () => {
    const { outbox, commits } = setup({ limits: { maxCount: 10_000, maxBytes: 1 << 30 }, groupCommit: { windowMs: 300, maxBatch: 10_000 } });
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: 16 }, async (_, p) => {
        for (let i = 0; i < 20; i++) await outbox.enqueue({ channel: 'telemetry', payload: p * 100 + i });
      }),
    );
    // The first batch waits for the window (nothing to go by yet); the next 19 come back together.
    expect(commits).toHaveLength(20);
    expect(commits.every((c) => c.calls === 16)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('does not hold a lone producer for the window: each of its enqueues commits at the end of its turn', async () => {
    // A window far longer than the test may take: waiting it out even once would fail the test.
    const { outbox, commits } = setup({ groupCommit: { windowMs: 60_000 } });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await outbox.enqueue({ channel: 'telemetry', payload: 2 });
    expect(commits).toHaveLength(2);
  }, 30_000);

  it('resolves an enqueue only after an fdatasync of the WAL that began after its commit; what comes meanwhile shares the next', async () => {
    const fs = handFs();
    const { outbox, commits, dir } = setup({ walSyncFs: fs.fs, groupCommit: { windowMs: 60_000, maxBatch: 10_000 } });
    const resolved: string[] = [];
    const first = outbox.enqueue({ channel: 'telemetry', payload: 'a' }).then(() => void resolved.push('a'));
    await until(() => fs.running() === 1);
    expect(commits.map((c) => c.calls)).toEqual([1]);
    expect(queuedPayloads(dir)).toEqual(['"a"']); // committed: another connection sees it ...
    expect(resolved).toEqual([]); // ... but not answered before it is on disk
    const later: Promise<unknown>[] = [];
    for (let i = 0; i < 5; i++) {
      later.push(outbox.enqueue({ channel: 'telemetry', payload: i }).then(() => void resolved.push(String(i))));
      await new Promise((r) => setImmediate(r));
    }
    expect(commits.map((c) => c.calls)).toEqual([1]); // held while the fdatasync runs
    fs.endSync();
    await first;
    expect(resolved).toEqual(['a']);
    expect(commits.map((c) => c.calls)).toEqual([1, 5]); // in before the next fdatasync, which covers them
    expect(fs.running()).toBe(1);
    fs.endSync();
    await Promise.all(later);
    expect(resolved).toEqual(['a', '0', '1', '2', '3', '4']);
    const closed = outbox.close(); // one last fdatasync for what close commits
    fs.endSync();
    await closed;
  });

  it('tells the producers of a commit whose fdatasync failed, and keeps their messages queued', async () => {
    const fs = handFs();
    const { outbox, dir } = setup({ walSyncFs: fs.fs });
    const p = outbox.enqueue({ channel: 'telemetry', payload: 'x' });
    await until(() => fs.running() === 1);
    fs.endSync(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    const err = await rejection(p);
    expect(isOutboxError(err, 'OUTBOX_WRITE_FAILED')).toBe(true);
    expect((err as Error).message).toBe(
      'writing 1 message(s): fdatasync of ' + join(dir, 'agent.db') + '-wal failed: EIO: i/o error, fdatasync; they are queued but may not survive a power cut',
    );
    expect(queuedPayloads(dir)).toEqual(['"x"']);
    const next = outbox.enqueue({ channel: 'telemetry', payload: 'y' });
    await until(() => fs.running() === 1);
    fs.endSync();
    await expect(next).resolves.toMatchObject({ id: expect.any(String) });
    const closed = outbox.close();
    fs.endSync();
    await closed;
  });

  it('with store.synchronous normal answers at the commit, with no fdatasync of its own', async () => {
    const fs = handFs();
    const { outbox } = setup({ walSyncFs: fs.fs }, { synchronous: 'normal' });
    await outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await outbox.close();
    expect(fs.log).toEqual([]);
  });

  it('refuses enqueues after close, having committed what was pending', async () => {
    const { outbox } = setup();
    const p = outbox.enqueue({ channel: 'telemetry', payload: 1 });
    await outbox.close();
    await expect(p).resolves.toMatchObject({ id: expect.any(String) });
    expect(isOutboxError(await rejection(outbox.enqueue({ channel: 'telemetry', payload: 2 })), 'OUTBOX_CLOSED')).toBe(true);
  });
});

describe('outbox: disk', () => {
  it('with drop-oldest below the free-disk watermark stops growing: replaces lower-or-equal priority, else OUTBOX_DISK_LOW', async () => {
    let free = 1_000_000_000;
    const { outbox, clock } = setup({ disk: { minFreeBytes: 100_000_000, checkIntervalMs: 1_000, freeBytes: () => free }, onLimit: DROP_ALL });
    for (let i = 1; i <= 3; i++) await outbox.enqueue({ channel: 'telemetry', payload: i });
    free = 50_000_000;
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'telemetry', payload: 4 }); // replaces telemetry:1
    await outbox.enqueue({ channel: 'events', payload: 1 }); // replaces telemetry:2
    expect(all(outbox).map(tag)).toEqual(['events:1', 'telemetry:3', 'telemetry:4']);
    const err = await rejection(outbox.enqueue({ channel: 'metrics', payload: 1 }));
    expect(isOutboxError(err, 'OUTBOX_DISK_LOW')).toBe(true);
    expect((err as Error).message).toMatch(/disk space low/);
    const s = outbox.stats();
    expect(s.disk.low).toBe(true);
    expect(s.channels.telemetry!.drops.disk).toBe(2);
    expect(s.depth).toBe(3);
    free = 500_000_000;
    await clock.advance(1_000);
    await outbox.enqueue({ channel: 'metrics', payload: 1 });
    expect(outbox.stats()).toMatchObject({ depth: 4, disk: { low: false } });
  });

  it('turns SQLITE_FULL into OUTBOX_DISK_FULL, rolls back, loses nothing and recovers', async () => {
    const { outbox, store } = setup({ compressAboveBytes: 1 << 30 });
    for (let i = 0; i < 20; i++) await outbox.enqueue({ channel: 'telemetry', payload: { i, pad: 'p'.repeat(300) } });
    const before = all(outbox).map((m) => m.id);
    const pages = store.db.pragma('page_count', { simple: true }) as number;
    store.db.pragma(`max_page_count = ${pages}`); // the database cannot grow: like a full disk
    const big = Array.from({ length: 50 }, (_, i) => outbox.enqueue({ channel: 'telemetry', payload: { i, pad: randomBytes(2_000).toString('hex') } }));
    const errs = await Promise.all(big.map((p) => rejection(p)));
    expect(errs.every((e) => isOutboxError(e, 'OUTBOX_DISK_FULL'))).toBe(true);
    expect((errs[0] as Error).message).toMatch(/full.*rolled back.*nothing queued before was lost/);
    expect(all(outbox).map((m) => m.id)).toEqual(before);
    expect(outbox.stats().depth).toBe(20);
    // Deleting still works (it frees pages), and once there is room enqueue works again.
    expect(outbox.ack(before.slice(0, 10))).toBe(10);
    store.db.pragma('max_page_count = 1073741823');
    await outbox.enqueue({ channel: 'telemetry', payload: 'back' });
    expect(outbox.stats().depth).toBe(11);
    expect(store.db.pragma('quick_check', { simple: true })).toBe('ok');
  });
});

describe('metrics downsampling', () => {
  it('keeps a long run within the bound, aggregating instead of dropping, with exact min/max/mean', async () => {
    const max = 64;
    const { outbox, clock } = setup({ channels: outboxSettings({ ...defaultConfig().settings.offline, maxOfflineMetricsBuffer: max }).channels });
    const buffer = new MetricsBuffer({ outbox, maxSamples: max });
    const random = seededRandom(3);
    const n = 2_000;
    let cpuMin = Infinity;
    let cpuMax = -Infinity;
    let cpuSum = 0;
    let tempSum = 0;
    let tempCount = 0;
    const firstTs = clock.now();
    for (let i = 0; i < n; i++) {
      const cpu = Math.round(random() * 10_000) / 100;
      const values: Record<string, number> = { cpu, memUsedPct: 40 + random() };
      if (i % 3 === 0) {
        values.tempC = 45 + random() * 10; // a sensor that answers one time in three
        tempSum += values.tempC;
        tempCount++;
      }
      cpuMin = Math.min(cpuMin, cpu);
      cpuMax = Math.max(cpuMax, cpu);
      cpuSum += cpu;
      await buffer.add({ ts: clock.now(), values });
      expect(outbox.stats().channels.metrics!.depth).toBeLessThanOrEqual(max);
      await clock.advance(60_000);
    }
    const s = outbox.stats().channels.metrics!;
    expect(s.dropped).toBe(0);
    expect(s.downsampled).toBe(n - s.depth);
    const recs = all(outbox, ['metrics']).map((m) => m.payload as unknown as MetricsRecord);
    const aggs = recs.map(toAggregate);
    expect(aggs.reduce((t, a) => t + a.count, 0)).toBe(n);
    // The history is contiguous and in order, from the first sample to the last.
    expect(aggs[0]!.from).toBe(firstTs);
    expect(aggs.at(-1)!.to).toBe(firstTs + (n - 1) * 60_000);
    for (let i = 1; i < aggs.length; i++) expect(aggs[i]!.from).toBeGreaterThan(aggs[i - 1]!.to);
    // Coarser with age: levels never rise from old to new, and the newest are raw samples.
    const levels = recs.map(levelOf);
    for (let i = 1; i < levels.length; i++) expect(levels[i]).toBeLessThanOrEqual(levels[i - 1]!);
    expect(isAggregate(recs.at(-1)!)).toBe(false);
    expect(levels[0]).toBeGreaterThanOrEqual(4);
    // Exact statistics, also for a metric that only some samples had.
    const cpu = aggs.map((a) => a.values.cpu!);
    expect(Math.min(...cpu.map((c) => c.min))).toBe(cpuMin);
    expect(Math.max(...cpu.map((c) => c.max))).toBe(cpuMax);
    const mean = (k: string) => {
      const vs = aggs.map((a) => a.values[k]).filter((v) => v !== undefined);
      return vs.reduce((t, v) => t + v.mean * v.count, 0) / vs.reduce((t, v) => t + v.count, 0);
    };
    expect(mean('cpu')).toBeCloseTo(cpuSum / n, 9);
    expect(mean('tempC')).toBeCloseTo(tempSum / tempCount, 9);
    expect(aggs.reduce((t, a) => t + (a.values.tempC?.count ?? 0), 0)).toBe(tempCount);
  });

  it('never merges a message in flight, and gives merged messages new ids', async () => {
    const { outbox, clock } = setup();
    const buffer = new MetricsBuffer({ outbox, maxSamples: 8 });
    for (let i = 0; i < 8; i++) {
      await buffer.add({ ts: clock.now(), values: { cpu: i } });
      await clock.advance(1_000);
    }
    const inFlight = outbox.peekBatch({ maxCount: 1 })[0]!;
    const idsBefore = new Set(outbox.readChannel('metrics', 100).map((m) => m.id));
    await buffer.add({ ts: clock.now(), values: { cpu: 8 } });
    const after = outbox.readChannel('metrics', 100);
    expect(after.length).toBeLessThan(9);
    expect(after[0]!.id).toBe(inFlight.id);
    expect(after[0]!.payload).toEqual(inFlight.payload);
    const merged = after.filter((m) => isAggregate(m.payload as unknown as MetricsRecord));
    expect(merged.length).toBeGreaterThan(0);
    for (const m of merged) expect(idsBefore.has(m.id)).toBe(false);
  });

  it('rejects a malformed sample, naming the field', async () => {
    const { outbox } = setup();
    const buffer = new MetricsBuffer({ outbox, maxSamples: 8 });
    const err = await rejection(buffer.add({ ts: 1, values: { cpu: Number.NaN } }));
    expect(isOutboxError(err, 'OUTBOX_INVALID')).toBe(true);
    expect((err as Error).message).toContain('values.cpu');
  });
});
