import type { OutboxMessage } from '../outbox/types.js';
import type { Sink, SinkResult } from '../outbox/flusher.js';
import { errorMessage } from '../util/errors.js';
import type { CloudHttpClient } from './http-client.js';
import { CloudError } from '../resilience/cloud-error.js';
import { LOGS_CHANNEL, wireLogMessage, type WireLogMessage } from '../logs/types.js';

/**
 * A channel whose messages go one by one to an endpoint of their own (state reports to `PATCH …/state`,
 * job updates to `PATCH …/jobs/{id}`) instead of the batched `POST …/messages`.
 */
export interface ChannelDelivery {
  /** Resolves when the cloud took the message; throws (a CloudError) otherwise. */
  send(id: string, payload: OutboxMessage['payload'], signal: AbortSignal): Promise<void>;
  /** Whether a failure refuses this message for good (it is parked); default: the sink's rule. */
  isPermanent?(err: unknown): boolean;
}

/**
 * A message as `POST …/messages` carries it; `backfill` only on history sent after its stream's newest
 * (docs/protocol.md, additions). Two literals rather than a spread: this runs for every message drained.
 */
function wireItem(m: OutboxMessage): Record<string, unknown> {
  return m.backfill
    ? { id: m.id, channel: m.channel, ts: m.createdAt, payload: m.payload, backfill: true }
    : { id: m.id, channel: m.channel, ts: m.createdAt, payload: m.payload };
}

/** Statuses that refuse what was sent (malformed, too large, unprocessable), not who sent it. */
const CONTENT_REFUSALS = new Set([400, 413, 415, 422]);

interface MessagesAnswer {
  accepted?: unknown;
  rejected?: unknown;
}

/**
 * The HTTP sink: `POST /device/v1/{uuid}/messages` with a gzipped batch (PROTOCOL.md), log chunks
 * to `POST …/logs` the same way (docs/protocol.md, "Logs"). The answer's
 * `accepted` ids are acknowledged; `rejected` ones are refused for good; ids in neither go back to the
 * queue. A 400, 413, 415 or 422 for the whole batch is permanent (the flusher splits it to find the
 * message the cloud refuses).
 */
export class HttpSink implements Sink {
  readonly name = 'http';
  readonly monitorChannel = 'api';

  constructor(
    private readonly http: Pick<CloudHttpClient, 'request'>,
    private readonly uuid: string,
    /** Channels another sink (MQTT) carries. */
    readonly excludeChannels?: readonly string[],
    /** Channels delivered one message at a time to endpoints of their own, in queue order. */
    private readonly routes: Readonly<Record<string, ChannelDelivery>> = {},
  ) {}

  async send(batch: OutboxMessage[], signal: AbortSignal): Promise<SinkResult> {
    const routed = batch.filter((m) => Object.hasOwn(this.routes, m.channel));
    const logs = batch.filter((m) => m.channel === LOGS_CHANNEL);
    const messages = routed.length + logs.length > 0 ? batch.filter((m) => !Object.hasOwn(this.routes, m.channel) && m.channel !== LOGS_CHANNEL) : batch;
    const result: SinkResult = messages.length > 0 ? await this.post(messages, signal) : { accepted: [], rejected: [] };
    if (logs.length > 0) await this.postLogs(logs, result, signal);
    for (const m of routed) {
      const route = this.routes[m.channel] as ChannelDelivery;
      try {
        await route.send(m.id, m.payload, signal);
        result.accepted.push(m.id);
      } catch (err) {
        if ((route.isPermanent ?? ((e: unknown) => this.isPermanent(e)))(err)) result.rejected.push({ id: m.id, reason: errorMessage(err) });
        else {
          // What was sent before stays acknowledged; this one and the rest go back and the flusher backs off.
          result.retryLater = err;
          result.retryLaterMarked = true;
          break;
        }
      }
    }
    return result;
  }

  /**
   * Log chunks go to `POST …/logs` (docs/protocol.md, "Logs"), in one request after the messages.
   * When the messages were sent and this fails, what the first request took stays acknowledged.
   */
  private async postLogs(logs: OutboxMessage[], result: SinkResult, signal: AbortSignal): Promise<void> {
    const items = [];
    for (const m of logs) {
      const item = wireLogMessage(m);
      if (item) items.push(item);
      else result.rejected.push({ id: m.id, reason: 'not a log chunk (expected { service, lines })' });
    }
    if (items.length === 0) return;
    let answer: SinkResult;
    try {
      answer = await this.post(items, signal, 'logs');
    } catch (err) {
      if (result.accepted.length === 0 && result.rejected.length === 0) throw err;
      if (this.isPermanent(err)) for (const m of items) result.rejected.push({ id: m.id, reason: errorMessage(err) });
      else result.retryLater = err;
      return;
    }
    result.accepted.push(...answer.accepted);
    result.rejected.push(...answer.rejected);
  }

  private async post(batch: OutboxMessage[] | WireLogMessage[], signal: AbortSignal, endpoint: 'messages' | 'logs' = 'messages'): Promise<SinkResult> {
    const res = await this.http.request<MessagesAnswer>({
      method: 'POST',
      path: `/device/v1/${encodeURIComponent(this.uuid)}/${endpoint}`,
      json: { messages: endpoint === 'logs' ? batch : (batch as OutboxMessage[]).map(wireItem) },
      gzip: true,
      signal,
    });
    const body = res.body ?? {};
    const accepted = Array.isArray(body.accepted) ? body.accepted.filter((x): x is string => typeof x === 'string') : [];
    const rejected = Array.isArray(body.rejected)
      ? body.rejected.flatMap((r: unknown) => {
          const { id, reason, status } = (r ?? {}) as { id?: unknown; reason?: unknown; status?: unknown };
          return typeof id === 'string' ? [{ id, reason: `${typeof status === 'number' ? `${status} ` : ''}${typeof reason === 'string' ? reason : 'rejected'}` }] : [];
        })
      : [];
    return { accepted, rejected };
  }

  /**
   * Only answers about the content are the message's fault. 401/403/404 and the like say something
   * about the device or the cloud: the queue waits (with backoff) instead of parking everything.
   */
  isPermanent(err: unknown): boolean {
    return err instanceof CloudError && err.kind === 'http' && CONTENT_REFUSALS.has(err.status ?? 0);
  }
}
