import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { decodePayload, encodePayload } from '../../src/outbox/codec.js';
import { MetricsBuffer, isAggregate, levelOf, mergeRecords, toAggregate, validateSample, type MetricsAggregate, type MetricsRecord } from '../../src/outbox/downsample.js';
import { Outbox } from '../../src/outbox/outbox.js';
import { isOutboxError, type OutboxError } from '../../src/outbox/types.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import type { Json } from '../../src/util/json-diff.js';
import type { Logger } from '../../src/util/logger.js';
import { captureLogger, silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/** The metrics records, their merge rule, the sample check and the buffer's compaction, as stored in the outbox. */

const dirs = tempDirs();
const open: { store: Store; outbox: Outbox }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) {
    await o.outbox.close();
    o.store.close();
  }
  dirs.cleanup();
});

function setup(logger: Logger = silentLogger()) {
  const clock = new FakeClock();
  const store = Store.open({ path: join(dirs.make(), 'agent.db'), logger: silentLogger(), clock });
  const outbox = new Outbox({
    store,
    clock,
    ids: new IdGenerator(() => clock.now()),
    logger,
    limits: { maxCount: 1000, maxBytes: 64 * 1_048_576 },
    disk: { minFreeBytes: 0 },
    groupCommit: { windowMs: 0 },
  });
  open.push({ store, outbox });
  return { clock, store, outbox };
}

const agg = (from: number, to: number, count: number, values: MetricsAggregate['values'] = {}): MetricsAggregate => ({ from, to, count, values });

function invalid(fn: () => unknown): OutboxError {
  try {
    fn();
  } catch (err) {
    expect(isOutboxError(err, 'OUTBOX_INVALID')).toBe(true);
    return err as OutboxError;
  }
  throw new Error('expected OUTBOX_INVALID');
}

describe('metrics records', () => {
  it('tell a sample from an aggregate and give the level floor(log2(count))', () => {
    expect(isAggregate({ ts: 1, values: {} })).toBe(false);
    expect(isAggregate(agg(1, 2, 2))).toBe(true);
    expect(levelOf({ ts: 1, values: {} })).toBe(0);
    expect([0, 1, 2, 3, 4, 7, 8].map((count) => levelOf(agg(1, 2, count)))).toEqual([0, 0, 1, 1, 2, 2, 3]);
  });

  it('turn a sample into an aggregate of one, and leave an aggregate as it is', () => {
    expect(toAggregate({ ts: 5, values: { cpu: 3, mem: 40 } })).toEqual({
      from: 5,
      to: 5,
      count: 1,
      values: { cpu: { min: 3, max: 3, mean: 3, count: 1 }, mem: { min: 40, max: 40, mean: 40, count: 1 } },
    });
    const a = agg(1, 9, 3, { cpu: { min: 1, max: 2, mean: 1.5, count: 3 } });
    expect(toAggregate(a)).toBe(a);
  });

  it('merge in either order into one span with exact min, max and weighted means; a metric only one had is kept as it was', () => {
    const older = agg(100, 200, 3, { cpu: { min: 1, max: 5, mean: 2, count: 3 }, tempC: { min: 40, max: 50, mean: 45, count: 2 } });
    const newer = { ts: 300, values: { cpu: 8, mem: 30 } };
    const want = {
      from: 100,
      to: 300,
      count: 4,
      values: { cpu: { min: 1, max: 8, mean: (2 * 3 + 8) / 4, count: 4 }, tempC: { min: 40, max: 50, mean: 45, count: 2 }, mem: { min: 30, max: 30, mean: 30, count: 1 } },
    };
    expect(mergeRecords(older, newer)).toEqual(want);
    expect(mergeRecords(newer, older)).toEqual(want);
    // The copy is not the input: merging again later does not change what was merged before.
    const merged = mergeRecords(older, newer);
    expect(merged.values.tempC).not.toBe(older.values.tempC);
  });
});

describe('metrics samples: the check', () => {
  it('accepts a sample with finite numbers and returns only ts and values', () => {
    expect(validateSample({ ts: 1, values: { cpu: 2 }, extra: true })).toEqual({ ts: 1, values: { cpu: 2 } });
    expect(validateSample({ ts: 0, values: {} })).toEqual({ ts: 0, values: {} });
  });

  it('refuses every other shape, naming the field and what it got', () => {
    expect(invalid(() => validateSample(null)).message).toBe('metrics sample: expected an object { ts, values }, got null');
    expect(invalid(() => validateSample('x')).message).toBe('metrics sample: expected an object { ts, values }, got "x"');
    expect(invalid(() => validateSample({ ts: '1', values: {} })).message).toBe('metrics sample: ts: expected epoch milliseconds, got "1"');
    expect(invalid(() => validateSample({ ts: Number.POSITIVE_INFINITY, values: {} })).message).toBe('metrics sample: ts: expected epoch milliseconds, got null');
    expect(invalid(() => validateSample({ ts: 1, values: null })).message).toBe('metrics sample: values: expected an object of numbers, got null');
    expect(invalid(() => validateSample({ ts: 1, values: [1] })).message).toBe('metrics sample: values: expected an object of numbers, got [1]');
    expect(invalid(() => validateSample({ ts: 1, values: 'cpu' })).message).toBe('metrics sample: values: expected an object of numbers, got "cpu"');
    expect(invalid(() => validateSample({ ts: 1, values: { cpu: '5' } })).message).toBe('metrics sample: values.cpu: expected a finite number, got "5"');
    expect(invalid(() => validateSample({ ts: 1, values: { cpu: 1, mem: Number.NEGATIVE_INFINITY } })).message).toBe(
      'metrics sample: values.mem: expected a finite number, got null',
    );
  });
});

describe('metrics buffer', () => {
  it('needs room for at least four messages', () => {
    const { outbox } = setup();
    expect(invalid(() => new MetricsBuffer({ outbox, maxSamples: 3 })).message).toBe('maxSamples: expected an integer of at least 4, got 3');
    expect(invalid(() => new MetricsBuffer({ outbox, maxSamples: 4.5 })).message).toContain('got 4.5');
    expect(() => new MetricsBuffer({ outbox, maxSamples: 4 })).not.toThrow();
  });

  it('queues each sample on its channel with the priority and TTL given, and does nothing while there is room', async () => {
    const { outbox, clock } = setup();
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4, channel: 'sysmetrics' });
    await buffer.add({ ts: 1, values: { cpu: 1 } }, { priority: 77, ttlMs: 1_000 });
    await buffer.add({ ts: 2, values: { cpu: 2 } });
    const [a, b] = outbox.readChannel('sysmetrics', 10);
    expect(a).toMatchObject({ channel: 'sysmetrics', priority: 77, expiresAt: clock.now() + 1_000, payload: { ts: 1, values: { cpu: 1 } } });
    expect(b).toMatchObject({ channel: 'sysmetrics', expiresAt: null, payload: { ts: 2, values: { cpu: 2 } } });
    await buffer.add({ ts: 3, values: { cpu: 3 } });
    // Three of four: room left, so nothing is merged, even though the older half has a pair.
    expect(buffer.compact()).toBe(0);
    expect(outbox.readChannel('sysmetrics', 10)).toHaveLength(3);
    expect(outbox.stats().channels.metrics).toBeUndefined();
  });

  it('halves resolution with age: the exact sequence of counts on a buffer of four, and the log line of each compaction', async () => {
    const cap = captureLogger();
    const { outbox } = setup(cap.logger);
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4, logger: cap.logger });
    const counts = (): number[] => outbox.readChannel('metrics', 100).map((m) => toAggregate(m.payload as unknown as MetricsRecord).count);
    const seen: number[][] = [];
    for (let i = 0; i < 20; i++) {
      await buffer.add({ ts: i * 1_000, values: { cpu: i } });
      seen.push(counts());
    }
    expect(seen).toEqual([
      [1],
      [1, 1],
      [1, 1, 1],
      [1, 1, 1, 1],
      // Full: the older half's neighbours of equal level merge first.
      [2, 1, 1, 1],
      // Nothing of equal level in the older half: the newer half's equal neighbours merge.
      [2, 2, 1, 1],
      [4, 1, 1, 1],
      [4, 2, 1, 1],
      [4, 2, 2, 1],
      [4, 4, 1, 1],
      [8, 1, 1, 1],
      [8, 2, 1, 1],
      [8, 2, 2, 1],
      [8, 4, 1, 1],
      [8, 4, 2, 1],
      // Every level distinct: the oldest neighbours merge anyway, one pair, no more than needed.
      [12, 2, 1, 1],
      [12, 2, 2, 1],
      [12, 4, 1, 1],
      [12, 4, 2, 1],
      [16, 2, 1, 1],
    ]);
    const lines = cap.records().filter((r) => String(r.msg).startsWith('metrics buffer full'));
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[0]).toMatchObject({ channel: 'metrics', merged: 1, depth: 4, msg: 'metrics buffer full: downsampled 1 older message(s)' });
    // Every sample is still accounted for, and the span is contiguous.
    const recs = outbox.readChannel('metrics', 100).map((m) => toAggregate(m.payload as unknown as MetricsRecord));
    expect(recs.reduce((n, r) => n + r.count, 0)).toBe(20);
    expect(recs[0]!.from).toBe(0);
    expect(recs.at(-1)!.to).toBe(19_000);
  });
});

describe('metrics buffer: a larger buffer', () => {
  it('merges only within the older half first: the exact sequence of counts on a buffer of eight', async () => {
    const { outbox } = setup();
    const buffer = new MetricsBuffer({ outbox, maxSamples: 8 });
    const counts = (): number[] => outbox.readChannel('metrics', 100).map((m) => toAggregate(m.payload as unknown as MetricsRecord).count);
    const seen: number[][] = [];
    for (let i = 0; i < 14; i++) {
      await buffer.add({ ts: i * 1_000, values: { cpu: i } });
      if (i >= 7) seen.push(counts());
    }
    expect(seen).toEqual([
      [1, 1, 1, 1, 1, 1, 1, 1],
      [2, 2, 1, 1, 1, 1, 1],
      [2, 2, 1, 1, 1, 1, 1, 1],
      [4, 2, 1, 1, 1, 1, 1],
      [4, 2, 1, 1, 1, 1, 1, 1],
      [4, 2, 2, 1, 1, 1, 1, 1],
      // The pair that straddles the middle is left for later: only one merge was needed.
      [4, 4, 1, 1, 1, 1, 1, 1],
    ]);
  });
});

describe('metrics buffer: more than one over', () => {
  it('merges neighbours of any level, pass after pass, until enough are gone, and never across a foreign message', async () => {
    const { outbox } = setup();
    // Queued by hand (a smaller buffer than before a restart, say): 5 messages for a buffer of 4.
    await outbox.enqueue({ channel: 'metrics', payload: agg(0, 7, 8) as unknown as Json });
    await outbox.enqueue({ channel: 'metrics', payload: 'foreign' });
    await outbox.enqueue({ channel: 'metrics', payload: agg(8, 11, 4) as unknown as Json });
    await outbox.enqueue({ channel: 'metrics', payload: agg(12, 13, 2) as unknown as Json });
    await outbox.enqueue({ channel: 'metrics', payload: { ts: 14, values: {} } });
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4 });
    await buffer.add({ ts: 15, values: {} });
    const shown = outbox.readChannel('metrics', 10).map((m) => (typeof m.payload === 'string' ? m.payload : toAggregate(m.payload as unknown as MetricsRecord).count));
    expect(shown).toEqual([8, 'foreign', 7, 1]);
  });
});

describe('metrics buffer: messages it did not write', () => {
  it('leaves a message that is not a metrics record where it is, with its id, and merges nothing across it', async () => {
    const { outbox } = setup();
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4 });
    await buffer.add({ ts: 0, values: { cpu: 0 } });
    const { id: foreign } = await outbox.enqueue({ channel: 'metrics', payload: 'from another producer' });
    for (let i = 1; i <= 4; i++) await buffer.add({ ts: i, values: { cpu: i } });
    const after = outbox.readChannel('metrics', 10);
    expect(after.map((m) => (typeof m.payload === 'string' ? m.payload : toAggregate(m.payload as unknown as MetricsRecord).count))).toEqual([1, 'from another producer', 3, 1]);
    expect(after[1]!.id).toBe(foreign);
  });
});

describe('metrics buffer: a channel full of messages it cannot merge', () => {
  it('merges nothing, says nothing of downsampling, and still queues the sample', async () => {
    const cap = captureLogger();
    const { outbox } = setup(cap.logger);
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4, logger: cap.logger });
    for (let i = 0; i < 4; i++) await outbox.enqueue({ channel: 'metrics', payload: `foreign ${i}` });
    await buffer.add({ ts: 1, values: { cpu: 1 } });
    expect(buffer.compact()).toBe(0);
    expect(outbox.readChannel('metrics', 10)).toHaveLength(5);
    expect(cap.records().filter((r) => String(r.msg).startsWith('metrics buffer full'))).toEqual([]);
  });
});

describe('metrics buffer: look-alikes of its records', () => {
  const lookAlikes: Json[] = [
    { values: { cpu: 1 } },
    { ts: 1, values: null },
    { ts: 1, values: 5 },
    { ts: '1', values: { cpu: 1 } },
    { from: 1, to: 2, count: 1 },
    { from: 1, to: 2, count: 1, values: null },
    { from: 1, to: 2, count: 1, values: 'cpu' },
    { from: '1', to: 2, count: 1, values: {} },
    { from: 1, to: '2', count: 1, values: {} },
    { from: 1, to: 2, count: '1', values: {} },
  ];

  it.each(lookAlikes.map((p) => [JSON.stringify(p), p]))('%s is someone else\'s message: kept as it is, never merged', async (_name, payload) => {
    const cap = captureLogger();
    const { outbox } = setup(cap.logger);
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4, logger: cap.logger });
    const { id } = await outbox.enqueue({ channel: 'metrics', payload: payload as Json });
    for (let i = 0; i < 4; i++) await buffer.add({ ts: 10 + i, values: { cpu: i } });
    const after = outbox.readChannel('metrics', 10);
    expect(after[0]).toMatchObject({ id, payload });
    expect(after).toHaveLength(4);
    expect(cap.records().filter((r) => r.level === 40)).toEqual([]);
  });
});

describe('metrics buffer: null and arrays on its channel', () => {
  it('treats them as foreign messages: kept in place, and the samples around them still merge', async () => {
    const cap = captureLogger();
    const { outbox } = setup(cap.logger);
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4, logger: cap.logger });
    await outbox.enqueue({ channel: 'metrics', payload: null });
    await outbox.enqueue({ channel: 'metrics', payload: [1, 2] });
    for (let i = 0; i < 3; i++) await buffer.add({ ts: i, values: { cpu: i } });
    const shown = (): unknown[] => outbox.readChannel('metrics', 10).map((m) => (m.payload !== null && typeof m.payload === 'object' && !Array.isArray(m.payload) ? toAggregate(m.payload as unknown as MetricsRecord).count : m.payload));
    expect(shown()).toEqual([null, [1, 2], 2, 1]);
    expect(cap.records().filter((r) => String(r.msg).startsWith('metrics downsampling failed'))).toEqual([]);
  });
});

describe('metrics buffer: a compaction that fails', () => {
  it('still queues the sample, and warns naming the channel and the error', async () => {
    const cap = captureLogger();
    const { outbox, store } = setup(cap.logger);
    const buffer = new MetricsBuffer({ outbox, maxSamples: 4, logger: cap.logger });
    for (let i = 0; i < 4; i++) await buffer.add({ ts: i, values: { cpu: i } });
    store.db.exec("CREATE TRIGGER no_update BEFORE UPDATE ON outbox BEGIN SELECT RAISE(ABORT, 'update blocked'); END");
    await expect(buffer.add({ ts: 4, values: { cpu: 4 } })).resolves.toMatchObject({ id: expect.any(String) });
    expect(outbox.readChannel('metrics', 10).map((m) => (m.payload as { ts: number }).ts)).toEqual([0, 1, 2, 3, 4]);
    expect(cap.records()).toContainEqual(
      expect.objectContaining({ level: 40, channel: 'metrics', err: 'downsampling metrics failed: update blocked', msg: 'metrics downsampling failed; queuing the sample anyway' }),
    );
  });
});

describe('payload codec', () => {
  it('compresses only above the threshold and only when it saves space; decodes what it encoded', () => {
    const text = JSON.stringify({ v: 'a'.repeat(100) });
    const n = Buffer.byteLength(text);
    expect(encodePayload({ v: 'a'.repeat(100) }, n)).toEqual({ encoding: 0, data: text, bytes: n });
    const gz = encodePayload({ v: 'a'.repeat(100) }, n - 1);
    expect(gz.encoding).toBe(1);
    expect(gz.bytes).toBe((gz.data as Buffer).length);
    expect(gz.bytes).toBeLessThan(n);
    expect(decodePayload(gz.encoding, gz.data)).toEqual({ v: 'a'.repeat(100) });
    // Text stored as a BLOB (encoding 0) decodes too.
    expect(decodePayload(0, Buffer.from('[1,2]'))).toEqual([1, 2]);
    expect(() => encodePayload(undefined as unknown as Json, 10)).toThrow(new TypeError('payload is not a JSON value'));
  });

  it('keeps a payload as text when gzip does not make it smaller, even by nothing', () => {
    // Short text: gzip's own header and trailer make it longer.
    expect(encodePayload('abc', 1)).toEqual({ encoding: 0, data: '"abc"', bytes: 5 });
    // A text whose gzip is exactly as long: no saving, so not compressed.
    const hex = '0123456789abcdef';
    const texts = Array.from({ length: 400 }, (_, len) => Array.from({ length: len }, (_, i) => hex[(i * 7 + (i >> 3) * 5 + ((i * i) % 11)) % 16]).join(''));
    const same = texts.find((t) => gzipSync(JSON.stringify(t)).length === Buffer.byteLength(JSON.stringify(t)));
    expect(same).toBeDefined();
    expect(encodePayload(same!, 1).encoding).toBe(0);
  });
});
