import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { drainBody, type DrainBounds } from '../../src/api/drain-body.js';

// drainBody on a real socket: how the API reads a refused body to its end before answering, and
// where it stops reading (too much, too slow) so that a hostile sender cannot hold it.
const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** A server whose every request is drained with `bounds`; resolves with what drainBody said. */
async function serve(bounds: DrainBounds): Promise<{ port: number; outcome: Promise<'drained' | 'cut'> }> {
  let first!: (how: 'drained' | 'cut') => void;
  const outcome = new Promise<'drained' | 'cut'>((r) => (first = r));
  const server = createServer((req: IncomingMessage, res) => {
    void drainBody(req, bounds).then((how) => {
      first(how);
      res.writeHead(413, { connection: 'close' }).end(how);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, outcome };
}

/** Sends `pieces` of 1 KiB, announcing `announced` bytes, and leaves the request open if short. */
function send(port: number, announced: number, pieces: number): Promise<string> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, method: 'POST', headers: { 'content-length': String(announced) } });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('error', () => resolve('error'));
    for (let i = 0; i < pieces; i++) req.write(Buffer.alloc(1024, 'x'));
    if (pieces * 1024 === announced) req.end();
  });
}

it('reads a body to its end, keeping none of it, then lets the answer go', async () => {
  const { port, outcome } = await serve({ maxBytes: 1_048_576, maxMs: 10_000 });
  expect(await send(port, 512 * 1024, 512)).toBe('drained');
  expect(await outcome).toBe('drained');
});

it('stops reading past maxBytes', async () => {
  const { port, outcome } = await serve({ maxBytes: 64 * 1024, maxMs: 10_000 });
  void send(port, 1024 * 1024, 1024);
  expect(await outcome).toBe('cut');
});

it('stops waiting for a sender that stalls, after maxMs', async () => {
  const { port, outcome } = await serve({ maxBytes: 1_048_576, maxMs: 200 });
  const started = Date.now();
  const answer = send(port, 10 * 1024, 2); // announces 10 KiB, sends 2 and goes quiet
  expect(await answer).toBe('cut');
  expect(await outcome).toBe('cut');
  expect(Date.now() - started).toBeGreaterThanOrEqual(150);
});
