import type { IClientOptions, MqttClient } from 'mqtt';
import { ErrorWithReasonCode } from 'mqtt';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { classifyRefusal, type MqttVersion, type ProtocolNegotiator } from './negotiation.js';

/**
 * The brokers of `mqtt.urls` (or the one of `mqtt.url`), the preferred first, and which one the
 * session tries: one at a time, the next after every failed attempt or lost connection, round and
 * round, with the one backoff between attempts (the connection's life waits it out). Each broker
 * negotiates its own protocol version.
 */

export interface Broker {
  url: URL;
  /** The URL without credentials: what logs, stats and metrics show. */
  name: string;
  negotiator: Pick<ProtocolNegotiator, 'version' | 'refused' | 'accepted' | 'info'>;
}

/** A broker URL without the user and password it may carry. */
export function brokerName(url: URL): string {
  return `${url.protocol}//${url.host}`;
}

export class BrokerRotation {
  private index = 0;
  /** Attempts in a row whose credentials were refused, by whichever broker. */
  private authRefusals = 0;

  constructor(readonly brokers: readonly Broker[]) {
    if (brokers.length === 0) throw new AgentError('MQTT_CONFIG_INVALID', 'mqtt.urls: expected at least one broker URL, got none');
  }

  get current(): Broker {
    return this.brokers[this.index] as Broker;
  }

  get currentIndex(): number {
    return this.index;
  }

  get preferred(): Broker {
    return this.brokers[0] as Broker;
  }

  /**
   * The current broker's attempt failed, or its connection was lost: the next broker is tried
   * next. Returns true when every broker in turn refused the credentials (the slow retry of
   * refused credentials applies then; one broker that refuses them is passed over like any failure).
   */
  failed(authRefused: boolean): boolean {
    this.authRefusals = authRefused ? this.authRefusals + 1 : 0;
    this.index = (this.index + 1) % this.brokers.length;
    return authRefused && this.authRefusals >= this.brokers.length;
  }

  /** A broker accepted the session. */
  accepted(): void {
    this.authRefusals = 0;
  }

  /** The preferred broker accepted a check: the next connection is to it. */
  backToPreferred(): void {
    this.index = 0;
  }
}

export interface ProbeResult {
  accepted: boolean;
  /** The CONNACK's refusal code, when it refused. */
  refusalCode?: number;
  error?: string;
}

/**
 * One connection to `url` that ends as soon as the broker answers the CONNECT: whether it
 * accepts. Used to check the preferred broker before leaving a working one for it. The caller's
 * `options` are those of a session's attempt; the check uses its own client id (`<client id>-probe`),
 * a clean session without a will or stored packets, so it neither takes over the agent's session
 * (a cluster would close the live connection) nor receives what the broker holds for the device.
 */
export function probeBroker(
  connect: (url: string, options: IClientOptions) => MqttClient,
  url: URL,
  options: IClientOptions,
  clock: Pick<Clock, 'sleep'>,
  signal: AbortSignal,
): Promise<ProbeResult> {
  const probe: IClientOptions = { ...options, clientId: `${String(options.clientId)}-probe`, clean: true };
  delete probe.will;
  delete probe.outgoingStore;
  delete probe.incomingStore;
  delete probe.messageIdProvider;
  if (probe.protocolVersion === 5) probe.properties = { sessionExpiryInterval: 0 };
  return new Promise<ProbeResult>((resolve) => {
    const timeout = new AbortController();
    let result: ProbeResult = { accepted: false, error: 'the connection closed before the broker answered' };
    let errored = false;
    let client: MqttClient;
    try {
      client = connect(url.href, probe);
    } catch (err) {
      resolve({ accepted: false, error: errorMessage(err) });
      return;
    }
    const finish = (): void => {
      timeout.abort();
      signal.removeEventListener('abort', finish);
      client.end(true);
    };
    signal.addEventListener('abort', finish, { once: true });
    client.on('error', (err) => {
      // The first error is the cause, unless a later one is the CONNACK's refusal.
      if (!errored) result = { accepted: false, error: err.message };
      errored = true;
      if (err instanceof ErrorWithReasonCode && err.message.startsWith('Connection refused')) result = { accepted: false, refusalCode: err.code, error: err.message };
    });
    client.on('connect', () => {
      result = { accepted: true };
      finish();
    });
    client.once('close', () => {
      finish();
      resolve(result);
    });
    // mqtt.js times the CONNACK out itself; this keeps a check that never closes from hanging on.
    clock.sleep(Number(options.connectTimeout ?? 30_000) + 1_000, timeout.signal).then(
      () => {
        result = { accepted: false, error: 'no answer to the check' };
        client.end(true);
      },
      () => undefined,
    );
  });
}

export interface ReturnToPreferred {
  /** How long to stay before each check (`mqtt.returnToPreferredSeconds`). */
  everyMs: number;
  preferred: Broker;
  /** The options of a session's attempt to the preferred broker with `version`, or why there are none. */
  options: (version: MqttVersion) => { options: IClientOptions } | { error: string };
  connect: (url: string, options: IClientOptions) => MqttClient;
  clock: Pick<Clock, 'sleep'>;
  logger: Logger;
  /** The preferred broker accepted a check: move back to it. */
  accepted: () => void;
}

/**
 * Connected to a broker other than the preferred one: every `everyMs` (the least time spent there,
 * so a flapping preferred broker costs at most one move per period), check whether the preferred
 * one accepts a connection, and say so once it does. The check is a connection of its own: the
 * session leaves a working broker only for one that answered. Ends when `signal` aborts (the
 * connection closed).
 */
export async function returnToPreferred(r: ReturnToPreferred, signal: AbortSignal): Promise<void> {
  while (!signal.aborted) {
    try {
      await r.clock.sleep(r.everyMs, signal);
    } catch {
      return;
    }
    const version = r.preferred.negotiator.version();
    const attempt = r.options(version);
    // No options (a TLS file it cannot read): no check this time; the file may be there by the next.
    const result: ProbeResult = 'error' in attempt ? { accepted: false, error: attempt.error } : await probeBroker(r.connect, r.preferred.url, attempt.options, r.clock, signal);
    if (signal.aborted) return;
    if (result.accepted) {
      r.accepted();
      return;
    }
    // A broker that does not speak this version says so to a check as to an attempt: the next check uses the other.
    const refusal = classifyRefusal(result.refusalCode, false);
    if (refusal === 'protocol') r.preferred.negotiator.refused(version, refusal, result.refusalCode);
    r.logger.debug({ url: r.preferred.name, error: result.error }, `mqtt: the preferred broker ${r.preferred.name} does not accept connections yet: ${String(result.error)}`);
  }
}
