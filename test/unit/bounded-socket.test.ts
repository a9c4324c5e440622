import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BoundedSocket, type ReadGate } from '../../src/telemetry/bounded-socket.js';

// A real loopback connection: the server side is wrapped, the client side reads what it sends.
const open: Array<Socket | Server> = [];
afterEach(() => {
  for (const x of open.splice(0)) {
    if ('destroy' in x) x.destroy();
    else x.close();
  }
});

async function pair(maxPacketBytes = 1024, onOversize: (n: number) => void = () => {}, gate?: ReadGate): Promise<{ bounded: BoundedSocket; raw: Socket; client: Socket; writes: Buffer[] }> {
  const server = createServer();
  open.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect(port, '127.0.0.1');
  open.push(client);
  const [raw] = await accepted;
  open.push(raw);
  // What reaches the kernel, write by write.
  const writes: Buffer[] = [];
  const write = raw.write.bind(raw) as (chunk: Buffer, cb?: (err?: Error | null) => void) => boolean;
  raw.write = ((chunk: Buffer, cb?: (err?: Error | null) => void) => {
    writes.push(Buffer.from(chunk));
    return write(chunk, cb);
  }) as typeof raw.write;
  return { bounded: new BoundedSocket(raw, maxPacketBytes, onOversize, gate), raw, client, writes };
}

async function read(client: Socket, bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  while (n < bytes) {
    const [chunk] = (await once(client, 'data')) as [Buffer];
    parts.push(chunk);
    n += chunk.length;
  }
  return Buffer.concat(parts);
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
}

describe('BoundedSocket', () => {
  it('sends a packet written in parts while corked as one write (a PUBACK is one segment, not a header waiting for an ACK)', async () => {
    const { bounded, client, writes } = await pair();
    // aedes (mqtt-packet) writes a PUBACK as header and body, corked for the tick.
    bounded.cork();
    bounded.write(Buffer.from([0x40, 0x02]));
    bounded.write(Buffer.from([0x00, 0x07]));
    process.nextTick(() => bounded.uncork());
    expect(await read(client, 4)).toEqual(Buffer.from([0x40, 0x02, 0x00, 0x07]));
    expect(writes).toEqual([Buffer.from([0x40, 0x02, 0x00, 0x07])]);
  });

  it('sends what is written in one turn of the loop (the PUBACKs of one commit) as one write', async () => {
    const { bounded, client, writes } = await pair();
    bounded.write(Buffer.from([0x40, 0x02, 0x00, 0x01]));
    bounded.write(Buffer.from([0x40, 0x02, 0x00, 0x02]));
    bounded.write(Buffer.from([0x40, 0x02, 0x00, 0x03]));
    expect(await read(client, 12)).toEqual(Buffer.from([0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x02, 0x40, 0x02, 0x00, 0x03]));
    expect(writes).toEqual([Buffer.from([0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x02, 0x40, 0x02, 0x00, 0x03])]);
  });

  it('hands aedes nothing the client sends while the gate is paused, and all of it once it opens; each read is timed as a turn', async () => {
    const waiters: (() => void)[] = [];
    const turns: number[] = [];
    const gate = {
      paused: false,
      whenReady: (fn: () => void) => (gate.paused ? waiters.push(fn) : fn()),
      begin: () => () => turns.push(1),
    };
    const { bounded, client } = await pair(1024, () => {}, gate);
    // As aedes reads: on 'readable', everything buffered at once.
    const got: Buffer[] = [];
    bounded.on('readable', () => {
      for (let c = bounded.read() as Buffer | null; c !== null; c = bounded.read() as Buffer | null) got.push(c);
    });
    client.write(Buffer.from([0xc0, 0x00]));
    await until(() => got.length === 1);
    expect(turns.length).toBeGreaterThan(0);
    gate.paused = true;
    client.write(Buffer.from([0xc0, 0x00, 0xc0, 0x00]));
    await new Promise((r) => setTimeout(r, 100));
    expect(Buffer.concat(got)).toEqual(Buffer.from([0xc0, 0x00]));
    gate.paused = false;
    for (const w of waiters.splice(0)) w();
    await until(() => Buffer.concat(got).length === 6);
    expect(Buffer.concat(got)).toEqual(Buffer.from([0xc0, 0x00, 0xc0, 0x00, 0xc0, 0x00]));
  });

  it('passes uncorked writes through as they come', async () => {
    const { bounded, client, writes } = await pair();
    bounded.write(Buffer.from([0xd0, 0x00]));
    expect(await read(client, 2)).toEqual(Buffer.from([0xd0, 0x00]));
    expect(writes).toEqual([Buffer.from([0xd0, 0x00])]);
  });

  it('gives aedes what the client sends, and ends the connection on a packet over the limit before passing it on', async () => {
    const sizes: number[] = [];
    const { bounded, raw, client } = await pair(16, (n) => sizes.push(n));
    const got: Buffer[] = [];
    bounded.on('data', (c: Buffer) => got.push(c));
    client.write(Buffer.from([0xc0, 0x00])); // PINGREQ
    await once(bounded, 'data');
    expect(Buffer.concat(got)).toEqual(Buffer.from([0xc0, 0x00]));
    // A PUBLISH announcing 100 bytes: over 16.
    client.write(Buffer.from([0x30, 100]));
    await once(raw, 'close');
    expect(sizes).toEqual([102]);
    expect(Buffer.concat(got)).toEqual(Buffer.from([0xc0, 0x00]));
  });
});
