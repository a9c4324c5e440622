/** Network failures in words; callers follow them with the code so logs stay searchable. */
export const NETWORK_REASONS: Readonly<Record<string, string>> = Object.freeze({
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'name lookup failed',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ETIMEDOUT: 'connect timed out',
  EPIPE: 'connection broken',
  UND_ERR_SOCKET: 'connection closed by the other side',
  UND_ERR_CLOSED: 'connection closed',
  UND_ERR_CONNECT_TIMEOUT: 'connect timed out',
});

/** TLS failures that a wall clock behind the real time explains (a certificate "not yet valid" by it). */
export const CLOCK_CERT_CODES: ReadonlySet<string> = new Set(['CERT_NOT_YET_VALID']);

/** The error's code, or its cause's (undici wraps the socket's error). */
export function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null | undefined;
  const code = e?.code ?? e?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * A certificate not yet valid while the wall clock is not synced is the clock's fault, not the
 * network's: what to tell people then (undefined when it is not that case).
 */
export function clockCertProblem(err: unknown, clockSynced: boolean, wallNow: number): string | undefined {
  const code = errorCode(err);
  if (clockSynced || code === undefined || !CLOCK_CERT_CODES.has(code)) return undefined;
  const reads = Number.isFinite(wallNow) ? new Date(wallNow).toISOString() : String(wallNow);
  return `the device clock is not synced (it reads ${reads}), and by it the server's certificate is not yet valid (${code}); retrying once the clock is synced`;
}
