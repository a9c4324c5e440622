import { AgentError } from '../util/errors.js';

// How a request to the cloud failed, classified as the retry policy and the connection monitor need
// it. It sits here, below the HTTP client that throws it, so the loops' resilience does not depend on
// the client (or on cloud/).

/**
 * Why a cloud call failed, in the terms the retry logic needs:
 * - `network`: no connection (refused, reset, DNS) — retry with backoff;
 * - `timeout`: no complete answer within `requestTimeoutMs` — retry with backoff;
 * - `http`: an answer with a failing status — retry for 5xx, 408, 429; park for other 4xx;
 * - `clock`: the device clock is not synced and the server's certificate is not yet valid by it
 *   (CLOUD_CLOCK) — not a network problem; retried, and at once when the clock gets synced.
 */
export type CloudErrorKind = 'network' | 'timeout' | 'http' | 'clock';

export class CloudError extends AgentError {
  constructor(
    readonly kind: CloudErrorKind,
    message: string,
    readonly status?: number,
    /** Lower bound from a `Retry-After` header, in ms. */
    readonly retryAfterMs?: number,
    options?: { cause?: unknown },
  ) {
    super(kind === 'http' ? `CLOUD_HTTP_${status ?? 0}` : `CLOUD_${kind.toUpperCase()}`, message, options);
    this.name = 'CloudError';
  }

  /** Whether trying the same request again later can succeed. */
  get retryable(): boolean {
    if (this.kind !== 'http') return true;
    const s = this.status ?? 0;
    return s >= 500 || s === 408 || s === 429;
  }
}

export type CloudAnswerRefusedCode = 'CLOUD_ANSWER_TOO_LARGE' | 'CLOUD_ANSWER_TOO_DEEP';

/**
 * The cloud answered, but with a body over one of the agent's limits: nothing of it is used. An
 * `http` CloudError (the cloud is reachable; retrying at once will not help), with its own code and
 * the answer's headers (the ETag lets a poller remember what it refused).
 */
export class CloudAnswerRefused extends CloudError {
  declare readonly code: CloudAnswerRefusedCode;
  constructor(
    code: CloudAnswerRefusedCode,
    message: string,
    status: number,
    readonly headers: Record<string, string | string[] | undefined>,
    readonly setting: string,
    readonly limit: number,
  ) {
    super('http', message, status);
    (this as { code: string }).code = code;
    this.name = 'CloudAnswerRefused';
  }

  override get retryable(): boolean {
    return false;
  }
}
