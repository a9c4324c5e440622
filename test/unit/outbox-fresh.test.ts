import { describe, expect, it } from 'vitest';
import type { Outbox } from '../../src/outbox/outbox.js';
import type { FreshEpisode } from '../../src/outbox/episode.js';
import type { EnqueueMessage, OutboxMessage } from '../../src/outbox/types.js';
import { outboxesPerTest, type OutboxOpening } from '../helpers/outbox-per-test.js';

/**
 * Freshness-first drain (docs/outbox.md): after a return, the newest message of each stream of the
 * opt-in channels first, then what was queued after the return, then the history oldest first,
 * marked backfill.
 */

const { make, close } = outboxesPerTest();
const open = (o: OutboxOpening = {}) => make({ synchronous: 'normal', ...o });

const t = (stream: string, n: number): EnqueueMessage => ({ channel: 'telemetry', stream, payload: `${stream}${n}` });
/** Payload and backfill mark of each message, as a receiver would tell them apart. */
const seen = (batch: OutboxMessage[]): string[] => batch.map((m) => `${String(m.payload)}${m.backfill ? '*' : ''}`);
const drain = (outbox: Outbox, episode: FreshEpisode, maxCount = 100): string[] => {
  const out: string[] = [];
  for (;;) {
    const batch = outbox.peekBatch({ maxCount, episode });
    if (batch.length === 0) return out;
    out.push(...seen(batch));
    outbox.ack(batch.map((m) => m.id));
  }
};

/** Three streams, three messages each, interleaved: a1 b1 c1 a2 b2 c2 a3 b3 c3. */
async function backlog(outbox: Outbox): Promise<void> {
  for (const n of [1, 2, 3]) await outbox.enqueueMany(['a', 'b', 'c'].map((s) => t(s, n)));
}

describe('freshness-first drain', () => {
  it('sends the newest message of each stream first, then the history oldest first, marked backfill', async () => {
    const { outbox } = open();
    await backlog(outbox);
    const episode = outbox.beginEpisode();
    expect(drain(outbox, episode, 4)).toEqual(['a3', 'b3', 'c3', 'a1*', 'b1*', 'c1*', 'a2*', 'b2*', 'c2*']);
  });

  it('sends what is queued after the return before the history, unmarked', async () => {
    const { outbox } = open();
    await backlog(outbox);
    const episode = outbox.beginEpisode();
    expect(seen(outbox.peekBatch({ maxCount: 4, episode }))).toEqual(['a3', 'b3', 'c3', 'a1*']);
    await outbox.enqueueMany([t('b', 4), t('d', 1)]);
    expect(drain(outbox, episode, 3)).toEqual(['b4', 'd1', 'b1*', 'c1*', 'a2*', 'b2*', 'c2*']);
  });

  it('keeps a new message live when SQLite reuses the seq of delivered newest messages', async () => {
    const { outbox } = open();
    await backlog(outbox);
    const episode = outbox.beginEpisode();
    const heads = outbox.peekBatch({ maxCount: 3, episode });
    outbox.ack(heads.map((m) => m.id)); // the three highest seqs are gone: the next insert reuses one
    await outbox.enqueue(t('a', 4));
    expect(drain(outbox, episode, 2)).toEqual(['a4', 'a1*', 'b1*', 'c1*', 'a2*', 'b2*', 'c2*']);
  });

  it('orders heads by priority, keeps priorities between the rest, and leaves channels that do not opt in alone', async () => {
    const { outbox } = open();
    await outbox.enqueueMany([{ channel: 'metrics', payload: 'm1' }, t('a', 1), { channel: 'events', payload: 'e1' }, { channel: 'metrics', payload: 'm2' }, t('a', 2), { channel: 'events', payload: 'e2' }]);
    const episode = outbox.beginEpisode();
    expect(drain(outbox, episode, 100)).toEqual(['a2', 'm2', 'e1', 'e2', 'a1*', 'm1*']);
  });

  it('drains in plain order without an episode, and for a channel whose freshFirst is off', async () => {
    const plain = open();
    await backlog(plain.outbox);
    expect(seen(plain.outbox.peekBatch({ maxCount: 100 }))).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'c2', 'a3', 'b3', 'c3']);
    const off = open({ overrides: { channels: { telemetry: { freshFirst: false } } } });
    await backlog(off.outbox);
    expect(drain(off.outbox, off.outbox.beginEpisode())).toEqual(['a1', 'b1', 'c1', 'a2', 'b2', 'c2', 'a3', 'b3', 'c3']);
  });

  it('keeps the plain order when no stream holds more than its newest message (nothing to backfill)', async () => {
    const { outbox } = open();
    await outbox.enqueueMany([t('a', 1), { channel: 'events', payload: 'e1' }, t('b', 1)]);
    expect(drain(outbox, outbox.beginEpisode())).toEqual(['e1', 'a1', 'b1']);
  });

  it('puts a nacked head first again, and a new episode after a failure starts from the newest still queued', async () => {
    const { outbox } = open();
    await backlog(outbox);
    let episode = outbox.beginEpisode();
    const first = outbox.peekBatch({ maxCount: 2, episode });
    expect(seen(first)).toEqual(['a3', 'b3']);
    outbox.nack(first.map((m) => m.id));
    const again = outbox.peekBatch({ maxCount: 4, episode });
    expect(seen(again)).toEqual(['a3', 'b3', 'c3', 'a1*']);
    outbox.ack(again.slice(0, 1).map((m) => m.id)); // a3 delivered, the rest fail
    outbox.nack(again.map((m) => m.id));
    await outbox.enqueue(t('c', 4));
    episode.close();
    episode = outbox.beginEpisode(); // the return after the failure
    // b3 and c4 are their streams' newest; a's newest (a3) is already with the cloud, so a1 and a2 are history.
    expect(drain(outbox, episode, 3)).toEqual(['b3', 'c4', 'a1*', 'b1*', 'c1*', 'a2*', 'b2*', 'c2*', 'c3*']);
  });

  it('loses nothing when the agent restarts mid-episode: the next start drains freshness first again', async () => {
    const env = open();
    await backlog(env.outbox);
    const episode = env.outbox.beginEpisode();
    const delivered = seen(env.outbox.peekBatch({ maxCount: 4, episode }));
    const firstTwo = env.outbox.peekBatch({ maxCount: 2, episode });
    env.outbox.ack(firstTwo.map((m) => m.id)); // b1, c1 delivered; a3 b3 c3 a1 in flight at the crash
    await close(env, { crash: true });
    const again = open({ path: env.path, clock: env.clock });
    const rest = drain(again.outbox, again.outbox.beginEpisode());
    expect(delivered).toEqual(['a3', 'b3', 'c3', 'a1*']);
    expect(seen(firstTwo)).toEqual(['b1*', 'c1*']);
    expect(rest).toEqual(['a3', 'b3', 'c3', 'a1*', 'a2*', 'b2*', 'c2*']);
  });

  it('forgets a head whose row is gone, and checks a reused seq belongs to the stream', async () => {
    const { outbox, store } = open();
    await outbox.enqueueMany([t('a', 1), t('a', 2)]);
    const a2 = outbox.peekBatch({ maxCount: 1, episode: outbox.beginEpisode() });
    expect(seen(a2)).toEqual(['a2']);
    outbox.ack(a2.map((m) => m.id));
    await outbox.enqueue(t('b', 1)); // takes a2's seq
    expect(drain(outbox, outbox.beginEpisode())).toEqual(['b1', 'a1*']);
    expect(store.db.prepare("SELECT stream FROM outbox_stream_heads WHERE stream = 'a'").all()).toEqual([]);
  });

  it('writes the heads at most every 250 ms and at a clean close; after a crash a start finds the newer ones from the rows', async () => {
    const env = open();
    const table = () => env.store.db.prepare('SELECT channel, stream, seq FROM outbox_stream_heads ORDER BY channel, stream').all() as { channel: string; stream: string; seq: number }[];
    await env.outbox.enqueueMany([t('a', 1), t('b', 1)]);
    const written = table();
    expect(written.map((r) => `${r.channel}/${r.stream}`)).toEqual(['/', 'telemetry/a', 'telemetry/b']); // the mark, then the heads
    await env.outbox.enqueueMany([t('a', 2), t('b', 2)]);
    expect(table()).toEqual(written); // within 250 ms: not written again
    await env.clock.advance(250);
    await env.outbox.enqueue(t('c', 1));
    expect(table().map((r) => `${r.stream}:${r.seq}`)).toEqual([':5', 'a:3', 'b:4', 'c:5']);
    await env.outbox.enqueueMany([t('a', 3), t('c', 2)]); // not written: lost with the crash below
    await close(env, { crash: true });
    const again = open({ path: env.path, clock: env.clock });
    expect(drain(again.outbox, again.outbox.beginEpisode())).toEqual(['b2', 'a3', 'c2', 'a1*', 'b1*', 'a2*', 'c1*']);
    const clean = open();
    await clean.outbox.enqueueMany([t('x', 1), t('x', 2)]);
    await clean.outbox.enqueue(t('x', 3));
    await close(clean);
    const reopened = open({ path: clean.path, clock: clean.clock });
    expect(reopened.store.db.prepare("SELECT seq FROM outbox_stream_heads WHERE stream = 'x'").get()).toEqual({ seq: 3 });
  });

  it('with thousands of streams, sends every newest first, batch after batch, as they are acknowledged', async () => {
    const { outbox } = open();
    const streams = Array.from({ length: 3_000 }, (_, i) => `s${i}`);
    for (const n of [1, 2]) await outbox.enqueueMany(streams.map((s) => t(s, n)));
    const sent = drain(outbox, outbox.beginEpisode(), 100);
    expect(sent.slice(0, 3_000)).toEqual(streams.map((s) => `${s}2`));
    expect(sent.slice(3_000)).toEqual(streams.map((s) => `${s}1*`));
  });

  it('refuses a stream that is not a string of 1-256 characters', async () => {
    const { outbox } = open();
    await expect(outbox.enqueue({ channel: 'telemetry', stream: '', payload: 1 })).rejects.toMatchObject({ code: 'OUTBOX_INVALID' });
    await expect(outbox.enqueue({ channel: 'telemetry', stream: 'x'.repeat(257), payload: 1 })).rejects.toMatchObject({ code: 'OUTBOX_INVALID' });
  });
});
