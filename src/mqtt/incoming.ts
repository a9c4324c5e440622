import { LIMIT_DEFAULTS, type AgentConfig } from '../config/schema.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { depthMessage, jsonDeeperThan } from '../util/json-limits.js';
import type { Logger } from '../util/logger.js';
import { MqttFrameScanner } from '../util/mqtt-frames.js';
import type { IncomingMessage } from './session-events.js';
import type { DeviceTopics } from './topics.js';

export interface IncomingGuardDeps {
  topics: DeviceTopics;
  /** `maxCloudResponseBytes` per packet, `maxJsonDepth`. Defaults: the schema's. */
  limits?: Pick<AgentConfig['limits'], 'maxCloudResponseBytes' | 'maxJsonDepth'> | undefined;
  clock: Pick<Clock, 'now'>;
  logger: Logger;
}

/**
 * What the broker sends the device, checked before anyone sees it: a packet announced over
 * `limits.maxCloudResponseBytes` ends its connection as soon as its header is seen, a payload that is
 * not JSON or nested too deep is dropped. It also counts the connections in a row that a packet
 * over the limit ended, which decides when the next one starts with a clean session.
 */
export class IncomingGuard {
  private readonly deps: IncomingGuardDeps;
  /** Connections in a row the broker ended by sending a packet over the limit. */
  private streak = 0;
  private dropped = 0;

  constructor(deps: IncomingGuardDeps) {
    this.deps = deps;
  }

  get maxPacketBytes(): number {
    return this.deps.limits?.maxCloudResponseBytes ?? LIMIT_DEFAULTS.maxCloudResponseBytes;
  }

  /** Messages dropped: over the limit, too deep, or not JSON. */
  get droppedIncoming(): number {
    return this.dropped;
  }

  /** Connections in a row ended by a packet over the limit, with nothing good received since. */
  get oversizeStreak(): number {
    return this.streak;
  }

  /**
   * A broker that re-sends a packet over the limit with the stored session would cut the agent off
   * for good (3.1.1 cannot refuse one packet): after two such closes in a row, a clean session drops it.
   */
  get cleanSessionNeeded(): boolean {
    return this.streak >= 2;
  }

  /** A connection made with a clean session is ready: the packet it was made to drop is gone. */
  cleanSessionMade(): void {
    this.streak = 0;
  }

  /**
   * mqtt.js holds a packet whole until its last byte: a packet from the broker announced over the
   * limit ends the connection (`close`, with why) as soon as its header is seen, so the most held is the limit.
   */
  watch(stream: NodeJS.ReadableStream | undefined, close: (error: string) => void): void {
    if (!stream) return;
    const limit = this.maxPacketBytes;
    const scanner = new MqttFrameScanner(limit);
    stream.on('data', (chunk: Buffer) => {
      const over = scanner.feed(chunk);
      if (over === undefined) return;
      // Stryker disable next-line EqualityOperator: the scanner returns -1 or a packet's size on the wire, at least 2 bytes, never 0
      const error = `the broker sent ${over < 0 ? 'a packet with a malformed length' : `a packet of ${over} bytes`}, over limits.maxCloudResponseBytes (${limit}): connection closed`;
      this.dropped++;
      this.streak++;
      this.deps.logger.warn({ bytes: over, limit }, `mqtt: ${error}`);
      close(error);
    });
  }

  /** A message from the broker: what the agent handles of it, or undefined when it is dropped. */
  accept(topic: string, payload: Buffer, retained: boolean): IncomingMessage | undefined {
    this.streak = 0;
    const { topics, logger } = this.deps;
    const kind = topics.kindOf(topic);
    if (!kind) {
      logger.debug({ topic }, 'mqtt: message on a topic the agent does not handle; ignored');
      return undefined;
    }
    const maxDepth = this.deps.limits?.maxJsonDepth ?? LIMIT_DEFAULTS.maxJsonDepth;
    if (jsonDeeperThan(payload, maxDepth)) {
      this.dropped++;
      logger.warn({ topic, bytes: payload.length }, `mqtt: dropped a message on ${topic}: ${depthMessage('its payload', 'limits.maxJsonDepth', maxDepth)}`);
      return undefined;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload.toString('utf8'));
    } catch (err) {
      this.dropped++;
      logger.warn({ topic, bytes: payload.length, err: errorMessage(err) }, `mqtt: dropped a message on ${topic} that is not JSON: ${errorMessage(err)}`);
      return undefined;
    }
    return { kind, topic, payload: parsed, retained, at: this.deps.clock.now() };
  }
}
