import * as net from 'node:net';

/** Loopback ports for the private peers the tests and benchmarks start (brokers, registries, engines). */

/** A port that was free a moment ago (bound, read, released). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** One TCP connect attempt: performance.now() at the connect, or null when refused. */
function tryConnect(host: string, port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      const at = performance.now();
      socket.destroy();
      resolve(at);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(null);
    });
  });
}

/** Resolves with performance.now() of the first connection `host:port` accepts, trying every `pollMs`. */
export async function waitForPort(
  host: string,
  port: number,
  timeoutMs: number,
  alive: () => boolean = () => true,
  pollMs = 25,
): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const at = await tryConnect(host, port);
    if (at !== null) return at;
    if (!alive()) throw new Error(`the process that should listen on ${host}:${port} has exited`);
    if (performance.now() > deadline) throw new Error(`nothing accepted connections on ${host}:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
