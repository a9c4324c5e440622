import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import { hex, reasonName } from './reasons.js';

/**
 * Which MQTT version to speak with a broker, and what a refused CONNECT means for the next one.
 *
 * With `mqtt.protocolVersion: 'auto'` (the default) the session tries MQTT 5 and falls back to 3.1.1
 * when the broker says it does not speak 5: a CONNACK "unsupported protocol version" (0x84 in MQTT 5
 * terms, return code 1 in 3.1.1 terms: NATS answers an MQTT 5 CONNECT so) or, from a broker that has
 * never accepted MQTT 5 here, the connection closed twice in a row before any CONNACK (RabbitMQ 3.10
 * does that). The version a broker accepted is kept in the store, so a restart does not ask again;
 * 3.1.1 is kept for a day (an hour when only closes led to it; then MQTT 5 is tried once more).
 * Each broker of mqtt.urls has a negotiator (and a record) of its own; a broker's record is forgotten
 * when it is no longer the one configured.
 * `4` or `5` force that version.
 */

export type MqttVersion = 4 | 5;
export type ProtocolSetting = 'auto' | MqttVersion;

/** What a failed attempt (no CONNACK that accepted us) means. */
export type Refusal = 'protocol' | 'auth' | 'other';

export const PROTOCOL_KV_KEY = 'mqtt.protocol';

/** Where the record of a broker other than the preferred one is kept (by its URL without credentials). */
export function protocolKvKey(broker: string): string {
  return `${PROTOCOL_KV_KEY}:${broker}`;
}
/** How long a broker that speaks only 3.1.1 is believed before MQTT 5 is tried again. */
export const RETRY_MQTT5_AFTER_MS = 24 * 3600_000;
/**
 * The same, when 3.1.1 was chosen only because the connection closed before CONNACK (no explicit
 * answer): a proxy or load balancer closing connections looks alike, so it is believed for an hour.
 */
export const RETRY_MQTT5_AFTER_CLOSES_MS = 3600_000;

/** CONNACK codes that refuse the credentials: MQTT 5 0x86/0x87, 3.1.1 4/5. */
const AUTH_CODES = new Set([0x86, 0x87, 4, 5]);
/** CONNACK codes that refuse the protocol version: MQTT 5 0x84, and 1 from a broker that answers in 3.1.1. */
const PROTOCOL_CODES = new Set([0x84, 1]);

/**
 * `code`: the CONNACK's refusal code, absent when none came. `closedEarly`: the broker closed the
 * connection before any CONNACK, without a network error or a timeout.
 */
export function classifyRefusal(code: number | undefined, closedEarly: boolean): Refusal {
  if (code !== undefined) {
    if (PROTOCOL_CODES.has(code)) return 'protocol';
    if (AUTH_CODES.has(code)) return 'auth';
    return 'other';
  }
  return closedEarly ? 'protocol' : 'other';
}

/** The log line and monitor error for a refusal of the credentials: the broker's answer (described), then what to check. */
export function authRefusalMessage(described: string): string {
  return `${described}; the broker refused the credentials: check device.apiKey (the default password), mqtt.username (default: the device uuid) and mqtt.password`;
}

interface StoredProtocol {
  version: MqttVersion;
  /** Wall time the broker last accepted it. */
  at: number;
  /** mqtt.url without credentials: another broker is asked again. */
  broker: string;
  /** 3.1.1 chosen after closes before CONNACK, not an explicit refusal. */
  inferred?: boolean;
}

export interface ProtocolNegotiatorOptions {
  setting: ProtocolSetting;
  /** The broker's URL without credentials. */
  broker: string;
  kv: { getKv<T>(key: string): T | undefined; setKv(key: string, value: unknown): void };
  clock: Pick<Clock, 'now'>;
  logger: Logger;
  retryMqtt5AfterMs?: number;
  /**
   * Where the record is kept. Default `mqtt.protocol`, the one record of agents before mqtt.urls:
   * the preferred broker keeps it there, each other broker under `protocolKvKey`.
   */
  kvKey?: string;
}

export interface ProtocolInfo {
  setting: ProtocolSetting;
  /** The version of the next (or current) connection. */
  version: MqttVersion;
  /** A broker accepted `version` (now or in an earlier run); false while still trying. */
  negotiated: boolean;
}

export class ProtocolNegotiator {
  private readonly opts: ProtocolNegotiatorOptions;
  private readonly retryAfterMs: number;
  private readonly kvKey: string;
  private current: MqttVersion;
  /** Wall time `current` was last accepted; null while not yet. */
  private acceptedAt: number | null = null;
  /** This broker accepted MQTT 5 before: a close before CONNACK is then a fault, not a "no". */
  private spoke5 = false;
  private earlyCloses = 0;
  /** See StoredProtocol.inferred. */
  // Stryker disable next-line BooleanLiteral: equivalent: read only once 3.1.1 is in use, which the constructor (a stored record) or refused() sets it for first
  private inferred = false;

  constructor(opts: ProtocolNegotiatorOptions) {
    this.opts = opts;
    this.retryAfterMs = opts.retryMqtt5AfterMs ?? RETRY_MQTT5_AFTER_MS;
    this.kvKey = opts.kvKey ?? PROTOCOL_KV_KEY;
    this.current = opts.setting === 'auto' ? 5 : opts.setting;
    if (opts.setting !== 'auto') return;
    let stored: StoredProtocol | undefined;
    try {
      stored = opts.kv.getKv<StoredProtocol>(this.kvKey);
    } catch (err) {
      opts.logger.warn({ err: String(err) }, 'mqtt: could not read the negotiated protocol version; trying MQTT 5');
    }
    // Stryker disable next-line ConditionalExpression: equivalent: a record of another version changes nothing below (spoke5 stays false, 3.1.1 is not taken)
    if (stored?.broker !== opts.broker || (stored.version !== 4 && stored.version !== 5)) return;
    this.spoke5 = stored.version === 5;
    this.inferred = stored.inferred === true;
    if (stored.version === 4 && !this.expired(stored.at)) {
      this.current = 4;
      this.acceptedAt = stored.at;
    }
  }

  /** The version to connect with now. A 3.1.1 result older than a day gives MQTT 5 another try. */
  version(): MqttVersion {
    if (this.opts.setting === 'auto' && this.current === 4 && this.acceptedAt !== null && this.expired(this.acceptedAt)) {
      this.opts.logger.info(`mqtt: trying MQTT 5 again (3.1.1 was negotiated ${this.inferred ? 'an hour' : 'a day'} ago)`);
      this.current = 5;
      this.acceptedAt = null;
    }
    return this.current;
  }

  info(): ProtocolInfo {
    return { setting: this.opts.setting, version: this.current, negotiated: this.acceptedAt !== null };
  }

  /** A CONNACK accepted `version`: remember it (in the store when it is news). */
  accepted(version: MqttVersion): void {
    const now = this.opts.clock.now();
    // Stored when decided, not at every connection: the day before MQTT 5 is tried again runs from the decision.
    // Stryker disable next-line ConditionalExpression: equivalent: connections use version(), so a version other than current is accepted only after version() reset acceptedAt
    const news = this.acceptedAt === null || this.current !== version;
    this.current = version;
    if (news) this.acceptedAt = now;
    this.earlyCloses = 0;
    if (version === 5) this.spoke5 = true;
    if (this.opts.setting !== 'auto' || !news) return;
    try {
      // Stryker disable next-line ConditionalExpression: equivalent: `inferred` of an MQTT 5 record is never read (it only shortens how long 3.1.1 is believed)
      const record: StoredProtocol = { version, at: now, broker: this.opts.broker, ...(version === 4 && this.inferred ? { inferred: true } : {}) };
      this.opts.kv.setKv(this.kvKey, record);
    } catch (err) {
      this.opts.logger.warn({ err: String(err) }, 'mqtt: could not store the negotiated protocol version');
    }
    if (version === 4) {
      this.opts.logger.warn(
        { protocolVersion: 4, broker: this.opts.broker },
        `mqtt: the broker ${this.opts.broker} speaks MQTT 3.1.1, not 5: using 3.1.1 with it (no session expiry, reason codes or Receive Maximum); MQTT 5 is tried again later (a day, an hour when the broker only closed the connection)`,
      );
    } else {
      this.opts.logger.info({ protocolVersion: 5, broker: this.opts.broker }, `mqtt: negotiated MQTT 5 with ${this.opts.broker}`);
    }
  }

  /**
   * An attempt with `version` failed with `refusal`. Returns true when the next attempt should go
   * at once with the other version (a fallback, not a failure to back off from).
   */
  refused(version: MqttVersion, refusal: Refusal, code: number | undefined): boolean {
    if (refusal !== 'protocol') {
      this.earlyCloses = 0;
      return false;
    }
    if (this.opts.setting !== 'auto') return false;
    if (version === 4) {
      // 3.1.1 refused as well: the answer was no verdict on the version; MQTT 5 again, after the backoff.
      this.current = 5;
      this.acceptedAt = null;
      return false;
    }
    if (code === undefined && (this.spoke5 || ++this.earlyCloses < 2)) return false;
    this.earlyCloses = 0;
    this.current = 4;
    this.acceptedAt = null;
    this.inferred = code === undefined;
    const why = code === undefined ? 'closed the connection before answering' : `answered ${code === 1 ? 'unacceptable protocol version' : reasonName(code)} (${hex(code)})`;
    this.opts.logger.info({ code }, `mqtt: the broker ${why} to an MQTT 5 CONNECT; trying MQTT 3.1.1`);
    return true;
  }

  private expired(at: number): boolean {
    const age = this.opts.clock.now() - at;
    // A wall clock that stepped back makes the age negative: ask again rather than trust it.
    return age < 0 || age >= (this.inferred ? Math.min(this.retryAfterMs, RETRY_MQTT5_AFTER_CLOSES_MS) : this.retryAfterMs);
  }
}
