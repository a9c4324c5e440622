import type { IncomingMessage } from 'node:http';

/** How much of a refused body the API reads and throws away before it answers, and for how long. */
export interface DrainBounds {
  maxBytes: number;
  maxMs: number;
}

/**
 * A body over its limit is refused as soon as its length is known, often from the header alone,
 * while the client is still sending. Answering then and closing makes the client's next write
 * fail (EPIPE, a reset) and most clients report that instead of the 413: the refusal is lost.
 * Like a web server's lingering close, the rest of the body is read and discarded (never kept)
 * first, within bounds, so that a client that sends what it announced sees the answer; one that
 * sends more or stalls is answered and closed when a bound is hit.
 */
export function drainBody(req: IncomingMessage, bounds: DrainBounds): Promise<'drained' | 'cut'> {
  if (req.complete || req.destroyed) return Promise.resolve('drained');
  return new Promise((resolve) => {
    let read = 0;
    const finish = (how: 'drained' | 'cut') => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onEnd);
      req.off('error', onEnd);
      resolve(how);
    };
    const onData = (chunk: Buffer) => {
      read += chunk.length;
      if (read > bounds.maxBytes) finish('cut');
    };
    const onEnd = () => finish(req.complete ? 'drained' : 'cut');
    const timer = setTimeout(() => finish('cut'), bounds.maxMs);
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('close', onEnd);
    req.once('error', onEnd);
    req.resume();
  });
}
