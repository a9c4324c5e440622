import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { MqttFrameScanner } from '../util/mqtt-frames.js';

/**
 * When reading may go on (the LoopShare): while it is paused, what the client sends waits in the
 * socket (TCP holds the client back), and each read aedes makes is timed as an ingest turn.
 */
export interface ReadGate {
  readonly paused: boolean;
  /** Runs `fn` once reading may go on (at once when it may now). */
  whenReady(fn: () => void): void;
  /** Starts timing a turn; the function returned ends it. */
  begin(): () => void;
}

/**
 * A client's socket as aedes sees it: every byte passes the frame scanner first, and a packet over
 * the limit ends the connection before aedes holds it. Backpressure is kept: the socket is paused
 * while aedes has not read what it was given, and while the gate is paused.
 */
export class BoundedSocket extends Duplex {
  private readonly scanner: MqttFrameScanner;
  /** Chunks that arrived as the gate paused, handed to aedes (in order) once it opens. */
  private held: Buffer[] = [];
  private endHeld = false;
  private waiting = false;
  /** aedes asked for data while the gate was paused: it waits for a 'readable'. */
  private readRefused = false;
  /** Written by aedes this turn, not yet passed to the socket (see `send`). */
  private outgoing: Buffer[] = [];
  /** aedes's write callbacks held while the socket's buffer is full. */
  private outgoingDone: ((err?: Error | null) => void)[] = [];
  private flushing: NodeJS.Immediate | undefined;

  constructor(
    private readonly socket: Socket,
    maxPacketBytes: number,
    onOversize: (size: number) => void,
    private readonly gate?: ReadGate,
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
      if (this.gate?.paused || this.held.length > 0) {
        this.held.push(chunk);
        socket.pause();
        this.waitForGate();
        return;
      }
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => {
      if (this.held.length > 0) this.endHeld = true;
      else this.push(null);
    });
    socket.on('close', () => this.destroy());
    socket.on('error', (err) => this.destroy(err));
  }

  /**
   * aedes reads a batch and parses it at once, synchronously: from here to the next microtask is its
   * turn. While the gate is paused it reads nothing, not even what is already buffered here: it is
   * told 'readable' again once the gate opens (read(0), Node's own probe, is let through).
   */
  override read(size?: number): Buffer | null {
    if (this.gate?.paused && size !== 0) {
      this.readRefused = true;
      this.waitForGate();
      return null;
    }
    const chunk = super.read(size) as Buffer | null;
    if (chunk !== null && this.gate) queueMicrotask(this.gate.begin());
    return chunk;
  }

  override _read(): void {
    if (this.gate?.paused || this.held.length > 0) return this.waitForGate();
    this.socket.resume();
  }

  private waitForGate(): void {
    if (this.waiting || !this.gate) return;
    this.waiting = true;
    this.gate.whenReady(() => {
      this.waiting = false;
      if (this.destroyed) return;
      const held = this.held;
      this.held = [];
      let more = true;
      for (const chunk of held) more = this.push(chunk);
      if (this.endHeld) this.push(null);
      else if (more) this.socket.resume();
      if (this.readRefused) {
        this.readRefused = false;
        this.emit('readable');
      }
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.send(chunk, done);
  }

  /** aedes corks while it writes a packet in parts: they go out as one write (one segment, one syscall). */
  override _writev(chunks: { chunk: Buffer }[], done: (err?: Error | null) => void): void {
    this.send(chunks.length === 1 ? (chunks[0] as { chunk: Buffer }).chunk : Buffer.concat(chunks.map((c) => c.chunk)), done);
  }

  /**
   * What aedes writes in one turn of the loop goes out as one write at its end: the PUBACKs of one
   * commit (settled together) cost one syscall, not one each (a profile of a flood put 21 % of the
   * agent's CPU in writing PUBACKs one by one). Backpressure is kept: while the socket's buffer is
   * full, aedes's write completes only once the batch holding it is written.
   */
  private send(chunk: Buffer, done: (err?: Error | null) => void): void {
    if (this.socket.destroyed) {
      done();
      return;
    }
    this.outgoing.push(chunk);
    if (this.socket.writableNeedDrain) this.outgoingDone.push(done);
    else done();
    this.flushing ??= setImmediate(() => this.flush());
  }

  private flush(): void {
    if (this.flushing) clearImmediate(this.flushing);
    this.flushing = undefined;
    const chunks = this.outgoing;
    const dones = this.outgoingDone;
    this.outgoing = [];
    this.outgoingDone = [];
    if (chunks.length === 0) return;
    if (this.socket.destroyed) return dones.forEach((d) => d());
    this.socket.write(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks), (err) => dones.forEach((d) => d(err ?? null)));
  }

  override _final(done: (err?: Error | null) => void): void {
    this.flush();
    this.socket.end(() => done());
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    // What aedes wrote before closing (a CONNACK refusing the client, say) still goes out first.
    this.flush();
    this.socket.destroy();
    done(err);
  }
}
