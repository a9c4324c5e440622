import type { Clock } from './clock.js';

/**
 * A rate limit: `ratePerSecond` tokens a second, at most `burst` saved up. `take(n)` waits until n
 * tokens are there (a request larger than the burst waits for the whole of it, so it is not refused).
 * A rate of 0 or less means no limit.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly ratePerSecond: number,
    private readonly burst: number,
    private readonly clock: Pick<Clock, 'monotonic' | 'sleep'>,
  ) {
    this.tokens = burst;
    this.last = clock.monotonic();
  }

  get unlimited(): boolean {
    return !(this.ratePerSecond > 0);
  }

  async take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.unlimited || n <= 0) return;
    this.refill();
    this.tokens -= n;
    if (this.tokens >= 0) return;
    // In debt: wait until the debt is paid back at the rate.
    await this.clock.sleep((-this.tokens / this.ratePerSecond) * 1000, signal);
  }

  /**
   * Takes `n` tokens if they are there now, without waiting (a limit that drops instead of delaying).
   * A request larger than the burst passes when the bucket is full, leaving it in debt.
   */
  tryTake(n: number): boolean {
    if (this.unlimited || n <= 0) return true;
    this.refill();
    if (this.tokens < Math.min(n, this.burst)) return false;
    this.tokens -= n;
    return true;
  }

  private refill(): void {
    const now = this.clock.monotonic();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.ratePerSecond);
    this.last = now;
  }
}
