import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CloudError } from '../../src/resilience/cloud-error.js';
import { RetryPolicy } from '../../src/resilience/retry-policy.js';
import { Flusher, type FlusherOptions, type Sink, type SinkResult } from '../../src/outbox/flusher.js';
import { Outbox } from '../../src/outbox/outbox.js';
import type { OutboxMessage } from '../../src/outbox/types.js';
import { Backoff } from '../../src/resilience/backoff.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { seededRandom } from '../../src/util/random.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/** What a flusher tells its sink, the monitor, the outbox and its own stats, in the cases flusher.test.ts leaves out. */

const dirs = tempDirs();
const cleanup = cleanupsAfterEach({ after: () => dirs.cleanup() });

/** Stands in for the cloud (named fake): answers with what `decide` says and records each batch. */
class RecordingPeer implements Sink {
  readonly name = 'mqtt';
  readonly monitorChannel = 'mqtt';
  batches: OutboxMessage[][] = [];
  constructor(
    private readonly decide: (batch: OutboxMessage[], signal: AbortSignal) => SinkResult | Error | Promise<SinkResult | Error>,
    readonly channels?: readonly string[],
    readonly excludeChannels?: readonly string[],
  ) {}
  async send(batch: OutboxMessage[], signal: AbortSignal): Promise<SinkResult> {
    this.batches.push(batch);
    const r = await this.decide(batch, signal);
    if (r instanceof Error) throw r;
    return r;
  }
  isPermanent(err: unknown): boolean {
    return err instanceof CloudError && err.status === 422;
  }
}

const acceptAll = (batch: OutboxMessage[]): SinkResult => ({ accepted: batch.map((m) => m.id), rejected: [] });

type Mark = [kind: 'ok' | 'fail', channel: string, operation: string, error?: string, failure?: string];

function setup(peer: RecordingPeer, opts: Partial<Pick<FlusherOptions, 'batch' | 'maxInflight' | 'rate' | 'idleRecheckMs' | 'ordered'>> = {}) {
  const clock = new FakeClock();
  const random = seededRandom(5);
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  const outbox = new Outbox({ store, clock, ids: new IdGenerator(() => clock.now()), logger: silentLogger(), limits: { maxCount: 100_000, maxBytes: 64 * 1_048_576 }, compressAboveBytes: 1 << 30 });
  const marks: Mark[] = [];
  const cap = captureLogger();
  const flusher = new Flusher({
    outbox,
    sink: peer,
    monitor: {
      markSuccess: (channel, operation) => marks.push(['ok', channel, operation]),
      markFailure: (channel, operation, error, kind) => marks.push(['fail', channel, operation, error, kind]),
    },
    retry: new RetryPolicy({ backoff: new Backoff({ minMs: 1_000, maxMs: 60_000, strategy: 'none', clock, random }), sleeper: new Wakeup({ clock, random }), clock }),
    clock,
    logger: cap.logger,
    batch: opts.batch ?? { maxCount: 10, maxBytes: 1_048_576 },
    maxInflight: opts.maxInflight ?? 1,
    ...(opts.rate ? { rate: opts.rate } : {}),
    ...(opts.idleRecheckMs !== undefined ? { idleRecheckMs: opts.idleRecheckMs } : {}),
    ...(opts.ordered ? { ordered: opts.ordered } : {}),
  });
  const stop = new AbortController();
  const done = flusher.run(stop.signal);
  let stopped = false;
  const halt = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    stop.abort();
    await done;
  };
  cleanup(async () => {
    await halt();
    await outbox.close();
    store.close();
  });
  const enqueue = async (count: number, channel = 'telemetry', payload: (i: number) => unknown = (i) => i): Promise<string[]> => {
    const r = await outbox.enqueueMany(Array.from({ length: count }, (_, i) => ({ channel, payload: payload(i) as never })));
    flusher.kick();
    return r.map((x) => x.id);
  };
  return { clock, outbox, flusher, marks, enqueue, logs: cap.records, halt };
}

describe('flusher: what it reports', () => {
  it('stats: the sink, batches sent, delivered, and the last success and error', async () => {
    let down = true;
    let answeredAt: number | undefined;
    const peer = new RecordingPeer((b) => {
      if (down) return new CloudError('network', 'connection refused');
      answeredAt = t.clock.now();
      return acceptAll(b);
    });
    const t = setup(peer);
    expect(t.flusher.stats()).toEqual({ sink: 'mqtt', inflightBatches: 0, batchesSent: 0, delivered: 0, parked: 0, lastError: null, lastSuccessAt: null });
    await t.enqueue(3);
    await t.clock.advance(10);
    expect(t.flusher.stats()).toMatchObject({ batchesSent: 1, delivered: 0, lastError: 'connection refused', lastSuccessAt: null });
    expect(t.marks).toEqual([['fail', 'mqtt', 'publish', 'connection refused', 'transport']]);
    expect(t.outbox.stats()).toMatchObject({ depth: 3, leased: 0 });
    down = false;
    await t.clock.advance(1_000);
    expect(t.flusher.stats()).toMatchObject({ batchesSent: 2, delivered: 3, lastError: null, lastSuccessAt: answeredAt });
    expect(answeredAt).toBeGreaterThan(0);
    expect(t.marks.at(-1)).toEqual(['ok', 'mqtt', 'publish']);
  });

  it('a 5xx answer is marked as an answer, not a transport failure', async () => {
    const peer = new RecordingPeer(() => new CloudError('http', 'answered 503', 503));
    const t = setup(peer);
    await t.enqueue(1);
    await t.clock.advance(10);
    expect(t.marks).toEqual([['fail', 'mqtt', 'publish', 'answered 503', 'answer']]);
  });
});

describe('flusher: refusals', () => {
  it('parks a message the peer refuses by id, with the peer\'s reason, and delivers the rest of the batch', async () => {
    const peer = new RecordingPeer((b) => ({
      accepted: b.filter((_, i) => i !== 1 && i !== 2).map((m) => m.id),
      rejected: [
        { id: b[1]!.id, reason: 'schema mismatch' },
        { id: b[2]!.id, reason: undefined as unknown as string },
      ],
    }));
    const t = setup(peer);
    const ids = await t.enqueue(4);
    await t.clock.advance(10);
    expect(t.outbox.parked().map((p) => [p.id, p.reason])).toEqual([
      [ids[1], 'refused: schema mismatch'],
      [ids[2], 'refused: no reason'],
    ]);
    expect(t.flusher.stats()).toMatchObject({ delivered: 2, parked: 2 });
    expect(t.outbox.stats()).toMatchObject({ depth: 0, delivered: 2, parked: 2 });
    const warns = t.logs().filter((r) => r.msg === 'message parked: the peer refuses it for good');
    expect(warns).toEqual([
      expect.objectContaining({ id: ids[1], channel: 'telemetry', sink: 'mqtt', reason: 'refused: schema mismatch', level: 40 }),
      expect.objectContaining({ id: ids[2], reason: 'refused: no reason' }),
    ]);
  });

  it('a permanent error on a batch of one parks it with the error as its reason; the peer answered, so the way is marked open', async () => {
    const peer = new RecordingPeer(() => new CloudError('http', 'answered 422: bad payload', 422));
    const t = setup(peer);
    const [id] = await t.enqueue(1);
    await t.clock.advance(10);
    expect(t.outbox.parked().map((p) => [p.id, p.reason])).toEqual([[id, 'refused: answered 422: bad payload']]);
    expect(t.marks).toEqual([['ok', 'mqtt', 'publish']]);
    expect(t.flusher.stats()).toMatchObject({ batchesSent: 1, parked: 1, lastError: null });
  });

  it('halves a refused batch of three as two then one', async () => {
    const peer = new RecordingPeer((b) => (b.length > 1 ? new CloudError('http', 'too much', 422) : acceptAll(b)));
    const t = setup(peer);
    await t.enqueue(3);
    await t.clock.advance(10);
    expect(peer.batches.map((b) => b.map((m) => m.payload))).toEqual([[0, 1, 2], [0, 1], [0], [1], [2]]);
    expect(t.outbox.stats()).toMatchObject({ depth: 0, delivered: 3 });
  });
});

describe('flusher: retry later', () => {
  it('puts back what the peer did not answer for, marks the failure unless the sink did, and backs off', async () => {
    let calls = 0;
    let marked = false;
    const peer = new RecordingPeer((b) => {
      calls++;
      if (calls === 1) return { accepted: [b[0]!.id], rejected: [], retryLater: new Error('broker busy'), retryLaterMarked: marked };
      return acceptAll(b);
    });
    const t = setup(peer);
    await t.enqueue(3);
    await t.clock.advance(10);
    expect(t.marks).toEqual([['fail', 'mqtt', 'publish', 'broker busy', 'transport']]);
    expect(t.flusher.stats()).toMatchObject({ delivered: 1, lastError: 'broker busy' });
    expect(t.outbox.stats()).toMatchObject({ depth: 2, leased: 0 });
    await t.clock.advance(500);
    expect(peer.batches).toHaveLength(1); // backing off (1 s)
    await t.clock.advance(600);
    // The return after the failure drains telemetry freshness first: the newest (2), then the history.
    expect(peer.batches.map((b) => b.map((m) => m.payload))).toEqual([[0, 1, 2], [2, 1]]);
    expect(t.outbox.stats()).toMatchObject({ depth: 0, delivered: 3 });

    // Once the sink has marked it itself, the flusher does not mark it again.
    calls = 0;
    marked = true;
    t.marks.length = 0;
    await t.enqueue(2);
    await t.clock.advance(10);
    expect(t.marks.filter((m) => m[0] === 'fail')).toEqual([]);
    expect(t.flusher.stats().lastError).toBe('broker busy');
  });
});

describe('flusher: which messages, and when', () => {
  it('takes only the channels its sink carries, and none it excludes', async () => {
    const only = new RecordingPeer(acceptAll, ['events']);
    const t1 = setup(only);
    await t1.enqueue(2, 'telemetry');
    await t1.enqueue(1, 'events');
    await t1.clock.advance(10);
    expect(only.batches.flat().map((m) => m.channel)).toEqual(['events']);
    expect(t1.outbox.stats().channels.telemetry!.depth).toBe(2);

    const but = new RecordingPeer(acceptAll, undefined, ['telemetry']);
    const t2 = setup(but);
    await t2.enqueue(2, 'telemetry');
    await t2.enqueue(1, 'state');
    await t2.clock.advance(10);
    expect(but.batches.flat().map((m) => m.channel)).toEqual(['state']);
  });

  it('with nothing to send looks again every 30 s by default, or every idleRecheckMs, even without a kick', async () => {
    const peer = new RecordingPeer(acceptAll);
    const t = setup(peer);
    await t.clock.advance(10);
    await t.outbox.enqueue({ channel: 'telemetry', payload: 'quiet' }); // no kick
    await t.clock.advance(29_000);
    expect(peer.batches).toHaveLength(0);
    await t.clock.advance(1_000);
    expect(peer.batches).toHaveLength(1);

    const peer2 = new RecordingPeer(acceptAll);
    const t2 = setup(peer2, { idleRecheckMs: 2_000 });
    await t2.clock.advance(10);
    await t2.outbox.enqueue({ channel: 'telemetry', payload: 'quiet' });
    await t2.clock.advance(1_900);
    expect(peer2.batches).toHaveLength(0);
    await t2.clock.advance(200);
    expect(peer2.batches).toHaveLength(1);
  });

  it('a rate below one batch still sends a first full batch at once', async () => {
    const peer = new RecordingPeer(acceptAll);
    const t = setup(peer, { rate: { messagesPerSecond: 5 } });
    await t.enqueue(10);
    await t.clock.advance(10);
    expect(t.outbox.stats().delivered).toBe(10);
  });

  it('keeps to the bytes-per-second limit, after a first burst of one batch', async () => {
    const peer = new RecordingPeer(acceptAll);
    const t = setup(peer, { rate: { bytesPerSecond: 1_000 }, batch: { maxCount: 100, maxBytes: 500 } });
    await t.enqueue(30, 'telemetry', () => 'x'.repeat(98)); // 100 bytes each
    await t.clock.advance(10);
    // The bucket holds 1,000 bytes: two batches of 500 at once, then 500 every half second.
    expect(t.outbox.stats().delivered).toBe(10);
    await t.clock.advance(1_000);
    expect(t.outbox.stats().delivered).toBe(20);
    await t.clock.advance(1_000);
    expect(t.outbox.stats().delivered).toBe(30);
  });

  it('stopped while waiting for the rate: the batch goes back to the queue, not leased', async () => {
    const peer = new RecordingPeer(acceptAll);
    const t = setup(peer, { rate: { messagesPerSecond: 1 }, batch: { maxCount: 5, maxBytes: 1_048_576 } });
    await t.enqueue(10);
    await t.clock.advance(10);
    expect(t.outbox.stats()).toMatchObject({ delivered: 5, depth: 5, leased: 5 }); // the next 5 wait for tokens
    await t.halt();
    expect(t.outbox.stats()).toMatchObject({ delivered: 5, depth: 5, leased: 0 });
  });

  it('stopped while a send is under way: what it held goes back to the queue', async () => {
    const peer = new RecordingPeer(
      (_b, signal) =>
        new Promise<SinkResult>((_resolve, reject) => {
          signal.addEventListener('abort', () => reject(new CloudError('network', 'aborted')));
        }),
    );
    const t = setup(peer);
    await t.enqueue(3);
    await t.clock.advance(10);
    expect(t.outbox.stats().leased).toBe(3);
    await t.halt();
    expect(t.outbox.stats()).toMatchObject({ depth: 3, leased: 0 });
    expect(t.marks).toEqual([]);
  });
});

describe('flusher: back online', () => {
  it('the channel coming back online ends the backoff at once; a word of it from before the failure does not', async () => {
    let up = false;
    const peer = new RecordingPeer((b) => (up ? acceptAll(b) : new CloudError('network', 'connection refused')));
    const t = setup(peer);
    t.flusher.channelOnline(); // stale: before anything failed
    await t.enqueue(2);
    await t.clock.advance(10);
    expect(peer.batches).toHaveLength(1);
    await t.clock.advance(500);
    expect(peer.batches).toHaveLength(1); // still backing off (1 s)
    up = true;
    t.flusher.channelOnline();
    await t.clock.advance(10);
    expect(peer.batches).toHaveLength(2);
    expect(t.outbox.stats()).toMatchObject({ depth: 0, delivered: 2 });
  });

  it('new messages queued while batches are in flight are sent without waiting for those answers', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let first = true;
    const peer = new RecordingPeer(async (b) => {
      if (first) {
        first = false;
        await gate;
      }
      return acceptAll(b);
    });
    const t = setup(peer, { maxInflight: 2 });
    await t.enqueue(1);
    await t.clock.advance(10);
    await t.enqueue(1, 'events');
    await t.clock.advance(10);
    expect(peer.batches.map((b) => b[0]!.channel)).toEqual(['telemetry', 'events']);
    expect(t.outbox.stats().delivered).toBe(1);
    release();
    await t.clock.advance(10);
    expect(t.outbox.stats().delivered).toBe(2);
  });

  it('an ordered channel has one batch in flight at a time: a job\'s final status waits for its IN_PROGRESS; other channels pass beside it', async () => {
    const gates: (() => void)[] = [];
    const peer = new RecordingPeer(async (b) => {
      if (b.some((m) => m.channel === 'jobs')) await new Promise<void>((r) => gates.push(r));
      return acceptAll(b);
    });
    const t = setup(peer, { maxInflight: 4, ordered: new Set(['jobs']) });
    await t.enqueue(1, 'jobs', () => ({ status: 'IN_PROGRESS' }));
    await t.clock.advance(10);
    await t.enqueue(1, 'jobs', () => ({ status: 'REJECTED' }));
    await t.enqueue(1, 'events');
    await t.clock.advance(10);
    // The events went beside the first job update; the second job update waits.
    expect(peer.batches.map((b) => b.map((m) => `${m.channel}:${JSON.stringify(m.payload)}`))).toEqual([['jobs:{"status":"IN_PROGRESS"}'], ['events:0']]);
    gates.shift()?.();
    await t.clock.advance(10);
    expect(peer.batches.map((b) => b.map((m) => m.channel))).toEqual([['jobs'], ['events'], ['jobs']]);
    expect(peer.batches[2]?.[0]?.payload).toEqual({ status: 'REJECTED' });
    gates.shift()?.();
    await t.clock.advance(10);
    expect(t.outbox.stats().delivered).toBe(3);
  });

  it('without ordering, two batches of one channel may be in flight together (the reason for it)', async () => {
    const gates: (() => void)[] = [];
    const peer = new RecordingPeer(async (b) => {
      await new Promise<void>((r) => gates.push(r));
      return acceptAll(b);
    });
    const t = setup(peer, { maxInflight: 4 });
    await t.enqueue(1, 'jobs');
    await t.clock.advance(10);
    await t.enqueue(1, 'jobs');
    await t.clock.advance(10);
    expect(peer.batches).toHaveLength(2);
    for (const g of gates.splice(0)) g();
    await t.clock.advance(10);
  });

  it('a batch in flight that fails while nothing else is queued is retried after the backoff, not at the next idle look', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let calls = 0;
    const peer = new RecordingPeer(async (b) => {
      if (++calls === 1) {
        await gate;
        return new CloudError('network', 'connection reset');
      }
      return acceptAll(b);
    });
    const t = setup(peer, { maxInflight: 2 });
    await t.enqueue(1);
    await t.clock.advance(10);
    release();
    await t.clock.advance(1_100);
    expect(peer.batches).toHaveLength(2);
    expect(t.outbox.stats().delivered).toBe(1);
  });

  it('after a failed batch nothing new is sent until the other batches in flight have answered, then once after the backoff', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let calls = 0;
    const peer = new RecordingPeer(async (b) => {
      calls++;
      if (calls === 1) {
        await gate; // a slow batch: its answer comes long after the other one failed
        return acceptAll(b);
      }
      if (calls === 2) return new CloudError('network', 'connection reset');
      return acceptAll(b);
    });
    const t = setup(peer, { maxInflight: 2 });
    await t.enqueue(1);
    await t.clock.advance(10);
    await t.enqueue(1, 'events');
    await t.clock.advance(10);
    expect(peer.batches.map((b) => b[0]!.channel)).toEqual(['telemetry', 'events']);
    // The events batch failed; the slow one is still out. Well past the 1 s backoff, nothing is re-sent:
    // the sink is backing off as a whole, not beside a batch it has not heard back from.
    await t.clock.advance(5_000);
    expect(peer.batches).toHaveLength(2);
    release();
    await t.clock.advance(10);
    expect(t.outbox.stats().delivered).toBe(1);
    expect(peer.batches).toHaveLength(2); // the backoff starts once the slow batch has answered
    await t.clock.advance(1_100);
    expect(peer.batches.map((b) => b[0]!.channel)).toEqual(['telemetry', 'events', 'events']);
    expect(t.outbox.stats()).toMatchObject({ depth: 0, delivered: 2 });
  });
});

describe('flusher: freshness-first drain', () => {
  it('after an outage sends each stream’s newest first, then the history oldest first marked backfill, within its batches', async () => {
    let down = true;
    const peer = new RecordingPeer((b) => (down ? new CloudError('network', 'connection refused') : acceptAll(b)));
    const t = setup(peer, { batch: { maxCount: 3, maxBytes: 1_048_576 } });
    for (const n of [1, 2, 3]) await t.outbox.enqueueMany(['a', 'b'].map((s) => ({ channel: 'telemetry', stream: s, payload: `${s}${n}` })));
    t.flusher.kick();
    await t.clock.advance(10);
    expect(peer.batches).toHaveLength(1); // refused: backing off
    down = false;
    await t.outbox.enqueue({ channel: 'telemetry', stream: 'b', payload: 'b4' }); // queued during the backoff: b's newest now
    await t.clock.advance(1_100);
    const seen = peer.batches.slice(1).map((b) => b.map((m) => `${String(m.payload)}${m.backfill ? '*' : ''}`));
    expect(seen).toEqual([
      ['a3', 'b4', 'a1*'],
      ['b1*', 'a2*', 'b2*'],
      ['b3*'],
    ]);
    expect(t.outbox.stats()).toMatchObject({ depth: 0, delivered: 7 });
  });

  it('begins anew when the sink\'s channel comes back online, though no send failed (an MQTT session holds its publishes)', async () => {
    let release: (() => void) | undefined;
    let calls = 0;
    const peer = new RecordingPeer((b): SinkResult | Promise<SinkResult> =>
      ++calls === 1 ? new Promise<SinkResult>((resolve) => (release = () => resolve(acceptAll(b)))) : acceptAll(b),
    );
    const t = setup(peer, { batch: { maxCount: 3, maxBytes: 1_048_576 } });
    const put = (s: string, n: number) => t.outbox.enqueue({ channel: 'telemetry', stream: s, payload: `${s}${n}` });
    await put('a', 1);
    t.flusher.kick();
    await t.clock.advance(10);
    expect(release).toBeDefined(); // a1 is held across the disconnect
    for (const [s, n] of [['a', 2], ['b', 1], ['a', 3], ['b', 2]] as const) await put(s, n);
    t.flusher.channelOnline();
    release?.();
    await t.clock.advance(10);
    const seen = peer.batches.map((b) => b.map((m) => `${String(m.payload)}${m.backfill ? '*' : ''}`));
    expect(seen).toEqual([['a1'], ['a3', 'b2', 'a2*'], ['b1*']]);
  });
});
