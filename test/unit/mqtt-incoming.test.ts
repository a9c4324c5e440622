import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { IncomingGuard } from '../../src/mqtt/incoming.js';
import { deviceTopics } from '../../src/mqtt/topics.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { captureLogger } from '../helpers/logger.js';

const topics = deviceTopics('dev-0123');
const WARN = 40;
const DEBUG = 20;

function guard(limits = { maxCloudResponseBytes: 100, maxJsonDepth: 3 }): {
  guard: IncomingGuard;
  records: () => Record<string, unknown>[];
  clock: FakeClock;
} {
  const log = captureLogger();
  const clock = new FakeClock();
  return { guard: new IncomingGuard({ topics, limits, clock, logger: log.logger }), records: log.records, clock };
}

/** What the guard's `close` was called with. */
function watched(g: IncomingGuard): { stream: PassThrough; closes: string[] } {
  const stream = new PassThrough();
  const closes: string[] = [];
  g.watch(stream, (error) => closes.push(error));
  return { stream, closes };
}

describe('IncomingGuard.watch', () => {
  it('closes the connection when a packet over the limit is announced, counts it and says why', () => {
    const t = guard();
    const { stream, closes } = watched(t.guard);
    // A PUBLISH of 20 bytes passes; then one whose remaining length (0xC8 0x01 = 200) makes 203 on the wire.
    stream.write(Buffer.from([0x30, 18, ...Buffer.alloc(18)]));
    expect(closes).toEqual([]);
    stream.write(Buffer.from([0x30, 0xc8, 0x01]));

    const error = 'the broker sent a packet of 203 bytes, over limits.maxCloudResponseBytes (100): connection closed';
    expect(closes).toEqual([error]);
    expect(t.guard.droppedIncoming).toBe(1);
    expect(t.guard.oversizeStreak).toBe(1);
    expect(t.records()).toEqual([expect.objectContaining({ level: WARN, bytes: 203, limit: 100, msg: `mqtt: ${error}` })]);
  });

  it('closes the connection on a malformed remaining length (more than 4 bytes) and says so', () => {
    const t = guard();
    const { stream, closes } = watched(t.guard);
    stream.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff]));

    const error = 'the broker sent a packet with a malformed length, over limits.maxCloudResponseBytes (100): connection closed';
    expect(closes).toEqual([error]);
    expect(t.guard.droppedIncoming).toBe(1);
    expect(t.records()).toEqual([expect.objectContaining({ level: WARN, bytes: -1, limit: 100, msg: `mqtt: ${error}` })]);
  });

  it('asks for a clean session after two connections in a row ended by a packet over the limit, until a good message or a clean session', () => {
    const t = guard();
    watched(t.guard).stream.write(Buffer.from([0x30, 0xc8, 0x01]));
    expect(t.guard.cleanSessionNeeded).toBe(false);
    watched(t.guard).stream.write(Buffer.from([0x30, 0xc8, 0x01]));
    expect(t.guard.cleanSessionNeeded).toBe(true);
    t.guard.cleanSessionMade();
    expect(t.guard.oversizeStreak).toBe(0);

    watched(t.guard).stream.write(Buffer.from([0x30, 0xc8, 0x01]));
    t.guard.accept(topics.targetNotify, Buffer.from('{}'), false);
    expect(t.guard.oversizeStreak).toBe(0);
    expect(t.guard.droppedIncoming).toBe(3);
  });
});

describe('IncomingGuard.accept', () => {
  it('hands on a JSON message on a subscribed topic with its kind and the time it arrived', () => {
    const t = guard();
    expect(t.guard.accept(topics.targetNotify, Buffer.from('{"version":7}'), true)).toEqual({
      kind: 'target-notify',
      topic: topics.targetNotify,
      payload: { version: 7 },
      retained: true,
      at: t.clock.now(),
    });
    expect(t.guard.droppedIncoming).toBe(0);
    expect(t.records()).toEqual([]);
  });

  it('ignores a message on a topic the agent does not handle, at debug, without counting it as dropped', () => {
    const t = guard();
    expect(t.guard.accept('iot/someone-else/target/notify', Buffer.from('{}'), false)).toBeUndefined();
    expect(t.guard.droppedIncoming).toBe(0);
    expect(t.records()).toEqual([
      expect.objectContaining({ level: DEBUG, topic: 'iot/someone-else/target/notify', msg: 'mqtt: message on a topic the agent does not handle; ignored' }),
    ]);
  });

  it('drops a payload nested deeper than limits.maxJsonDepth, counts it and names the limit', () => {
    const t = guard();
    const payload = Buffer.from('{"a":{"b":{"c":{"d":1}}}}');
    expect(t.guard.accept(topics.shadowDesired, payload, false)).toBeUndefined();
    expect(t.guard.droppedIncoming).toBe(1);
    expect(t.records()).toEqual([
      expect.objectContaining({
        level: WARN,
        topic: topics.shadowDesired,
        bytes: payload.length,
        msg: `mqtt: dropped a message on ${topics.shadowDesired}: its payload nests arrays/objects deeper than limits.maxJsonDepth (3 levels)`,
      }),
    ]);
    // At the limit it is handed on.
    expect(t.guard.accept(topics.shadowDesired, Buffer.from('{"a":{"b":{"c":1}}}'), false)?.payload).toEqual({ a: { b: { c: 1 } } });
  });

  it('drops a payload that is not JSON, counts it and says why', () => {
    const t = guard();
    const payload = Buffer.from('not json');
    expect(t.guard.accept(topics.jobsNotify, payload, false)).toBeUndefined();
    expect(t.guard.droppedIncoming).toBe(1);
    const [record] = t.records();
    expect(record).toMatchObject({ level: WARN, topic: topics.jobsNotify, bytes: payload.length });
    expect(record!.msg).toBe(`mqtt: dropped a message on ${topics.jobsNotify} that is not JSON: ${String(record!.err)}`);
  });
});
