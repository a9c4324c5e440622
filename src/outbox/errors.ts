import { AgentError } from '../util/errors.js';

export type OutboxErrorCode =
  | 'OUTBOX_FULL'
  | 'OUTBOX_DISK_LOW'
  | 'OUTBOX_DISK_FULL'
  | 'OUTBOX_TOO_LARGE'
  | 'OUTBOX_INVALID'
  | 'OUTBOX_CLOSED'
  | 'OUTBOX_OFFLINE'
  | 'OUTBOX_WRITE_FAILED';

/**
 * A refused or failed enqueue (or ack). `OUTBOX_FULL`: a count or bytes limit is reached and nothing
 * queued may give way (see limits.ts); `OUTBOX_DISK_LOW`: free disk is below the watermark and
 * nothing may give way; `OUTBOX_DISK_FULL`: the write hit SQLITE_FULL / ENOSPC and was rolled back (nothing
 * queued before was lost); `OUTBOX_OFFLINE`: the cloud is unreachable and queueing is off
 * (`settings.offline.enableQueue: false`), counted as an `offline` drop. Local ingestion maps FULL and
 * the disk codes to 507, CLOSED and OFFLINE to 503.
 */
export class OutboxError extends AgentError {
  declare readonly code: OutboxErrorCode;
  /** What the limit was and where (setting, data dir, free bytes): sent with a 507. */
  readonly details: Record<string, string | number> | undefined;
  constructor(code: OutboxErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, string | number> }) {
    super(code, message, options);
    this.name = 'OutboxError';
    this.details = options?.details;
  }
}

export function isOutboxError(err: unknown, code?: OutboxErrorCode): err is OutboxError {
  return err instanceof OutboxError && (code === undefined || err.code === code);
}
