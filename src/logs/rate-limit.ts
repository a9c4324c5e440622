import type { Clock } from '../util/clock.js';
import { TokenBucket } from '../util/token-bucket.js';
import type { LogDropReason } from './types.js';

export interface LogRateLimits {
  /** Lines a second a service may send on average (0: no limit). */
  linesPerSecond: number;
  /** Bytes of line text a second (0: no limit). */
  bytesPerSecond: number;
  /** How many seconds of either rate may come at once (a burst, e.g. a stack trace). */
  burstSeconds: number;
}

/**
 * One service's rate limits and the count of what they dropped. Lines over a limit are not kept;
 * `pendingDrops` holds how many were dropped for each reason since the last marker, for the marker
 * line that takes their place (ServiceLog).
 */
export class LogRateLimiter {
  private readonly lines: TokenBucket;
  private readonly bytes: TokenBucket;

  constructor(
    readonly limits: LogRateLimits,
    clock: Pick<Clock, 'monotonic' | 'sleep'>,
  ) {
    const burst = (rate: number): number => Math.max(1, rate * limits.burstSeconds);
    this.lines = new TokenBucket(limits.linesPerSecond, burst(limits.linesPerSecond), clock);
    this.bytes = new TokenBucket(limits.bytesPerSecond, burst(limits.bytesPerSecond), clock);
  }

  /** Whether a line of `bytes` may pass now; the reason when not. */
  admit(bytes: number): LogDropReason | undefined {
    if (!this.lines.tryTake(1)) return 'lines-rate';
    if (!this.bytes.tryTake(bytes)) return 'bytes-rate';
    return undefined;
  }
}

/** Marker text: what a marker line says, in words, for a person reading the log. */
export function markerText(count: number, reason: LogDropReason, limits: LogRateLimits): string {
  const what = count === 1 ? '1 line dropped' : `${count} lines dropped`;
  switch (reason) {
    case 'lines-rate':
      return `${what} (rate limit: ${limits.linesPerSecond} lines/s)`;
    case 'bytes-rate':
      return `${what} (rate limit: ${limits.bytesPerSecond} bytes/s)`;
    case 'backlog':
      return `${what} (the agent could not keep up: too many lines waiting to be stored)`;
    case 'outbox':
      return `${what} (the outbox refused them: full or low on disk)`;
  }
}
