import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { IdGenerator } from '../util/ids.js';
import { CHANNEL_NAME, defaultPriority, type ChannelPolicies } from './channel-policies.js';
import { encodePayload, type EncodedPayload } from './codec.js';
import type { QueueClock } from './queue-clock.js';
import { OutboxError, type EnqueueMessage } from './types.js';

/** An enqueued message checked, encoded and given its id, priority and expiry: what admission decides on. */
export interface Prepared {
  id: string;
  idGiven: boolean;
  channel: string;
  priority: number;
  /** Wall-clock ms of the enqueue (as the clock said then). */
  createdAt: number;
  /** On the queue clock (queue-clock.ts), as `mono`. */
  expiresAt: number | null;
  coalesceKey: string | null;
  /** Its stream (null: its channel's single stream). */
  stream: string | null;
  enc: EncodedPayload;
  /** The boot it was queued in and the queue clock then. */
  boot: number;
  mono: number;
}

export interface IntakeOptions {
  policies: Pick<ChannelPolicies, 'get'>;
  /** The outbox's total limits (a message over the bytes limit can never fit). */
  limits: { maxBytes: number };
  compressAboveBytes: number;
  clock: Pick<Clock, 'now'>;
  /** TTLs are counted on it: a wall-clock step neither expires nor extends a message. */
  queueClock: Pick<QueueClock, 'stamp'>;
  ids: Pick<IdGenerator, 'next'>;
}

/**
 * Checks what a producer hands to `enqueue` before it joins a group commit, so that a bad message
 * is refused at once (OUTBOX_INVALID, OUTBOX_TOO_LARGE) and never costs the batch anything.
 */
export class Intake {
  constructor(private readonly o: IntakeOptions) {}

  prepare(msg: EnqueueMessage): Prepared {
    const { channel } = msg;
    if (typeof channel !== 'string' || !CHANNEL_NAME.test(channel)) {
      throw new OutboxError('OUTBOX_INVALID', `channel: expected 1-64 letters, digits, ".", "_" or "-", got ${JSON.stringify(channel)}`);
    }
    const policy = this.o.policies.get(channel);
    const priority = msg.priority ?? policy?.priority ?? defaultPriority(channel);
    if (!Number.isSafeInteger(priority)) throw new OutboxError('OUTBOX_INVALID', `priority: expected an integer, got ${String(priority)}`);
    const ttlMs = msg.ttlMs ?? policy?.ttlMs;
    if (ttlMs !== undefined && !(typeof ttlMs === 'number' && ttlMs > 0 && Number.isFinite(ttlMs))) {
      throw new OutboxError('OUTBOX_INVALID', `ttlMs: expected a positive number of milliseconds, got ${String(ttlMs)}`);
    }
    if (msg.id !== undefined && !(typeof msg.id === 'string' && msg.id.length > 0 && msg.id.length <= 128)) {
      throw new OutboxError('OUTBOX_INVALID', `id: expected a string of 1-128 characters, got ${JSON.stringify(msg.id)}`);
    }
    if (msg.coalesceKey !== undefined && !(typeof msg.coalesceKey === 'string' && msg.coalesceKey.length > 0 && msg.coalesceKey.length <= 256)) {
      throw new OutboxError('OUTBOX_INVALID', `coalesceKey: expected a string of 1-256 characters, got ${JSON.stringify(msg.coalesceKey)}`);
    }
    if (msg.stream !== undefined && !(typeof msg.stream === 'string' && msg.stream.length > 0 && msg.stream.length <= 256)) {
      throw new OutboxError('OUTBOX_INVALID', `stream: expected a string of 1-256 characters, got ${JSON.stringify(msg.stream)}`);
    }
    let enc: EncodedPayload;
    try {
      enc = encodePayload(msg.payload, this.o.compressAboveBytes, msg.payloadJson);
    } catch (err) {
      throw new OutboxError('OUTBOX_INVALID', `payload: expected a JSON value (${errorMessage(err)})`, { cause: err });
    }
    const maxBytes = Math.min(this.o.limits.maxBytes, policy?.maxBytes ?? Infinity);
    if (enc.bytes > maxBytes) {
      throw new OutboxError('OUTBOX_TOO_LARGE', `a ${channel} message of ${enc.bytes} bytes (stored) is larger than the outbox may hold (${maxBytes} bytes)`);
    }
    const createdAt = Math.round(this.o.clock.now());
    const { boot, mono } = this.o.queueClock.stamp();
    return {
      id: msg.id ?? this.o.ids.next(),
      idGiven: msg.id !== undefined,
      channel,
      priority,
      createdAt,
      expiresAt: ttlMs === undefined ? null : mono + Math.ceil(ttlMs),
      coalesceKey: msg.coalesceKey ?? null,
      stream: msg.stream ?? null,
      enc,
      boot,
      mono,
    };
  }
}
