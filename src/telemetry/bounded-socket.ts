import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { MqttFrameScanner } from '../util/mqtt-frames.js';

/**
 * A client's socket as aedes sees it: every byte passes the frame scanner first, and a packet over
 * the limit ends the connection before aedes holds it. Backpressure is kept: the socket is paused
 * while aedes has not read what it was given.
 */
export class BoundedSocket extends Duplex {
  private readonly scanner: MqttFrameScanner;

  constructor(
    private readonly socket: Socket,
    maxPacketBytes: number,
    onOversize: (size: number) => void,
  ) {
    super({ allowHalfOpen: false });
    this.scanner = new MqttFrameScanner(maxPacketBytes);
    socket.on('data', (chunk: Buffer) => {
      const over = this.scanner.feed(chunk);
      if (over !== undefined) {
        onOversize(over);
        socket.destroy();
        return;
      }
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('close', () => this.destroy());
    socket.on('error', (err) => this.destroy(err));
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.send(chunk, done);
  }

  /** aedes corks while it writes a packet in parts: they go out as one write (one segment, one syscall). */
  override _writev(chunks: { chunk: Buffer }[], done: (err?: Error | null) => void): void {
    this.send(chunks.length === 1 ? (chunks[0] as { chunk: Buffer }).chunk : Buffer.concat(chunks.map((c) => c.chunk)), done);
  }

  private send(chunk: Buffer, done: (err?: Error | null) => void): void {
    if (this.socket.destroyed) {
      done();
      return;
    }
    this.socket.write(chunk, (err) => done(err ?? null));
  }

  override _final(done: (err?: Error | null) => void): void {
    this.socket.end(() => done());
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.socket.destroy();
    done(err);
  }
}
