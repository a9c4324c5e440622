import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

/**
 * The device API's one route a drain uses, and nothing more: `POST /device/v1/{uuid}/messages`
 * (docs/protocol.md) answers every id as accepted and counts the distinct telemetry ids. Every other
 * request is answered without work (GET: 304, the target unchanged; others: 200 `{}`). For a benchmark
 * whose cloud must cost far less than the agent: the devcloud stores each message in SQLite, and on
 * a busy machine it, not the agent, bounded the drain.
 */
export interface CloudStub {
  url: string;
  /** Distinct telemetry message ids received. */
  delivered(): number;
  close(): Promise<void>;
}

const MESSAGES = /^\/device\/v1\/[^/]+\/messages$/;

export async function startCloudStub(): Promise<CloudStub> {
  const ids = new Set<string>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'GET') return void res.writeHead(304).end();
      if (req.method !== 'POST' || !MESSAGES.test(req.url ?? '')) return void res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      const raw = Buffer.concat(chunks);
      const text = (req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8');
      const { messages } = JSON.parse(text) as { messages: { id: string; channel: string }[] };
      for (const m of messages) if (m.channel === 'telemetry') ids.add(m.id);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ accepted: messages.map((m) => m.id) }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    delivered: () => ids.size,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
