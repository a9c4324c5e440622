import { ErrorWithReasonCode, ReasonCodes } from 'mqtt';
import { errorMessage } from '../util/errors.js';
import { clockCertProblem, NETWORK_REASONS } from '../util/network-errors.js';

/**
 * What a broker's answer means for the agent: PUBACK reason codes (MQTT 5 §3.4.2.1) and connection
 * failures in words people can act on.
 */

/**
 * PUBACK reason codes >= 0x80 that reject a message for a reason that may pass: the same message
 * sent later can be accepted. Every other failure code is permanent (the message itself is refused:
 * resending it gives the same answer), so the outbox parks it, visible and counted, instead of
 * retrying it in a loop that blocks the messages behind it.
 *
 * | code | name | outcome |
 * |---|---|---|
 * | 0x00, 0x10 | success, no matching subscribers | ok |
 * | 0x80 | unspecified error | permanent |
 * | 0x83 | implementation specific error (a broker rule or plugin refused it) | permanent |
 * | 0x87 | not authorized | permanent |
 * | 0x90 | topic name invalid | permanent |
 * | 0x91 | packet identifier in use | transient (a session-state clash, not the message) |
 * | 0x97 | quota exceeded | transient (the quota recovers) |
 * | 0x99 | payload format invalid | permanent |
 * | 0x89, 0x96 | server busy, message rate too high (not PUBACK codes in the spec; seen in the wild) | transient |
 * | any other >= 0x80 | | permanent |
 *
 * Permanent is the safe default for an unknown refusal: a parked message is kept and shown, a
 * message retried forever is a stuck queue.
 */
export const TRANSIENT_PUBACK_CODES: ReadonlySet<number> = new Set([0x89, 0x91, 0x96, 0x97]);

export function isPubackFailure(reasonCode: number | undefined): boolean {
  return reasonCode !== undefined && reasonCode >= 0x80;
}

export function isPermanentPubackFailure(reasonCode: number): boolean {
  return isPubackFailure(reasonCode) && !TRANSIENT_PUBACK_CODES.has(reasonCode);
}

export function reasonName(code: number): string {
  return (ReasonCodes as Record<number, string>)[code] ?? 'unknown reason';
}

export function hex(code: number): string {
  return `0x${code.toString(16).padStart(2, '0')}`;
}

const UNTRUSTED_SERVER = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
]);

/** TLS alerts a broker sends when it does not accept the client certificate. */
const CLIENT_CERT_REFUSED = /ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_REQUIRED|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_REVOKED|CERTIFICATE_EXPIRED|HANDSHAKE_FAILURE|ACCESS_DENIED)/;

export interface DescribeContext {
  host: string;
  caFile?: string | undefined;
  certFile?: string | undefined;
  connectTimeoutMs: number;
  /** Whether the wall clock is synced, and its reading: a certificate not yet valid by an unsynced clock is the clock's fault. */
  clock?: { synced: boolean; now: number };
}

/** A connection error in words, followed by its code so logs stay searchable. */
export function describeConnectionError(err: unknown, ctx: DescribeContext): string {
  // OpenSSL errors carry a short `reason` ("tlsv1 alert unknown ca") besides a long message with
  // its internal file and line: people need the former.
  const reason = (err as { reason?: unknown })?.reason;
  const message = typeof reason === 'string' && reason !== '' ? reason : errorMessage(err).trim();
  if (err instanceof ErrorWithReasonCode) {
    // A CONNACK refusal (MQTT 5 reason codes, or the 3.1.1 return codes 1-5).
    if (message.startsWith('Connection refused')) {
      return `the broker refused the connection: ${reasonName(err.code)} (${err.code >= 0x80 ? hex(err.code) : `return code ${err.code}`})`;
    }
    return `${message} (${hex(err.code)})`;
  }
  const code = typeof (err as { code?: unknown })?.code === 'string' ? ((err as { code: string }).code) : undefined;
  if (code && UNTRUSTED_SERVER.has(code)) {
    const trust = ctx.caFile ? `the CA in mqtt.caFile (${ctx.caFile}) or the system roots` : 'the system roots (set mqtt.caFile to the CA that signed it)';
    return `TLS: the certificate of ${ctx.host} is not signed by ${trust}: ${message} (${code})`;
  }
  const clock = ctx.clock && clockCertProblem(err, ctx.clock.synced, ctx.clock.now);
  if (clock) return `TLS to ${ctx.host}: ${clock}`;
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    return `TLS: the certificate of ${ctx.host} is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not yet valid'} (is the device clock right?): ${message} (${code})`;
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return `TLS: the certificate presented does not name ${ctx.host}: ${message} (${code})`;
  }
  if (code && CLIENT_CERT_REFUSED.test(code)) {
    const cert = ctx.certFile ? `the client certificate in mqtt.certFile (${ctx.certFile})` : 'the connection: it may require a client certificate (mqtt.certFile, mqtt.keyFile)';
    return `TLS: the broker refused ${cert}: ${message} (${code})`;
  }
  if (code && NETWORK_REASONS[code]) return `${NETWORK_REASONS[code]} (${code})`;
  if (message === 'connack timeout') return `no CONNACK from the broker within ${ctx.connectTimeoutMs} ms (mqtt.connectTimeoutMs)`;
  if (message === 'Keepalive timeout') return 'no answer to the keep-alive ping (mqtt.js keep-alive timeout)';
  return code ? `${message} (${code})` : message;
}
