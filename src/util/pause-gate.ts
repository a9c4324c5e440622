/**
 * A gate a loop passes before each unit of work: closed by `pause()` (graceful degradation: the
 * cloud has been away beyond the threshold), open again by `resume()`. Work under way is not
 * interrupted; the loop only waits at the gate before starting the next.
 */
export class PauseGate {
  private closed = false;
  private readonly waiters = new Set<() => void>();

  get paused(): boolean {
    return this.closed;
  }

  pause(): void {
    this.closed = true;
  }

  resume(): void {
    this.closed = false;
    for (const open of [...this.waiters]) open();
  }

  /** Resolves at once when open, else when resumed or when `signal` aborts. */
  async whenOpen(signal: AbortSignal): Promise<void> {
    if (!this.closed || signal.aborted) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.waiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}
