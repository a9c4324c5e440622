import BetterSqlite3 from 'better-sqlite3';
import fc from 'fast-check';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LANE_TOTALS_MISMATCH_SQL } from '../../src/outbox/migration.js';
import type { Outbox } from '../../src/outbox/outbox.js';
import type { Logger } from '../../src/util/logger.js';
import type { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger } from '../helpers/logger.js';
import { outboxesPerTest, type OpenOutbox, type OutboxOpening } from '../helpers/outbox-per-test.js';

/**
 * The per-lane totals the outbox keeps in the database (`outbox_lane_totals`), so a start does not
 * count the rows: they agree with the rows after any mix of writes, a start loads them only when it
 * may (a clean close, or a background check to follow), and what disagrees is counted again.
 */

const { make: open, close, dirs } = outboxesPerTest();

interface Opening {
  path: string;
  clock?: FakeClock;
  logger?: Logger;
  background?: boolean;
  overrides?: OutboxOpening['overrides'];
}

const make = (o: Opening) => open({ ...o, integrityCheck: o.background ? 'background' : 'inline' });
const closeOne = (env: OpenOutbox, crash = false): Promise<void> => close(env, { crash });

const persisted = (db: BetterSqlite3.Database) =>
  db.prepare('SELECT channel, priority, count, bytes FROM outbox_lane_totals ORDER BY channel, priority').all() as {
    channel: string;
    priority: number;
    count: number;
    bytes: number;
  }[];
const depthOf = (outbox: Outbox): number => outbox.stats().depth;

/** Writes to the file as another program would (`sqlite3`): the outbox's totals do not follow. */
function writeOutside(path: string, sql: string): void {
  const db = new BetterSqlite3(path);
  db.exec(sql);
  db.close();
}

describe('outbox lane totals: kept with the rows', () => {
  const op = fc.oneof(
    fc.record({ k: fc.constant('enqueue' as const), channel: fc.constantFrom('telemetry', 'events', 'logs'), n: fc.integer({ min: 1, max: 6 }), ttl: fc.boolean(), key: fc.option(fc.constantFrom('a', 'b')) }),
    fc.record({ k: fc.constant('deliver' as const), n: fc.integer({ min: 1, max: 8 }) }),
    fc.record({ k: fc.constant('nack' as const), n: fc.integer({ min: 1, max: 4 }) }),
    fc.record({ k: fc.constant('park' as const), n: fc.integer({ min: 1, max: 3 }) }),
    fc.record({ k: fc.constant('retryParked' as const) }),
    fc.record({ k: fc.constant('purgeParked' as const) }),
    fc.record({ k: fc.constant('downsample' as const), removeRest: fc.boolean() }),
    fc.record({ k: fc.constant('expire' as const), ms: fc.integer({ min: 0, max: 3_000 }) }),
  );

  it('after any mix of enqueues, deliveries, drops, expiries, parking and rewrites the persisted totals are the rows', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
        const path = join(dirs.make(), 'agent.db');
        // A small count limit, so that enqueues drop the oldest (or are refused, by a channel's policy).
        const env = make({ path, overrides: { limits: { maxCount: 12, maxBytes: 64 * 1_048_576 } } });
        const { outbox, store, clock } = env;
        let seq = 0;
        for (const o of ops) {
          if (o.k === 'enqueue') {
            const msgs = Array.from({ length: o.n }, () => ({
              channel: o.channel,
              payload: { v: seq++, pad: 'x'.repeat(seq % 7) },
              ttlMs: o.ttl ? 1_000 : undefined,
              coalesceKey: o.key ?? undefined,
            }));
            await outbox.enqueueMany(msgs).catch(() => undefined);
          } else if (o.k === 'deliver') {
            outbox.ack(outbox.peekBatch({ maxCount: o.n }).map((m) => m.id));
          } else if (o.k === 'nack') {
            outbox.nack(outbox.peekBatch({ maxCount: o.n }).map((m) => m.id));
          } else if (o.k === 'park') {
            outbox.park(outbox.peekBatch({ maxCount: o.n }).map((m) => m.id), 'rejected');
          } else if (o.k === 'retryParked') {
            outbox.retryParked();
          } else if (o.k === 'purgeParked') {
            outbox.purgeParked();
          } else if (o.k === 'downsample') {
            const rows = outbox.readChannel('telemetry', 4).filter((r) => !r.leased);
            if (rows.length >= 2) {
              const replace = [{ id: rows[0]!.id, payload: { merged: rows.length, pad: 'y'.repeat(rows.length * 5) } }];
              outbox.rewrite('telemetry', { replace, remove: o.removeRest ? rows.slice(1).map((r) => r.id) : [] });
            }
          } else {
            await clock.advance(o.ms);
            outbox.expire();
          }
        }
        expect(store.db.prepare(LANE_TOTALS_MISMATCH_SQL).get()).toBeUndefined();
        const before = outbox.stats();
        await closeOne(env);
        // A clean close: the next start loads the totals as they are, and they are the same ledger.
        const again = make({ path, clock });
        const after = again.outbox.stats();
        expect({ depth: after.depth, bytes: after.bytes }).toEqual({ depth: before.depth, bytes: before.bytes });
        for (const [name, ch] of Object.entries(before.channels)) expect(after.channels[name]?.depth ?? 0, name).toBe(ch.depth);
        await closeOne(again);
      }),
      { numRuns: 40 },
    );
  });

  it('a lane emptied by deliveries leaves no row behind', async () => {
    const env = make({ path: join(dirs.make(), 'agent.db') });
    await env.outbox.enqueueMany([{ channel: 'events', payload: 1 }, { channel: 'telemetry', payload: 2 }]);
    expect(persisted(env.store.db).map((r) => r.channel)).toEqual(['events', 'telemetry']);
    env.outbox.ack(env.outbox.peekBatch({ maxCount: 10 }).filter((m) => m.channel === 'events').map((m) => m.id));
    expect(persisted(env.store.db)).toEqual([{ channel: 'telemetry', priority: expect.any(Number) as number, count: 1, bytes: expect.any(Number) as number }]);
  });
});

describe('outbox lane totals: when a start trusts them', () => {
  it('after a clean close a start loads them without counting (shown by totals that are not the rows)', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany([{ channel: 'telemetry', payload: 1 }, { channel: 'telemetry', payload: 2 }]);
    await closeOne(env);
    // The file changes after the clean close: it no longer vouches for itself, so the rows are counted.
    writeOutside(path, "UPDATE outbox_lane_totals SET count = 50 WHERE channel = 'telemetry'");
    const again = make({ path });
    expect(depthOf(again.outbox)).toBe(2);
    expect(persisted(again.store.db)[0]?.count).toBe(2);
  });

  it('after a crash, with the check in the background, a start loads them and the check puts a disagreement right', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany(Array.from({ length: 5 }, (_, i) => ({ channel: 'telemetry', payload: i })));
    await env.outbox.enqueue({ channel: 'events', payload: 'e' });
    await closeOne(env, true);
    // While the agent is down, someone deletes messages with sqlite3: two of one lane, all of another.
    writeOutside(path, "DELETE FROM outbox WHERE seq IN (2, 4) OR channel = 'events'");
    const cap = captureLogger();
    const again = make({ path, background: true, logger: cap.logger });
    // Loaded as persisted: the start did not count.
    expect(depthOf(again.outbox)).toBe(6);
    again.store.startIntegrityCheck();
    const status = await again.store.integrityResult();
    expect(status.state).toBe('ok');
    expect(depthOf(again.outbox)).toBe(3);
    expect(persisted(again.store.db)).toEqual([{ channel: 'telemetry', priority: expect.any(Number) as number, count: 3, bytes: expect.any(Number) as number }]);
    expect(again.store.db.prepare(LANE_TOTALS_MISMATCH_SQL).get()).toBeUndefined();
    expect(cap.text()).toContain('did not match its rows');
    // Delivery still takes exactly the three that are there.
    expect(again.outbox.peekBatch({ maxCount: 10 }).map((m) => m.payload)).toEqual([0, 2, 4]);
  });

  it('after a crash, the background check finds nothing to put right when nothing else wrote', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany(Array.from({ length: 4 }, (_, i) => ({ channel: 'events', payload: i })));
    env.outbox.ack(env.outbox.peekBatch({ maxCount: 1 }).map((m) => m.id));
    await closeOne(env, true);
    const cap = captureLogger();
    const again = make({ path, background: true, logger: cap.logger });
    expect(depthOf(again.outbox)).toBe(3);
    again.store.startIntegrityCheck();
    await again.store.integrityResult();
    expect(depthOf(again.outbox)).toBe(3);
    expect(cap.text()).not.toContain('did not match');
  });

  it('after a crash with the check inline (no background check to follow), a start counts the rows', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany(Array.from({ length: 3 }, (_, i) => ({ channel: 'telemetry', payload: i })));
    await closeOne(env, true);
    writeOutside(path, 'DELETE FROM outbox WHERE seq = 1');
    const again = make({ path });
    expect(depthOf(again.outbox)).toBe(2);
    expect(persisted(again.store.db)[0]?.count).toBe(2);
  });
});
