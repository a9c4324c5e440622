import { describe, expect, it } from 'vitest';
import type { OutboxMessage } from '../../src/outbox/types.js';
import type { Json } from '../../src/util/json-diff.js';
import type { PublishOutcome, PublishRequest } from '../../src/mqtt/session.js';
import { MQTT_CHANNELS, MqttSink, toPublish } from '../../src/mqtt/sink.js';
import { deviceTopics } from '../../src/mqtt/topics.js';

/** The outbox's MQTT sink: which topic and body each channel's message gets, and what the broker's answers make of it. */

const TS = Date.UTC(2026, 0, 1, 12);
const topics = deviceTopics('dev-7');
const session = { topics };

function msg(id: string, channel: string, payload: Json): OutboxMessage {
  return { id, channel, priority: 0, createdAt: TS, expiresAt: null, coalesceKey: null, payload, storedBytes: 0, compressed: false };
}

/** What the broker received for `m`: its topic and its parsed JSON body. */
function published(m: OutboxMessage): { topic: string; body: unknown } {
  const p = toPublish(session, m);
  return { topic: p.topic, body: JSON.parse(JSON.stringify(p.body)) };
}

/** A session that records what it is asked to publish and answers each request from `answer`. */
function fakeSession(answer: (req: PublishRequest) => PublishOutcome = () => ({ ok: true })): {
  session: ConstructorParameters<typeof MqttSink>[0];
  requests: PublishRequest[];
} {
  const requests: PublishRequest[] = [];
  return {
    requests,
    session: {
      topics,
      publishMany: (reqs) => {
        requests.push(...reqs);
        return Promise.resolve(reqs.map(answer));
      },
    },
  };
}

describe('toPublish: the topic and body of each channel (PROTOCOL.md)', () => {
  it('sends telemetry to its stream topic with the id, the enqueue time and the payload', () => {
    expect(published(msg('t1', 'telemetry', { stream: 'flow', payload: { litres: 3.5 } }))).toEqual({
      topic: 'iot/dev-7/telemetry/flow',
      body: { id: 't1', ts: TS, payload: { litres: 3.5 } },
    });
  });

  it('sends a null payload for telemetry that has none, and keeps a falsy one', () => {
    expect(published(msg('t2', 'telemetry', { stream: 'flow' })).body).toEqual({ id: 't2', ts: TS, payload: null });
    expect(published(msg('t3', 'telemetry', { stream: 'flow', payload: 0 })).body).toEqual({ id: 't3', ts: TS, payload: 0 });
  });

  it('sends metrics as a list of samples, wrapping a single sample in one', () => {
    expect(published(msg('m1', 'metrics', [{ cpu: 1 }, { cpu: 2 }]))).toEqual({
      topic: 'iot/dev-7/metrics',
      body: { id: 'm1', ts: TS, samples: [{ cpu: 1 }, { cpu: 2 }] },
    });
    expect(published(msg('m2', 'metrics', { cpu: 3 })).body).toEqual({ id: 'm2', ts: TS, samples: [{ cpu: 3 }] });
  });

  it('sends an event with its fields, its type, and the outbox id and time over any of its own', () => {
    expect(published(msg('e1', 'events', { type: 'door.open', door: 2, id: 'spoofed', ts: 1 }))).toEqual({
      topic: 'iot/dev-7/events',
      body: { type: 'door.open', door: 2, id: 'e1', ts: TS },
    });
  });

  it('types an event without a string type as "event"', () => {
    expect(published(msg('e2', 'events', { door: 2 })).body).toEqual({ door: 2, id: 'e2', ts: TS, type: 'event' });
    expect(published(msg('e3', 'events', { type: 7 })).body).toEqual({ id: 'e3', ts: TS, type: 'event' });
  });

  it('takes nothing from an event payload that is not an object', () => {
    const bare = (id: string): unknown => ({ id, ts: TS, type: 'event' });
    expect(published(msg('e4', 'events', 'door')).body).toEqual(bare('e4'));
    expect(published(msg('e5', 'events', ['door', 'open'])).body).toEqual(bare('e5'));
    expect(published(msg('e6', 'events', null)).body).toEqual(bare('e6'));
    expect(published(msg('e7', 'events', 42)).body).toEqual(bare('e7'));
  });

  it('sends a shadow report to shadow/reported with its version and state, null when absent', () => {
    expect(published(msg('s1', 'shadow', { version: 4, state: { fan: 'on' }, extra: true }))).toEqual({
      topic: 'iot/dev-7/shadow/reported',
      body: { id: 's1', version: 4, state: { fan: 'on' } },
    });
    expect(published(msg('s2', 'shadow', { version: 0, state: false })).body).toEqual({ id: 's2', version: 0, state: false });
    expect(published(msg('s3', 'shadow', {})).body).toEqual({ id: 's3', version: null, state: null });
  });

  it('sends a log chunk to logs/<app>/<service> (the agent\'s to logs/agent) with each line\'s absolute time', () => {
    expect(published(msg('l1', 'logs', { service: 'edge/web', lines: [[7, -5, 'stderr', 'boom']] }))).toEqual({
      topic: 'iot/dev-7/logs/edge/web',
      body: { id: 'l1', ts: TS, service: 'edge/web', lines: [{ seq: 7, ts: TS - 5, stream: 'stderr', line: 'boom' }] },
    });
    expect(published(msg('l2', 'logs', { service: 'agent', lines: [] })).topic).toBe('iot/dev-7/logs/agent');
  });

  it('marks history sent after its stream\'s newest with backfill: true, and leaves live messages unmarked', () => {
    const old = { ...msg('t-1', 'telemetry', { stream: 'temp', payload: 20 }), backfill: true };
    expect(published(old)).toEqual({ topic: 'iot/dev-7/telemetry/temp', body: { id: 't-1', ts: TS, payload: 20, backfill: true } });
    expect(published({ ...msg('m-1', 'metrics', { cpu: 1 }), backfill: true }).body).toEqual({ id: 'm-1', ts: TS, samples: [{ cpu: 1 }], backfill: true });
    expect(published(msg('t-2', 'telemetry', { stream: 'temp', payload: 21 })).body).not.toHaveProperty('backfill');
  });

  it('refuses a message it cannot map, naming the message and why', () => {
    const cases: Array<[OutboxMessage, string]> = [
      [msg('t4', 'telemetry', { payload: 1 }), 'telemetry message t4 has no stream'],
      [msg('t5', 'telemetry', null), 'telemetry message t5 has no stream'],
      [msg('t6', 'telemetry', { stream: 'a/b', payload: 1 }), 'telemetry stream "a/b": expected a name without "/", "+", "#" or NUL'],
      [msg('l1', 'logs', { line: 'x' }), 'logs message l1 is not a log chunk (expected { service, lines })'],
      [msg('l2', 'logs', { service: 'a/b/c', lines: [] }), 'log service "a/b/c": expected "agent" or "<app>/<service>"'],
      [msg('j1', 'jobs', { status: 'x' }), 'channel jobs does not travel over MQTT'],
    ];
    for (const [m, message] of cases) {
      expect(() => toPublish(session, m)).toThrow(expect.objectContaining({ code: 'MQTT_UNMAPPABLE', message }));
    }
  });
});

describe('MqttSink', () => {
  it('carries the MQTT channels on the mqtt monitor channel, and never blames a message for a thrown error', () => {
    const sink = new MqttSink(fakeSession().session);
    expect({ name: sink.name, monitorChannel: sink.monitorChannel, channels: sink.channels }).toEqual({
      name: 'mqtt',
      monitorChannel: 'mqtt',
      channels: ['telemetry', 'metrics', 'events', 'shadow', 'logs'],
    });
    expect(MQTT_CHANNELS).toEqual(['telemetry', 'metrics', 'events', 'shadow', 'logs']);
    expect(sink.isPermanent()).toBe(false);
  });

  it('publishes a batch in order as JSON, held by the outbox, and accepts what the broker acknowledged', async () => {
    const f = fakeSession();
    const sink = new MqttSink(f.session);
    const result = await sink.send([msg('a', 'metrics', { cpu: 1 }), msg('b', 'shadow', { version: 1, state: {} })]);
    expect(result).toEqual({ accepted: ['a', 'b'], rejected: [] });
    expect(f.requests).toEqual([
      { topic: 'iot/dev-7/metrics', payload: JSON.stringify({ id: 'a', ts: TS, samples: [{ cpu: 1 }] }), id: 'a', heldByCaller: true },
      { topic: 'iot/dev-7/shadow/reported', payload: JSON.stringify({ id: 'b', version: 1, state: {} }), id: 'b', heldByCaller: true },
    ]);
  });

  it('rejects an unmappable message without sending it, and still sends the rest', async () => {
    const f = fakeSession();
    const result = await new MqttSink(f.session).send([msg('bad', 'telemetry', {}), msg('ok', 'events', { type: 'boot' })]);
    expect(f.requests.map((r) => r.id)).toEqual(['ok']);
    expect(result).toEqual({ accepted: ['ok'], rejected: [{ id: 'bad', reason: 'telemetry message bad has no stream' }] });
  });

  it('rejects (parks) what the broker refuses for good and leaves a transient refusal for a later retry', async () => {
    const answers: Record<string, PublishOutcome> = {
      acked: { ok: true },
      refused: { ok: false, permanent: true, reasonCode: 0x87, reason: 'Not authorized (0x87)' },
      quota: { ok: false, permanent: false, reasonCode: 0x97, reason: 'Quota exceeded (0x97)' },
      busy: { ok: false, permanent: false, reasonCode: 0x89, reason: 'Server busy (0x89)' },
    };
    const f = fakeSession((req) => answers[req.id]!);
    const result = await new MqttSink(f.session).send(['acked', 'quota', 'refused', 'busy'].map((id) => msg(id, 'metrics', 1)));
    expect(result.accepted).toEqual(['acked']);
    expect(result.rejected).toEqual([{ id: 'refused', reason: 'Not authorized (0x87)' }]);
    // Neither accepted nor rejected: quota and busy go back to the queue; the first reason is the back-off's.
    expect(result.retryLater).toMatchObject({ code: 'MQTT_PUBLISH_DEFERRED', message: 'Quota exceeded (0x97)' });
  });

  it('asks for no retry when nothing was deferred', async () => {
    const result = await new MqttSink(fakeSession().session).send([msg('x', 'metrics', 1)]);
    expect(result.retryLater).toBeUndefined();
  });
});
