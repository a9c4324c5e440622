import BetterSqlite3 from 'better-sqlite3';
import fc from 'fast-check';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { addToDigest, DIGEST_MODULUS, digestHex, digestOf, idHash } from '../../src/outbox/ledger.js';
import { rebaseLedger } from '../../src/outbox/salvage-losses.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { Store } from '../helpers/store.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { outboxesPerTest, type OpenOutbox } from '../helpers/outbox-per-test.js';

/**
 * The loss ledger: per channel, accepted = delivered + queued + parked + dropped + expired +
 * superseded, persisted, after any mix of operations and across restarts; a message removed behind
 * the outbox's back shows as unaccounted; the digest is the cloud's check of `delivered`.
 */

const { make, close, dirs } = outboxesPerTest();

function writeOutside(path: string, sql: string): void {
  const db = new BetterSqlite3(path);
  db.exec(sql);
  db.close();
}

describe('the digest of delivered ids', () => {
  it('is a 52-bit hash per id, summed modulo 2^52: the same for any order of the same ids', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.string({ minLength: 1, maxLength: 40 }), { maxLength: 30 }), (ids) => {
        for (const id of ids) expect(idHash(id)).toBeLessThan(DIGEST_MODULUS);
        expect(digestOf([...ids].reverse())).toBe(digestOf(ids));
        expect(digestOf(ids)).toBeLessThan(DIGEST_MODULUS);
      }),
    );
  });

  it('changes when an id is missing or another takes its place', () => {
    const ids = Array.from({ length: 500 }, (_, i) => `0190c3a2-7b1e-7000-8000-${String(i).padStart(12, '0')}`);
    const all = digestOf(ids);
    expect(digestOf(ids.slice(1))).not.toBe(all);
    expect(digestOf([...ids.slice(1), 'another-id'])).not.toBe(all);
  });

  it('is pinned: these values come from an independent implementation of the algorithm docs/protocol.md states, so any cloud computes the same', () => {
    expect(idHash('a')).toBe(195384864283922);
    expect(idHash('0190c3a2-7b1e-7000-8000-000000000001')).toBe(1782501019108204);
    // Non-ASCII ids hash their UTF-8 bytes.
    expect(idHash('é')).toBe(2065740974892682);
    expect(digestHex(digestOf(['msg-1', 'msg-2']))).toBe('8496c6225334a');
    expect(digestHex(addToDigest(0, 'a'))).toBe('0b1b3956e1d12');
  });
});

const op = fc.oneof(
  fc.record({ k: fc.constant('enqueue' as const), channel: fc.constantFrom('telemetry', 'events'), n: fc.integer({ min: 1, max: 6 }), ttl: fc.boolean(), key: fc.option(fc.constantFrom('a', 'b')), id: fc.option(fc.constantFrom('given-1', 'given-2')) }),
  fc.record({ k: fc.constant('deliver' as const), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ k: fc.constant('nack' as const), n: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ k: fc.constant('park' as const), n: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ k: fc.constant('retryParked' as const) }),
  fc.record({ k: fc.constant('purgeParked' as const) }),
  fc.record({ k: fc.constant('downsample' as const), removeRest: fc.boolean() }),
  fc.record({ k: fc.constant('expire' as const), ms: fc.integer({ min: 0, max: 3_000 }) }),
  fc.record({ k: fc.constant('offline' as const) }),
  fc.record({ k: fc.constant('reopen' as const), crash: fc.boolean() }),
);

describe('the loss ledger', () => {
  it('balances after any mix of enqueues, deliveries, drops, expiries, parking, rewrites and restarts; delivered and digest match what was acked', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 30 }), async (ops) => {
        const path = join(dirs.make(), 'agent.db');
        let offline = false;
        // Small limits, so enqueues drop the oldest, refuse, and the parked table trims.
        const opening = () =>
          make({ path, clock, overrides: { limits: { maxCount: 10, maxBytes: 64 * 1_048_576 }, maxParked: 3, refuseWhileOffline: () => offline } });
        let env: OpenOutbox = make({ path, overrides: { limits: { maxCount: 10, maxBytes: 64 * 1_048_576 }, maxParked: 3, refuseWhileOffline: () => offline } });
        const clock = env.clock;
        const acked = new Map<string, string[]>();
        let seq = 0;
        for (const o of ops) {
          const { outbox } = env;
          if (o.k === 'enqueue') {
            const msgs = Array.from({ length: o.n }, (_, i) => ({
              channel: o.channel,
              payload: { v: seq++ },
              ttlMs: o.ttl ? 1_000 : undefined,
              coalesceKey: o.key ?? undefined,
              id: i === 0 && o.id ? o.id : undefined,
            }));
            await outbox.enqueueMany(msgs).catch(() => undefined);
            offline = false;
          } else if (o.k === 'offline') {
            offline = true;
          } else if (o.k === 'deliver') {
            const batch = outbox.peekBatch({ maxCount: o.n });
            outbox.ack(batch.map((m) => m.id));
            for (const m of batch) acked.set(m.channel, [...(acked.get(m.channel) ?? []), m.id]);
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
              outbox.rewrite('telemetry', { replace: [{ id: rows[0]!.id, payload: { merged: rows.length } }], remove: o.removeRest ? rows.slice(1).map((r) => r.id) : [] });
            }
          } else if (o.k === 'expire') {
            await clock.advance(o.ms);
            outbox.expire();
          } else {
            await close(env, { crash: o.crash });
            env = opening();
          }
          const ledger = env.outbox.ledger();
          expect(ledger.balanced, JSON.stringify(ledger)).toBe(true);
        }
        const ledger = env.outbox.ledger();
        for (const [channel, ids] of acked) {
          expect(ledger.channels[channel]?.delivered).toBe(ids.length);
          expect(ledger.channels[channel]?.digest).toBe(digestHex(digestOf(ids)));
        }
      }),
      { numRuns: 60 },
    );
  });

  it('a message parked, sent again under the same id and parked again: one parked copy, the other counted as superseded', async () => {
    const env = make();
    for (let i = 0; i < 2; i++) {
      await env.outbox.enqueue({ channel: 'events', payload: i, id: 'same-id' });
      env.outbox.park(env.outbox.peekBatch({ maxCount: 1 }).map((m) => m.id), 'refused');
    }
    expect(env.outbox.ledger().channels.events).toMatchObject({ accepted: 2, parked: 1, superseded: 1, unaccounted: 0 });
    expect(env.outbox.parked().map((m) => m.payload)).toEqual([1]);
  });

  it('a parked message retried while a copy with its id is queued: one queued copy, the other counted as superseded', async () => {
    const env = make();
    await env.outbox.enqueue({ channel: 'events', payload: 'first', id: 'same-id' });
    env.outbox.park(env.outbox.peekBatch({ maxCount: 1 }).map((m) => m.id), 'refused');
    await env.outbox.enqueue({ channel: 'events', payload: 'again', id: 'same-id' });
    expect(env.outbox.retryParked()).toBe(0);
    expect(env.outbox.ledger().channels.events).toMatchObject({ accepted: 2, queued: 1, parked: 0, superseded: 1, unaccounted: 0 });
  });

  it('counts a message removed from the database behind the agent’s back as unaccounted, and says so in the log', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany(Array.from({ length: 4 }, (_, i) => ({ channel: 'telemetry', payload: i })));
    env.outbox.ack(env.outbox.peekBatch({ maxCount: 1 }).map((m) => m.id));
    await close(env);
    writeOutside(path, 'DELETE FROM outbox WHERE seq = 3');
    const cap = captureLogger();
    const again = make({ path, logger: cap.logger });
    const l = again.outbox.ledger().channels.telemetry!;
    expect(l).toMatchObject({ accepted: 4, delivered: 1, queued: 2, unaccounted: 1 });
    expect(again.outbox.ledger().balanced).toBe(false);
    expect(cap.records().filter((r) => String(r.msg).includes('does not balance'))).toHaveLength(1);
  });

  it('a database from before the ledger starts balanced: accepted is set to what its counters and rows account for', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany(Array.from({ length: 5 }, (_, i) => ({ channel: 'events', payload: i })));
    env.outbox.ack(env.outbox.peekBatch({ maxCount: 2 }).map((m) => m.id));
    env.outbox.park(env.outbox.peekBatch({ maxCount: 1 }).map((m) => m.id), 'bad');
    await close(env);
    // As a database written by the version before this one: no accepted counter, at schema 9 (the tables of later migrations gone).
    const db0 = new BetterSqlite3(path);
    const later = (db0.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('outbox_stream_heads', 'link_budget', 'link_counter', 'log_services', 'log_cursors', 'log_tail')").pluck().all() as string[]).map((t) => `DROP TABLE ${t};`);
    const columns = ['outbox', 'outbox_parked'].filter((t) => db0.prepare(`SELECT 1 FROM pragma_table_info('${t}') WHERE name = 'stream'`).get() !== undefined);
    db0.close();
    const dropColumns = columns.map((t) => `ALTER TABLE ${t} DROP COLUMN stream;`).join(' ');
    writeOutside(path, `DELETE FROM outbox_counters WHERE counter = 'accepted'; ${later.join(' ')} ${dropColumns} PRAGMA user_version = 9;`);
    const db = new BetterSqlite3(path);
    expect(db.pragma('user_version', { simple: true })).toBe(9);
    db.close();
    const again = make({ path });
    expect(again.outbox.ledger().channels.events).toMatchObject({ accepted: 5, delivered: 2, parked: 1, queued: 2, unaccounted: 0 });
  });

  it('after a salvage, what was taken and is no longer accounted for counts as lost with the damaged database; a lagging accepted is raised', async () => {
    const path = join(dirs.make(), 'agent.db');
    const env = make({ path });
    await env.outbox.enqueueMany(Array.from({ length: 6 }, (_, i) => ({ channel: 'telemetry', payload: i })));
    await env.outbox.enqueueMany(Array.from({ length: 3 }, (_, i) => ({ channel: 'events', payload: i })));
    env.outbox.ack(env.outbox.peekBatch({ maxCount: 1, channels: ['telemetry'] }).map((m) => m.id));
    await close(env);
    // As a salvage leaves it: two telemetry rows gone with no index to name them; events' accepted from a copy that lagged.
    writeOutside(path, "DELETE FROM outbox WHERE channel = 'telemetry' AND seq IN (SELECT seq FROM outbox WHERE channel = 'telemetry' ORDER BY seq DESC LIMIT 2); UPDATE outbox_counters SET value = 1 WHERE channel = 'events' AND counter = 'accepted';");
    const db = new BetterSqlite3(path);
    const cap = captureLogger();
    expect(rebaseLedger(db, cap.logger)).toEqual({ telemetry: { corrupt: 2, accepted: 0 }, events: { corrupt: 0, accepted: 2 } });
    expect(rebaseLedger(db, cap.logger)).toEqual({});
    db.close();
    expect(cap.records()).toHaveLength(1);
    const again = make({ path });
    const l = again.outbox.ledger();
    expect(l.balanced).toBe(true);
    expect(l.channels.telemetry).toMatchObject({ accepted: 6, delivered: 1, queued: 3, dropped: { corrupt: 2 } });
    expect(l.channels.events).toMatchObject({ accepted: 3, queued: 3 });
  });

  it('the migration is a no-op on an empty database', () => {
    const path = join(dirs.make(), 'agent.db');
    const store = Store.open({ path, logger: silentLogger(), clock: new FakeClock(), integrityCheck: 'inline' });
    expect(store.db.prepare("SELECT count(*) AS n FROM outbox_counters WHERE counter = 'accepted'").get()).toEqual({ n: 0 });
    store.close();
  });
});
