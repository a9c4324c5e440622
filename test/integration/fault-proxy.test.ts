import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FaultProxy } from '../helpers/fault-proxy.js';

/** The proxy's blackhole for new connections: a peer that accepts and never answers (the chaos runner's fault). */

let echo: net.Server;
let proxy: FaultProxy;

beforeAll(async () => {
  echo = net.createServer((s) => {
    s.on('error', () => undefined); // the proxy resets connections
    s.pipe(s);
  });
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', () => resolve()));
  proxy = await FaultProxy.start({ target: { host: '127.0.0.1', port: (echo.address() as net.AddressInfo).port } });
});

afterAll(async () => {
  await proxy.close();
  await new Promise<void>((resolve) => echo.close(() => resolve()));
});

/** Connects through the proxy, sends `ping`, and resolves with what came back within `ms`. */
async function roundTrip(ms: number): Promise<string> {
  const socket = net.connect({ host: proxy.host, port: proxy.port });
  socket.on('error', () => undefined);
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  let got = '';
  socket.on('data', (c: Buffer) => (got += c.toString('utf8')));
  socket.write('ping');
  const deadline = Date.now() + ms;
  while (got !== 'ping' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  socket.destroy();
  return got;
}

describe('fault proxy', () => {
  it('with newConnections, accepts new connections and never answers them; pass() lets new ones through again', async () => {
    expect(await roundTrip(2_000)).toBe('ping');
    proxy.blackhole('both', { newConnections: true });
    expect(await roundTrip(500)).toBe('');
    proxy.reset();
    proxy.pass();
    expect(await roundTrip(2_000)).toBe('ping');
    proxy.blackhole('both');
    expect(await roundTrip(2_000)).toBe('ping'); // without it, only connections open at the time are held
  });
});
