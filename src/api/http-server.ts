import { createServer, type RequestListener, type Server } from 'node:http';
import { isIPv6, type AddressInfo, type Socket } from 'node:net';
import type { HeldListener } from '../util/held-listener.js';

/** What the agent keeps of the running API: a way to stop it. */
export interface HttpApp {
  /** Stops listening and ends every connection at once, idle or mid-request. Idempotent. */
  close(): Promise<void>;
}

/**
 * How long a connection may take. A local app sends its request at once; these bound a client that
 * does not (slowloris), so it cannot hold a connection, and the agent's memory for it, for long:
 * - keepAliveMs: an idle kept-alive connection, 72 s: fastify's default before, longer than the
 *   60 s that common client pools and proxies keep one, so the client closes first, not mid-request;
 * - headersMs: from the connection (or a kept-alive request's first byte) to the end of the
 *   headers, 15 s: they fit in one packet;
 * - requestMs: the whole request, body included, 60 s: 2 MiB (limits.maxTargetBytes) at 35 KiB/s.
 * No limit on the time to answer: a handler may wait for the disk (an ingest's fsync).
 * Node checks the two request bounds every checkEveryMs (5 s; its default, 30 s, lets a client
 * overstay by that much); a connection past one gets a 408 and is closed.
 */
export interface HttpTimeouts {
  keepAliveMs: number;
  headersMs: number;
  requestMs: number;
  checkEveryMs: number;
}

export const HTTP_TIMEOUTS: HttpTimeouts = { keepAliveMs: 72_000, headersMs: 15_000, requestMs: 60_000, checkEveryMs: 5_000 };

export interface ServeOptions {
  host: string;
  port: number;
  /** The port bound early in the start: used (its held connections answered) when it is `host:port`. */
  listener?: HeldListener | undefined;
  /** Tests shorten them. */
  timeouts?: Partial<HttpTimeouts> | undefined;
  /** A connection streaming a body its route bounds itself (an image import, gigabytes): exempt from requestMs. */
  untimed?: ((socket: Socket) => boolean) | undefined;
}

// What node answers a client error with when the server has no 'clientError' listener.
const CANNED: Readonly<Record<string, string>> = {
  ERR_HTTP_REQUEST_TIMEOUT: '408 Request Timeout',
  HPE_HEADER_OVERFLOW: '431 Request Header Fields Too Large',
  HPE_CHUNK_EXTENSIONS_OVERFLOW: '413 Payload Too Large',
};

/**
 * Node's own handling of a client error (a canned answer unless one has started, then the socket goes),
 * except a request timeout on an `untimed` connection, which is let run.
 */
function onClientError(untimed: (socket: Socket) => boolean): (err: NodeJS.ErrnoException, socket: Socket) => void {
  return (err, socket) => {
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && untimed(socket)) return;
    const started = (socket as { _httpMessage?: { headersSent?: boolean } | null })._httpMessage?.headersSent === true;
    if (socket.writable && !started) socket.write(`HTTP/1.1 ${CANNED[err.code ?? ''] ?? '400 Bad Request'}\r\nConnection: close\r\n\r\n`);
    socket.destroy(err);
  };
}

/** Serves `listener` on `host:port` (or on the early-bound port), and returns how to stop it and its URL. */
export async function serveHttp(listener: RequestListener, o: ServeOptions): Promise<{ app: HttpApp; url: string }> {
  const t = { ...HTTP_TIMEOUTS, ...o.timeouts };
  const server = createServer({ headersTimeout: t.headersMs, requestTimeout: t.requestMs, connectionsCheckingInterval: t.checkEveryMs }, listener);
  server.keepAliveTimeout = t.keepAliveMs;
  if (o.untimed) server.on('clientError', onClientError(o.untimed));
  // Every connection, however it came (accepted here or handed over by the early listener), to end at a stop.
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    // Stryker disable next-line StringLiteral,ArrowFunction: keeps the set small; a closed socket destroyed again at the stop is a no-op.
    socket.once('close', () => sockets.delete(socket));
  });

  const held = o.listener;
  if (held?.available && held.host === o.host && held.requestedPort === o.port) {
    // Node starts checking headersMs and requestMs when the server emits 'listening', which a server
    // fed connections by hand never does on its own: without it those bounds would not hold.
    server.emit('listening');
    held.adopt((socket) => server.emit('connection', socket));
    return { app: closer(server, sockets, held), url: `http://${isIPv6(o.host) ? `[${o.host}]` : o.host}:${held.port}` };
  }
  await held?.close();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      // Stryker disable next-line StringLiteral: a reject after the resolve does nothing; this only drops the listener.
      server.off('error', reject);
      resolve();
    });
  });
  return { app: closer(server, sockets, undefined), url: urlOf(server.address() as AddressInfo) };
}

function closer(server: Server, sockets: Set<Socket>, held: HeldListener | undefined): HttpApp {
  let closing: Promise<void> | undefined;
  return {
    close: () =>
      (closing ??= (async () => {
        // Not listening itself (the early listener's port) the callback gets ERR_SERVER_NOT_RUNNING: nothing to wait for.
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        // A stop does not wait for a client holding a request open or a kept-alive connection idling.
        for (const socket of sockets) socket.destroy();
        await held?.close();
        await closed;
      })()),
  };
}

/** The URL the API answers on, as fastify printed it: the unspecified IPv4 address as loopback. */
function urlOf(a: AddressInfo): string {
  const host = a.address === '0.0.0.0' ? '127.0.0.1' : isIPv6(a.address) ? `[${a.address}]` : a.address;
  return `http://${host}:${a.port}`;
}
