import { AgentError } from '../util/errors.js';
import type { Sink, SinkResult } from '../outbox/flusher.js';
import type { OutboxMessage } from '../outbox/types.js';
import type { MqttSession, PublishRequest } from './session.js';
import { wireLogMessage } from '../logs/types.js';

/** The outbox channels that travel over MQTT (PROTOCOL.md topics); the rest go over HTTP. */
export const MQTT_CHANNELS = ['telemetry', 'metrics', 'events', 'shadow', 'logs'] as const;

/** A message the sink cannot map to a topic: the message is wrong, not the broker. */
class Unmappable extends AgentError {
  constructor(message: string) {
    super('MQTT_UNMAPPABLE', message);
  }
}

function record(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/**
 * Maps an outbox message to its topic and body (PROTOCOL.md): telemetry `{ stream, payload }` to
 * `iot/{uuid}/telemetry/{stream}` as `{ id, ts, payload }`; metrics to `…/metrics` as
 * `{ id, ts, samples }`; events to `…/events` as `{ id, ts, type, ... }`; shadow reports to
 * `…/shadow/reported` as `{ id, version, state }`. A message marked `backfill` carries `backfill: true` too.
 */
export function toPublish(session: Pick<MqttSession, 'topics'>, m: OutboxMessage): { topic: string; body: unknown } {
  const mapped = mapPublish(session, m);
  // History sent after its stream's newest message (a freshness-first drain) says so; live messages carry
  // no such member. Every body is a new object literal of mapPublish's: set in place, no copy per message.
  if (m.backfill) (mapped.body as Record<string, unknown>).backfill = true;
  return mapped;
}

function mapPublish(session: Pick<MqttSession, 'topics'>, m: OutboxMessage): { topic: string; body: unknown } {
  const t = session.topics;
  const p = record(m.payload);
  switch (m.channel) {
    case 'telemetry': {
      if (typeof p.stream !== 'string') throw new Unmappable(`telemetry message ${m.id} has no stream`);
      let topic: string;
      try {
        topic = t.telemetry(p.stream);
      } catch (err) {
        throw new Unmappable((err as Error).message);
      }
      return { topic, body: { id: m.id, ts: m.createdAt, payload: p.payload ?? null } };
    }
    case 'metrics':
      return { topic: t.metrics, body: { id: m.id, ts: m.createdAt, samples: Array.isArray(m.payload) ? m.payload : [m.payload] } };
    case 'events':
      return { topic: t.events, body: { ...p, id: m.id, ts: m.createdAt, type: typeof p.type === 'string' ? p.type : 'event' } };
    case 'shadow':
      return { topic: t.shadowReported, body: { id: m.id, version: p.version ?? null, state: p.state ?? null } };
    case 'logs': {
      const body = wireLogMessage({ id: m.id, createdAt: m.createdAt, payload: m.payload });
      if (!body) throw new Unmappable(`logs message ${m.id} is not a log chunk (expected { service, lines })`);
      let topic: string;
      try {
        topic = t.logs(body.service);
      } catch (err) {
        throw new Unmappable((err as Error).message);
      }
      return { topic, body };
    }
    default:
      throw new Unmappable(`channel ${m.channel} does not travel over MQTT`);
  }
}

/**
 * The MQTT sink: publishes a batch at QoS 1 through the session, which holds at most `maxInflight`
 * unacknowledged, so the outbox is drained only as fast as PUBACKs come back. A PUBACK acknowledges
 * the message; a refusal the broker will repeat (not authorized, topic invalid...) parks it; a
 * transient one puts it back and makes the flusher back off. A publish waiting across a disconnect
 * stays in the session's store and is re-sent by it; a later publish of the same id joins it.
 */
export class MqttSink implements Sink {
  readonly name = 'mqtt';
  readonly monitorChannel = 'mqtt';
  readonly channels = MQTT_CHANNELS;

  constructor(private readonly session: Pick<MqttSession, 'publishMany' | 'topics'>) {}

  // No abort signal per publish: a listener each on one signal would cost a good part of a drain's CPU
  // and trip Node's listener warning; at shutdown the session stops and settles every waiting publish.
  // heldByCaller: the outbox keeps every message until it is acked here, and after a restart it
  // publishes the unacknowledged ones again, so the session need not write its own copy.
  async send(batch: OutboxMessage[]): Promise<SinkResult> {
    const result: SinkResult = { accepted: [], rejected: [] };
    const requests: PublishRequest[] = [];
    const sent: OutboxMessage[] = [];
    for (const m of batch) {
      let mapped;
      try {
        mapped = toPublish(this.session, m);
      } catch (err) {
        result.rejected.push({ id: m.id, reason: (err as Error).message });
        continue;
      }
      requests.push({ topic: mapped.topic, payload: JSON.stringify(mapped.body), id: m.id, heldByCaller: true });
      sent.push(m);
    }
    const outcomes = await this.session.publishMany(requests);
    outcomes.forEach((o, i) => {
      const id = (sent[i] as OutboxMessage).id;
      if (o.ok) result.accepted.push(id);
      else if (o.permanent) result.rejected.push({ id, reason: o.reason });
      else result.retryLater ??= new AgentError('MQTT_PUBLISH_DEFERRED', o.reason);
    });
    return result;
  }

  isPermanent(): boolean {
    // Refusals are per message (in the result); a thrown error is never the message's fault.
    return false;
  }
}
