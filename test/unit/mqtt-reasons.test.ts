import { ErrorWithReasonCode } from 'mqtt';
import { describe, expect, it } from 'vitest';
import { describeConnectionError, hex, isPermanentPubackFailure, isPubackFailure, reasonName, type DescribeContext } from '../../src/mqtt/reasons.js';

/** What an operator reads in the log and in `lastError` when the broker refuses or the connection fails. */

const ctx: DescribeContext = { host: 'broker.example.com', connectTimeoutMs: 30_000 };

/** An error as Node's net and tls modules raise them: a message and a string code. */
function sysError(message: string, code: string, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(message), { code }, extra);
}

describe('reason codes', () => {
  it('names a reason code as MQTT does, and an unknown one as such', () => {
    expect(reasonName(0x87)).toBe('Not authorized');
    expect(reasonName(0x80)).toBe('Unspecified error');
    expect(reasonName(0x42)).toBe('unknown reason');
  });

  it('writes a code as two hex digits at least', () => {
    expect(hex(4)).toBe('0x04');
    expect(hex(0x97)).toBe('0x97');
    expect(hex(0x100)).toBe('0x100');
  });

  it('takes codes from 0x80 as refusals, and only the ones that pass with time as transient', () => {
    expect([undefined, 0x00, 0x10, 0x7f].map(isPubackFailure)).toEqual([false, false, false, false]);
    expect(isPubackFailure(0x80)).toBe(true);
    expect([0x80, 0x83, 0x87, 0x90, 0x99, 0x9f].map(isPermanentPubackFailure)).toEqual([true, true, true, true, true, true]);
    expect([0x89, 0x91, 0x96, 0x97].map(isPermanentPubackFailure)).toEqual([false, false, false, false]);
    expect(isPermanentPubackFailure(0x10)).toBe(false);
  });
});

describe('describeConnectionError: the broker refuses the CONNECT', () => {
  it('names an MQTT 5 refusal and its hex code', () => {
    const err = new ErrorWithReasonCode('Connection refused: Not authorized', 0x87);
    expect(describeConnectionError(err, ctx)).toBe('the broker refused the connection: Not authorized (0x87)');
  });

  it('shows 0x80 itself in hex: it is the first MQTT 5 code', () => {
    const err = new ErrorWithReasonCode('Connection refused: Unspecified error', 0x80);
    expect(describeConnectionError(err, ctx)).toBe('the broker refused the connection: Unspecified error (0x80)');
  });

  it('names a 3.1.1 refusal by its return code', () => {
    const err = new ErrorWithReasonCode('Connection refused: Not authorized', 5);
    expect(describeConnectionError(err, ctx)).toBe('the broker refused the connection: Not authorized (return code 5)');
  });

  it('keeps the text of another error with a reason code, followed by the code', () => {
    const err = new ErrorWithReasonCode('Disconnected by the broker: Connection refused', 0x8e);
    expect(describeConnectionError(err, ctx)).toBe('Disconnected by the broker: Connection refused (0x8e)');
  });
});

describe('describeConnectionError: TLS', () => {
  const untrusted = [
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    'SELF_SIGNED_CERT_IN_CHAIN',
    'DEPTH_ZERO_SELF_SIGNED_CERT',
    'UNABLE_TO_GET_ISSUER_CERT',
    'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
    'CERT_SIGNATURE_FAILURE',
    'CERT_UNTRUSTED',
  ];

  it.each(untrusted)('says a server certificate failing with %s is not signed by a CA the agent trusts', (code) => {
    const err = sysError('the certificate chain failed', code);
    expect(describeConnectionError(err, ctx)).toBe(
      `TLS: the certificate of broker.example.com is not signed by the system roots (set mqtt.caFile to the CA that signed it): the certificate chain failed (${code})`,
    );
  });

  it('names the configured CA file when one is set', () => {
    const err = sysError('self-signed certificate in certificate chain', 'SELF_SIGNED_CERT_IN_CHAIN');
    expect(describeConnectionError(err, { ...ctx, caFile: '/etc/iotistic/ca.pem' })).toBe(
      'TLS: the certificate of broker.example.com is not signed by the CA in mqtt.caFile (/etc/iotistic/ca.pem) or the system roots: self-signed certificate in certificate chain (SELF_SIGNED_CERT_IN_CHAIN)',
    );
  });

  it('points at the device clock for an expired certificate and for one not yet valid', () => {
    expect(describeConnectionError(sysError('certificate has expired', 'CERT_HAS_EXPIRED'), ctx)).toBe(
      'TLS: the certificate of broker.example.com is expired (is the device clock right?): certificate has expired (CERT_HAS_EXPIRED)',
    );
    expect(describeConnectionError(sysError('certificate is not yet valid', 'CERT_NOT_YET_VALID'), ctx)).toBe(
      'TLS: the certificate of broker.example.com is not yet valid (is the device clock right?): certificate is not yet valid (CERT_NOT_YET_VALID)',
    );
  });

  it('says a certificate for another name does not name the broker', () => {
    const err = sysError("Hostname/IP does not match certificate's altnames", 'ERR_TLS_CERT_ALTNAME_INVALID');
    expect(describeConnectionError(err, ctx)).toBe(
      "TLS: the certificate presented does not name broker.example.com: Hostname/IP does not match certificate's altnames (ERR_TLS_CERT_ALTNAME_INVALID)",
    );
  });

  it('reads the short OpenSSL reason of a refused client certificate, and names the certificate file', () => {
    const err = sysError('C0:3A:00:00:error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca:../deps/openssl/ssl/record/rec_layer_s3.c:1605:\n', 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', {
      reason: 'tlsv1 alert unknown ca',
    });
    expect(describeConnectionError(err, { ...ctx, certFile: '/etc/iotistic/device.crt' })).toBe(
      'TLS: the broker refused the client certificate in mqtt.certFile (/etc/iotistic/device.crt): tlsv1 alert unknown ca (ERR_SSL_TLSV1_ALERT_UNKNOWN_CA)',
    );
  });

  it('suggests a client certificate when the broker refuses a connection that has none', () => {
    const err = sysError('tlsv13 alert certificate required', 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
    expect(describeConnectionError(err, ctx)).toBe(
      'TLS: the broker refused the connection: it may require a client certificate (mqtt.certFile, mqtt.keyFile): tlsv13 alert certificate required (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED)',
    );
  });
});

describe('describeConnectionError: the network and timeouts', () => {
  it('says what a network error code means, followed by the code', () => {
    expect(describeConnectionError(sysError('connect ECONNREFUSED 10.0.0.5:8883', 'ECONNREFUSED'), ctx)).toBe('connection refused (ECONNREFUSED)');
    expect(describeConnectionError(sysError('getaddrinfo ENOTFOUND broker.example.com', 'ENOTFOUND'), ctx)).toBe('host not found (ENOTFOUND)');
    expect(describeConnectionError(sysError('connect ETIMEDOUT 10.0.0.5:8883', 'ETIMEDOUT'), ctx)).toBe('connect timed out (ETIMEDOUT)');
  });

  it('names the setting behind a CONNACK timeout', () => {
    expect(describeConnectionError(new Error('connack timeout'), { ...ctx, connectTimeoutMs: 12_000 })).toBe('no CONNACK from the broker within 12000 ms (mqtt.connectTimeoutMs)');
  });

  it('says a keep-alive timeout is an unanswered ping', () => {
    expect(describeConnectionError(new Error('Keepalive timeout'), ctx)).toBe('no answer to the keep-alive ping (mqtt.js keep-alive timeout)');
  });

  it('keeps the message of an error it has no words for, with its code when it has one', () => {
    expect(describeConnectionError(sysError('write EPROTO wrong version number', 'EPROTO'), ctx)).toBe('write EPROTO wrong version number (EPROTO)');
    expect(describeConnectionError(new Error('client disconnecting'), ctx)).toBe('client disconnecting');
  });

  it('ignores a code that is not a string', () => {
    expect(describeConnectionError(Object.assign(new Error('stream ended'), { code: 5 }), ctx)).toBe('stream ended');
  });

  it('trims the message, and falls back to it when the OpenSSL reason is empty', () => {
    expect(describeConnectionError(Object.assign(new Error('  socket hang up\n'), { reason: '' }), ctx)).toBe('socket hang up');
  });

  it('describes a thrown value that is not an error', () => {
    expect(describeConnectionError(undefined, ctx)).toBe('undefined');
    expect(describeConnectionError(null, ctx)).toBe('null');
    expect(describeConnectionError('refused by proxy', ctx)).toBe('refused by proxy');
  });
});
