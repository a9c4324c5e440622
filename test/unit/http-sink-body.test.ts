import { describe, expect, it } from 'vitest';
import type { CloudRequest, CloudResponse } from '../../src/cloud/http-client.js';
import { HttpSink } from '../../src/cloud/http-sink.js';
import type { OutboxMessage } from '../../src/outbox/types.js';

/** What `POST …/messages` carries for each message (docs/protocol.md). */

const msg = (id: string, backfill?: boolean): OutboxMessage => ({
  id,
  channel: 'telemetry',
  priority: 20,
  createdAt: 1_000,
  expiresAt: null,
  coalesceKey: null,
  payload: { stream: 'temp', payload: id },
  storedBytes: 10,
  compressed: false,
  ...(backfill ? { backfill } : {}),
});

describe('HTTP sink: the messages body', () => {
  it('carries id, channel, ts and payload, and backfill: true only on history sent after its stream\'s newest', async () => {
    const sent: unknown[] = [];
    const request = <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
      const { messages } = req.json as { messages: { id: string }[] };
      sent.push(...messages);
      return Promise.resolve({ status: 200, headers: {}, body: { accepted: messages.map((m) => m.id) } as T });
    };
    const result = await new HttpSink({ request }, 'dev-1').send([msg('new'), msg('old', true)], new AbortController().signal);
    expect(result.accepted).toEqual(['new', 'old']);
    expect(sent).toEqual([
      { id: 'new', channel: 'telemetry', ts: 1_000, payload: { stream: 'temp', payload: 'new' } },
      { id: 'old', channel: 'telemetry', ts: 1_000, payload: { stream: 'temp', payload: 'old' }, backfill: true },
    ]);
  });
});

describe('HTTP sink: log chunks', () => {
  const chunk = (id: string, payload: unknown): OutboxMessage => ({ ...msg(id), channel: 'logs', payload: payload as OutboxMessage['payload'] });

  it('go to POST …/logs with each line\'s absolute time, the other messages to …/messages; a chunk that is not one is refused', async () => {
    const paths: string[] = [];
    const bodies: unknown[] = [];
    const request = <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
      paths.push(req.path);
      const { messages } = req.json as { messages: { id: string }[] };
      bodies.push(messages);
      return Promise.resolve({ status: 200, headers: {}, body: { accepted: messages.map((m) => m.id) } as T });
    };
    const result = await new HttpSink({ request }, 'dev-1').send(
      [msg('t1'), chunk('l1', { service: 'edge/web', lines: [[3, -20, 'stdout', 'hi']] }), chunk('l2', { nope: 1 })],
      new AbortController().signal,
    );
    expect(paths).toEqual(['/device/v1/dev-1/messages', '/device/v1/dev-1/logs']);
    expect(bodies[1]).toEqual([{ id: 'l1', ts: 1_000, service: 'edge/web', lines: [{ seq: 3, ts: 980, stream: 'stdout', line: 'hi' }] }]);
    expect(result.accepted).toEqual(['t1', 'l1']);
    expect(result.rejected).toEqual([{ id: 'l2', reason: 'not a log chunk (expected { service, lines })' }]);
  });

  it('a failed …/logs after the messages were taken keeps them acknowledged and sends the chunks again later', async () => {
    const request = <T>(req: CloudRequest): Promise<CloudResponse<T>> => {
      if (req.path.endsWith('/logs')) return Promise.reject(new Error('ECONNRESET'));
      const { messages } = req.json as { messages: { id: string }[] };
      return Promise.resolve({ status: 200, headers: {}, body: { accepted: messages.map((m) => m.id) } as T });
    };
    const result = await new HttpSink({ request }, 'dev-1').send([msg('t1'), chunk('l1', { service: 'a/b', lines: [] })], new AbortController().signal);
    expect(result.accepted).toEqual(['t1']);
    expect(result.retryLater).toBeInstanceOf(Error);
    // Only chunks: the failure is the whole send's.
    await expect(new HttpSink({ request }, 'dev-1').send([chunk('l2', { service: 'a/b', lines: [] })], new AbortController().signal)).rejects.toThrow('ECONNRESET');
  });
});
