import { seedBackoffDelay } from '../src/resilience/backoff.js';
import type { RetryBackoff } from '../src/resilience/retry-policy.js';
import type { Random } from '../src/util/random.js';

/** The seed's calculateBackoff caps at 15 minutes of its own, whatever the agent's settings say. */
export const SEED_MAX_BACKOFF_MS = 15 * 60 * 1000;

/** The seed's calculateBackoff as its poll loop used it: the count grows per failure, a success clears it. */
export class SeedBackoff implements RetryBackoff {
  private failures = 0;

  constructor(
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly random: Random,
  ) {}

  failure(): number {
    this.failures++;
    return seedBackoffDelay(this.baseMs, this.failures, this.maxMs, this.random);
  }

  success(): void {
    this.failures = 0;
  }

  reset(): void {
    this.failures = 0;
  }

  holdRemainingMs(): number {
    return 0;
  }

  /** The seed's formula has no such draw: its own next delay, without counting a failure. */
  respread(): number {
    return seedBackoffDelay(this.baseMs, Math.max(1, this.failures), this.maxMs, this.random);
  }
}
