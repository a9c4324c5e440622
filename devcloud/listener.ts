import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * Owns the listening socket of an HTTP server so it can stop listening and start again on the
 * same port: the "refuse connections" fault. Fastify cannot listen again once closed, so the
 * devcloud drives `app.server` through this instead of `app.listen`.
 */
export class Listener {
  private boundPort = 0;
  private closed = false;

  constructor(
    private readonly server: Server,
    private readonly host: string,
  ) {}

  get port(): number {
    return this.boundPort;
  }

  get listening(): boolean {
    return this.server.listening;
  }

  /** Listens on `port` (0 picks a free one); afterwards `port` is the one bound. */
  async listen(port: number): Promise<number> {
    await listenOnce(this.server, port, this.host);
    this.boundPort = (this.server.address() as AddressInfo).port;
    return this.boundPort;
  }

  /** Stops accepting connections and drops the open ones, so clients see ECONNREFUSED. */
  async refuse(): Promise<void> {
    if (!this.server.listening) return;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  /**
   * Listens again on the port bound before. The port was free a moment ago, but something else
   * may take it; a few short retries cover the kernel's own cleanup.
   */
  async restore(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      if (this.closed || this.server.listening) return;
      try {
        await listenOnce(this.server, this.boundPort, this.host);
        // close() may have run while the listen was pending.
        if (this.closed) await this.refuse();
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw err;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.refuse();
  }
}

function listenOnce(server: Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      server.off('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(port, host);
  });
}
