import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { EventEmitter, getEventListeners } from 'node:events';
import { ConnectivityProbe, createTcpConnect, type ReachableEvent } from '../../src/resilience/probe.js';
import { Wakeup } from '../../src/resilience/wakeup.js';
import { isAbortError, systemClock } from '../../src/util/clock.js';
import { createLogger } from '../../src/util/logger.js';
import { systemRandom } from '../../src/util/random.js';

// Only loopback is ever contacted.
const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
});

async function listen(onConnection: (socket: net.Socket) => void = () => undefined): Promise<number> {
  const server = net.createServer(onConnection);
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as net.AddressInfo).port;
}

/** A port that nothing listens on: bound, read, and closed again. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('createTcpConnect (real sockets on 127.0.0.1)', () => {
  it('connects to a listening server, then closes the connection at once', async () => {
    const closed: Promise<void>[] = [];
    let received = 0;
    const port = await listen((socket) => {
      closed.push(
        new Promise<void>((resolve) => {
          socket.on('data', (d: Buffer) => (received += d.length));
          socket.on('error', () => undefined);
          socket.on('close', () => resolve());
        }),
      );
    });
    const connect = createTcpConnect();
    const signal = new AbortController().signal;
    await expect(connect({ host: '127.0.0.1', port }, 3000, signal)).resolves.toBeUndefined();
    // Nothing is left on the caller's signal once the probe is over.
    expect(getEventListeners(signal, 'abort')).toHaveLength(0);
    await expect.poll(() => closed.length, { timeout: 5000 }).toBe(1);
    await closed[0];
    expect(received).toBe(0); // a handshake, not a request
  });

  it('resolves a host name through the lookup (localhost)', async () => {
    const port = await listen();
    const connect = createTcpConnect();
    // localhost may resolve to ::1 first; the server listens on IPv4 only, and happy eyeballs copes.
    await expect(connect({ host: 'localhost', port }, 3000, new AbortController().signal)).resolves.toBeUndefined();
  });

  it('probes one host name at once and again later: every probe connects', async () => {
    const port = await listen();
    const connect = createTcpConnect();
    const signal = new AbortController().signal;
    // Two at once share one lookup; the one after must not wait on the finished lookup.
    await expect(Promise.all([connect({ host: 'localhost', port }, 3000, signal), connect({ host: 'localhost', port }, 3000, signal)])).resolves.toEqual([undefined, undefined]);
    await expect(connect({ host: 'localhost', port }, 3000, signal)).resolves.toBeUndefined();
  });

  it('fails fast with PROBE_CONNECT_FAILED on a closed port', async () => {
    const port = await closedPort();
    const connect = createTcpConnect();
    const started = performance.now();
    const err = await connect({ host: '127.0.0.1', port }, 3000, new AbortController().signal).then(
      () => null,
      (e: unknown) => e as { code?: string; message: string },
    );
    expect(err?.code).toBe('PROBE_CONNECT_FAILED');
    expect(err?.message).toContain(`127.0.0.1:${port}`);
    expect(err?.message).toContain('ECONNREFUSED');
    expect(err).toMatchObject({ cause: expect.objectContaining({ code: 'ECONNREFUSED' }) });
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('gives up with the AbortError when the signal aborts, before or during the attempt', async () => {
    const port = await listen();
    const connect = createTcpConnect();
    const reason = new Error('shutdown');
    reason.name = 'AbortError';
    await expect(connect({ host: '127.0.0.1', port }, 3000, AbortSignal.abort(reason))).rejects.toBe(reason);

    // Aborting in the same tick as the connect starts wins before the handshake completes.
    const ac = new AbortController();
    const attempt = connect({ host: '127.0.0.1', port }, 3000, ac.signal);
    ac.abort();
    const err = await attempt.then(
      () => null,
      (e: unknown) => e,
    );
    expect(isAbortError(err)).toBe(true);
  });
});

describe('ConnectivityProbe with real TCP and real time', () => {
  it('finds a server that starts listening while offline and wakes the waiting loops', async () => {
    const port = await closedPort();
    const status = Object.assign(new EventEmitter(), { status: () => 'offline' as const });
    const wakeup = new Wakeup({ clock: systemClock, random: systemRandom, staggerMaxMs: 50 });
    const probe = new ConnectivityProbe({
      status,
      wakeup,
      targets: [{ host: '127.0.0.1', port }],
      clock: systemClock,
      random: systemRandom,
      logger: createLogger({ level: 'silent', destination: process.stderr }),
      initialIntervalMs: 50,
      maxIntervalMs: 200,
    });
    const events: ReachableEvent[] = [];
    probe.on('reachable', (e) => events.push(e));
    const ac = new AbortController();
    const done = probe.start(ac.signal);
    const sleeping = wakeup.sleep(60_000, ac.signal);
    try {
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(events).toHaveLength(0);

      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
      await expect(sleeping).resolves.toBe('woken');
      expect(events).toEqual([{ target: { host: '127.0.0.1', port }, at: expect.any(Number), trigger: 'schedule' }]);
    } finally {
      ac.abort();
      await done;
      await sleeping.catch(() => undefined);
    }
  });
});
