import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HeldListener } from '../../src/util/held-listener.js';

const open: HeldListener[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((l) => l.close()));
});

async function bind(port = 0): Promise<HeldListener> {
  const l = await HeldListener.bind('127.0.0.1', port);
  if (!l) throw new Error(`could not bind 127.0.0.1:${port}`);
  open.push(l);
  return l;
}

/** Connects and sends `text`; resolves with everything the server sent back once it closes (a reset: `reset`). */
function exchange(port: number, text: string): { connected: Promise<void>; reply: Promise<string> } {
  const s = connect(port, '127.0.0.1');
  const connected = new Promise<void>((resolve, reject) => {
    s.once('connect', () => resolve());
    s.once('error', reject);
  });
  let got = '';
  const reply = new Promise<string>((resolve, reject) => {
    s.on('data', (c: Buffer) => (got += c.toString('utf8')));
    s.once('close', () => resolve(got));
    s.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNRESET' ? resolve('reset') : reject(err)));
  });
  s.write(text);
  return { connected, reply };
}

const upperCaser = (socket: Socket): void => {
  socket.once('data', (c: Buffer) => socket.end(c.toString('utf8').toUpperCase()));
};

describe('HeldListener', () => {
  it('accepts a connection before there is a server, and hands it and what it sent to the server adopted later', async () => {
    const l = await bind();
    const early = exchange(l.port, 'sent while starting');
    await early.connected;
    l.adopt(upperCaser);
    expect(await early.reply).toBe('SENT WHILE STARTING');
    // Connections after the adoption go straight to the server.
    expect(await exchange(l.port, 'later').reply).toBe('LATER');
  });

  it('a port already taken gives no listener (the part binds, and reports it, itself)', async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    try {
      expect(await HeldListener.bind('127.0.0.1', (taken.address() as AddressInfo).port)).toBeUndefined();
    } finally {
      taken.close();
    }
  });

  it('closing it frees the port and ends the connections it held', async () => {
    const l = await bind();
    const port = l.port;
    const held = exchange(port, 'never answered');
    await held.connected;
    await l.close();
    // Ended unanswered: what it sent was never read, so the kernel resets it.
    expect(await held.reply).toBe('reset');
    expect(l.available).toBe(false);
    expect(() => l.adopt(upperCaser)).toThrow(/closed/);
    const again = await bind(port);
    expect(again.port).toBe(port);
  });

  it('is adopted once', async () => {
    const l = await bind();
    l.adopt(upperCaser);
    expect(l.available).toBe(false);
    expect(() => l.adopt(upperCaser)).toThrow(/already adopted/);
  });
});
