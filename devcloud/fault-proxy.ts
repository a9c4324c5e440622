import * as net from 'node:net';

/**
 * A TCP proxy on 127.0.0.1 for fault injection between a client and a server (the MQTT session and
 * Mosquitto). It passes bytes through, and on command:
 * - `blackhole(direction)`: current connections stop forwarding (bytes are read and dropped) but
 *   stay open, and a close on one side is not passed on: a half-open connection, as after a NAT
 *   forgot it. New connections pass normally, unless `{ newConnections: true }`: then they are
 *   accepted and blackholed too (a peer that accepts and never answers).
 * - `delay(ms, direction)`: every chunk is forwarded `ms` later, in order.
 * - `reset()`: every current connection is reset (RST) on both sides.
 * - `cut()`: every current connection is closed on both sides.
 * - `refuse(true)`: new connections are closed as soon as they arrive (accepted first: a load
 *   balancer with no backend); `stopListening()`: refused by the kernel (nothing listens).
 *
 * `up` is client → server, `down` server → client. `onFrame` sees every MQTT control packet as the
 * client sees it: `up` when the client sent it, `down` when it reached the client (after any delay,
 * never when dropped).
 */

export type Direction = 'up' | 'down';
export type Directions = Direction | 'both';

export interface FrameEvent {
  direction: Direction;
  /** MQTT control packet type: 3 PUBLISH, 4 PUBACK, 12 PINGREQ, 13 PINGRESP... */
  type: number;
  /** The low four bits of the first byte (for PUBLISH: DUP, QoS, RETAIN). */
  flags: number;
  /** Which proxied connection, counting from 1. */
  connection: number;
}

export interface FaultProxyOptions {
  target: { host: string; port: number };
  /** Listen port; 0 or absent for a free one. */
  port?: number;
  onFrame?: (frame: FrameEvent) => void;
}

interface Pipe {
  id: number;
  client: net.Socket;
  server: net.Socket;
  blackholed: Set<Direction>;
  /** The next chunk may not leave before the previous one in the same direction. */
  lastDue: Record<Direction, number>;
  parsers: Record<Direction, FrameParser>;
}

const both = (d: Directions): Direction[] => (d === 'both' ? ['up', 'down'] : [d]);

export class FaultProxy {
  readonly host = '127.0.0.1';
  private readonly pipes = new Set<Pipe>();
  private readonly delays: Record<Direction, number> = { up: 0, down: 0 };
  private refusing = false;
  /** Directions blackholed on connections accepted from now on. */
  private readonly holdNew = new Set<Direction>();
  private count = 0;
  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private readonly opts: FaultProxyOptions,
  ) {}

  static async start(opts: FaultProxyOptions): Promise<FaultProxy> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
    });
    const proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port, opts);
    server.on('connection', (socket) => proxy.accept(socket));
    return proxy;
  }

  get url(): string {
    return `mqtt://${this.host}:${this.port}`;
  }

  /** Connections open now. */
  get connections(): number {
    return this.pipes.size;
  }

  /** Connections accepted so far. */
  get accepted(): number {
    return this.count;
  }

  /** Back to plain forwarding: no delay, no refusal, blackholes lifted from current connections. */
  pass(): void {
    this.delays.up = 0;
    this.delays.down = 0;
    this.refusing = false;
    this.holdNew.clear();
    for (const p of this.pipes) p.blackholed.clear();
  }

  blackhole(direction: Directions = 'both', opts: { newConnections?: boolean } = {}): void {
    for (const p of this.pipes) for (const d of both(direction)) p.blackholed.add(d);
    if (opts.newConnections) for (const d of both(direction)) this.holdNew.add(d);
  }

  delay(ms: number, direction: Directions = 'both'): void {
    for (const d of both(direction)) this.delays[d] = ms;
  }

  refuse(on: boolean): void {
    this.refusing = on;
  }

  /**
   * Closes the listening socket: connections are refused by the kernel (ECONNREFUSED, as when
   * nothing listens), where `refuse` accepts and closes (as a load balancer with no backend does).
   * Open connections are left as they are. `listenAgain` listens on the same port.
   */
  async stopListening(): Promise<void> {
    if (!this.server.listening) return;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      // close() waits for open connections; the listening socket itself is gone at once.
      setImmediate(resolve);
    });
  }

  async listenAgain(): Promise<void> {
    if (this.server.listening) return;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  reset(): void {
    for (const p of [...this.pipes]) {
      p.client.resetAndDestroy();
      p.server.resetAndDestroy();
      this.pipes.delete(p);
    }
  }

  cut(): void {
    for (const p of [...this.pipes]) {
      p.client.destroy();
      p.server.destroy();
      this.pipes.delete(p);
    }
  }

  async close(): Promise<void> {
    this.cut();
    if (!this.server.listening) return;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    client.on('error', () => undefined);
    if (this.refusing) {
      client.destroy();
      return;
    }
    const server = net.connect(this.opts.target);
    server.on('error', () => undefined);
    const pipe: Pipe = {
      id: ++this.count,
      client,
      server,
      blackholed: new Set(this.holdNew),
      lastDue: { up: 0, down: 0 },
      parsers: { up: new FrameParser(), down: new FrameParser() },
    };
    this.pipes.add(pipe);
    // Until the server side is connected, node buffers what the client sends in the socket.
    client.on('data', (chunk: Buffer) => this.forward(pipe, 'up', chunk));
    server.on('data', (chunk: Buffer) => this.forward(pipe, 'down', chunk));
    const onClose = (other: net.Socket) => (): void => {
      // A blackholed connection is half-open: the other side must not learn of the close.
      if (pipe.blackholed.size > 0) return;
      other.destroy();
      this.pipes.delete(pipe);
    };
    client.on('close', onClose(server));
    server.on('close', onClose(client));
  }

  private forward(pipe: Pipe, direction: Direction, chunk: Buffer): void {
    if (direction === 'up') this.report(pipe, 'up', chunk);
    if (pipe.blackholed.has(direction)) return;
    const to = direction === 'up' ? pipe.server : pipe.client;
    const deliver = (): void => {
      if (pipe.blackholed.has(direction) || to.destroyed) return;
      if (direction === 'down') this.report(pipe, 'down', chunk);
      to.write(chunk);
    };
    const delay = this.delays[direction];
    if (delay <= 0 && pipe.lastDue[direction] <= Date.now()) {
      deliver();
      return;
    }
    const due = Math.max(Date.now() + delay, pipe.lastDue[direction]);
    pipe.lastDue[direction] = due;
    setTimeout(deliver, due - Date.now());
  }

  private report(pipe: Pipe, direction: Direction, chunk: Buffer): void {
    if (!this.opts.onFrame) return;
    for (const f of pipe.parsers[direction].push(chunk)) this.opts.onFrame({ direction, type: f.type, flags: f.flags, connection: pipe.id });
  }
}

/** Splits a byte stream into MQTT control packets by their fixed headers. */
class FrameParser {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Array<{ type: number; flags: number }> {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Array<{ type: number; flags: number }> = [];
    for (;;) {
      if (this.buf.length < 2) break;
      let length = 0;
      let multiplier = 1;
      let i = 1;
      let complete = false;
      while (i < this.buf.length && i <= 4) {
        const byte = this.buf[i] as number;
        length += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        i++;
        if ((byte & 0x80) === 0) {
          complete = true;
          break;
        }
      }
      if (!complete || this.buf.length < i + length) break;
      const first = this.buf[0] as number;
      frames.push({ type: first >> 4, flags: first & 0x0f });
      this.buf = this.buf.subarray(i + length);
    }
    return frames;
  }
}
