import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A TCP port bound at the very start, before the agent's modules load and its database opens, so a
 * local app that connects during a start is accepted at once instead of refused (and left to its own
 * retry backoff). Connections are held paused, nothing read and nothing answered, until `adopt` hands
 * them, and every later one, to the real server (the local API, the local broker). A client thus
 * waits for the first answer; it never gets one from a part that is not built yet.
 */
export class HeldListener {
  private handler: ((socket: Socket) => void) | undefined;
  private readonly held: Socket[] = [];
  private readonly sockets = new Set<Socket>();
  private closed = false;

  private constructor(
    private readonly server: Server,
    /** The host and port asked for (port 0: any free one). */
    readonly host: string,
    readonly requestedPort: number,
  ) {
    server.on('connection', (socket) => this.accept(socket));
  }

  /** Binds `host:port`; undefined when it cannot (the port taken, a bad host): the part then binds, and reports it, itself. */
  static async bind(host: string, port: number): Promise<HeldListener | undefined> {
    const server = createServer({ pauseOnConnect: true });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch {
      server.close();
      return undefined;
    }
    return new HeldListener(server, host, port);
  }

  /** Still listening and not handed over yet. */
  get available(): boolean {
    return !this.closed && this.handler === undefined;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** The listener's own server (limits such as `maxConnections` are set on it). */
  get netServer(): Server {
    return this.server;
  }

  /** Connections held so far go to `handler` in arrival order, then every new one. Once. */
  adopt(handler: (socket: Socket) => void): void {
    if (!this.available) throw new Error(`the listener on ${this.host}:${this.requestedPort} is ${this.closed ? 'closed' : 'already adopted'}`);
    this.handler = handler;
    for (const socket of this.held.splice(0)) this.handOver(socket);
  }

  /** Stops listening and ends every connection it accepted. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    this.held.length = 0;
    await done;
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    // A client that goes away while held must not take the process with an unhandled 'error'.
    socket.on('error', () => undefined);
    if (this.handler) this.handOver(socket);
    else this.held.push(socket);
  }

  private handOver(socket: Socket): void {
    if (socket.destroyed) return;
    this.handler!(socket);
    socket.resume();
  }
}
