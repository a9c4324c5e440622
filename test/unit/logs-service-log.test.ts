import { describe, expect, it } from 'vitest';
import { LogStore } from '../../src/logs/log-store.js';
import { committedLines, ServiceLog, type ServiceLogOptions } from '../../src/logs/service-log.js';
import { chunkOf, expandLines, type LogLine } from '../../src/logs/types.js';
import type { Outbox } from '../../src/outbox/outbox.js';
import { OutboxError } from '../../src/outbox/types.js';
import { silentLogger } from '../helpers/logger.js';
import { outboxesPerTest, type OpenOutbox } from '../helpers/outbox-per-test.js';

const { make } = outboxesPerTest();

const RATE_OFF = { linesPerSecond: 0, bytesPerSecond: 0, burstSeconds: 1 };
const CHUNK = { maxLines: 100, maxBytes: 1 << 20, windowMs: 250, maxPendingBytes: 1 << 20 };

function serviceLog(env: OpenOutbox, over: Partial<ServiceLogOptions> = {}): { log: ServiceLog; store: LogStore; committed: LogLine[] } {
  const store = new LogStore(env.store.db, 10_000);
  const committed: LogLine[] = [];
  const log = new ServiceLog({
    service: 'app/web',
    store,
    outbox: env.outbox,
    clock: env.clock,
    logger: silentLogger(),
    rate: RATE_OFF,
    chunk: CHUNK,
    markerIntervalMs: 1_000,
    onCommitted: (chunk, ts) => committed.push(...committedLines(chunk, ts)),
    ...over,
  });
  return { log, store, committed };
}

/** Every line queued on the `logs` channel, in queue order, as the wire has them. */
function queuedLines(env: OpenOutbox): LogLine[] {
  const batch = env.outbox.peekBatch({ channels: ['logs'], maxCount: 10_000, lease: false });
  return batch.flatMap((m) => {
    const chunk = chunkOf(m.payload);
    if (!chunk) throw new Error(`not a chunk: ${JSON.stringify(m.payload)}`);
    return expandLines(m.createdAt, chunk).map((l) => ({ ...l, service: chunk.service }));
  });
}

describe('ServiceLog', () => {
  it('numbers lines from 0 without a gap, chunks them, and keeps the next number with the chunk', async () => {
    const env = make({ synchronous: 'normal' });
    const { log, store } = serviceLog(env);
    for (let i = 0; i < 250; i++) log.push({ stream: i % 2 ? 'stderr' : 'stdout', ts: env.clock.now(), text: `line ${i}` });
    await log.flush();
    const lines = queuedLines(env);
    expect(lines.map((l) => l.seq)).toEqual([...Array(250).keys()]);
    expect(lines.map((l) => l.line)).toEqual([...Array(250).keys()].map((i) => `line ${i}`));
    expect(lines[1]?.stream).toBe('stderr');
    expect(env.outbox.stats().channels.logs?.depth).toBe(3); // 100 + 100 + 50
    expect(store.nextSeq('app/web')).toBe(250);
    // A new ServiceLog (the agent restarted) goes on from there.
    const again = serviceLog(env).log;
    again.push({ stream: 'stdout', ts: env.clock.now(), text: 'after' });
    await again.flush();
    expect(queuedLines(env).at(-1)).toMatchObject({ seq: 250, line: 'after' });
  });

  it('queues a quiet service\'s line after the chunk window, with the time it was printed', async () => {
    const env = make({ synchronous: 'normal' });
    const { log, committed } = serviceLog(env);
    const printed = env.clock.now();
    log.push({ stream: 'stdout', ts: printed, text: 'hello' });
    await env.clock.advance(100);
    expect(committed).toHaveLength(0);
    await env.clock.advance(200);
    await waitUntil(() => committed.length === 1);
    expect(queuedLines(env)).toEqual([{ service: 'app/web', seq: 0, ts: printed, stream: 'stdout', line: 'hello' }]);
  });

  it('drops lines over the rate limit and puts marker lines counting exactly what was dropped', async () => {
    const env = make({ synchronous: 'normal' });
    const { log } = serviceLog(env, { rate: { linesPerSecond: 10, bytesPerSecond: 0, burstSeconds: 1 } });
    // 100 lines a second for 5 seconds: 10x the limit.
    let produced = 0;
    for (let t = 0; t < 5_000; t += 10) {
      log.push({ stream: 'stdout', ts: env.clock.now(), text: `flood ${produced++}` });
      await env.clock.advance(10);
    }
    await log.flush();
    const lines = queuedLines(env);
    const kept = lines.filter((l) => l.stream !== 'marker');
    const markers = lines.filter((l) => l.stream === 'marker');
    expect(markers.length).toBeGreaterThan(1);
    expect(markers.length).toBeLessThanOrEqual(7); // at most one a second (and the flush's)
    expect(markers.every((m) => m.reason === 'lines-rate' && /^\d+ lines? dropped \(rate limit: 10 lines\/s\)$/.test(m.line))).toBe(true);
    expect(kept.length + markers.reduce((n, m) => n + (m.dropped ?? 0), 0)).toBe(produced);
    // About the rate: the burst (10) plus 10 a second.
    expect(kept.length).toBeGreaterThanOrEqual(55);
    expect(kept.length).toBeLessThanOrEqual(62);
    expect(lines.map((l) => l.seq)).toEqual([...Array(lines.length).keys()]);
  });

  it('counts the lines of a refused chunk in a marker, numbered without a gap', async () => {
    const env = make({ synchronous: 'normal' });
    let refuse = true;
    const outbox: Pick<Outbox, 'enqueueMany'> = {
      enqueueMany: (msgs, opts) => (refuse ? Promise.reject(new OutboxError('OUTBOX_DISK_LOW', 'disk low')) : env.outbox.enqueueMany(msgs, opts)),
    };
    const { log } = serviceLog(env, { outbox });
    for (let i = 0; i < 5; i++) log.push({ stream: 'stdout', ts: env.clock.now(), text: `lost ${i}` });
    await log.flush();
    refuse = false;
    log.push({ stream: 'stdout', ts: env.clock.now(), text: 'kept' });
    await log.flush();
    const lines = queuedLines(env);
    expect(lines.map((l) => [l.seq, l.stream, l.dropped ?? null])).toEqual([
      [0, 'marker', 5],
      [1, 'stdout', null],
    ]);
    expect(lines[0]?.reason).toBe('outbox');
  });

  it('asks a replayable source to read again instead of dropping, and stores its cursor only with a committed chunk', async () => {
    const env = make({ synchronous: 'normal' });
    let refuse = false;
    let rewinds = 0;
    const outbox: Pick<Outbox, 'enqueueMany'> = {
      enqueueMany: (msgs, opts) => (refuse ? Promise.reject(new OutboxError('OUTBOX_FULL', 'full')) : env.outbox.enqueueMany(msgs, opts)),
    };
    const { log, store } = serviceLog(env, { outbox, onRewind: () => rewinds++ });
    log.push({ stream: 'stdout', ts: 1, text: 'a', source: 'c1', cursor: { at: 't1', skip: 1 } });
    await log.flush();
    expect(store.cursor('c1')).toEqual({ at: 't1', skip: 1 });
    refuse = true;
    log.push({ stream: 'stdout', ts: 2, text: 'b', source: 'c1', cursor: { at: 't2', skip: 1 } });
    await log.flush();
    expect(rewinds).toBe(1);
    expect(store.cursor('c1')).toEqual({ at: 't1', skip: 1 });
    expect(store.nextSeq('app/web')).toBe(1);
    // Read again: the same line gets the same number.
    refuse = false;
    log.push({ stream: 'stdout', ts: 2, text: 'b', source: 'c1', cursor: { at: 't2', skip: 1 } });
    await log.flush();
    expect(queuedLines(env).map((l) => [l.seq, l.line])).toEqual([
      [0, 'a'],
      [1, 'b'],
    ]);
    expect(store.cursor('c1')).toEqual({ at: 't2', skip: 1 });
  });

  it('keeps the last lines per service in the local tail', async () => {
    const env = make({ synchronous: 'normal' });
    const store = new LogStore(env.store.db, 150);
    const { log } = serviceLog(env, { store });
    for (let i = 0; i < 400; i++) log.push({ stream: 'stdout', ts: 1_000 + i, text: `l${i}` });
    await log.flush();
    const tail = store.read({ service: 'app/web', limit: 10_000 });
    expect(tail.length).toBeGreaterThanOrEqual(150);
    expect(tail.length).toBeLessThanOrEqual(250);
    expect(tail.at(-1)).toMatchObject({ seq: 399, line: 'l399', ts: 1_399 });
    expect(store.read({ service: 'app/web', limit: 5 }).map((l) => l.seq)).toEqual([395, 396, 397, 398, 399]);
    expect(store.read({ service: 'app/web', since: 1_390 }).map((l) => l.seq)).toEqual([390, 391, 392, 393, 394, 395, 396, 397, 398, 399]);
    expect(store.read({ service: 'other' })).toEqual([]);
  });
});

async function waitUntil(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setImmediate(r));
  expect(cond()).toBe(true);
}
