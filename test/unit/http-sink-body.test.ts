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
