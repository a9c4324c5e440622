import { createServer } from 'node:http';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/util/clock.js';
import { DockerRuntime } from '../../src/workloads/runtimes/docker.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * The Docker client is loaded at the first call that needs the engine (docs/performance.md,
 * "Footprint"): without the engine's socket the runtime answers as dockerode would, and an engine
 * that appears later is found and used. The "engine" here answers GET /_ping on a unix socket.
 */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

describe('DockerRuntime without a loaded client', () => {
  it('answers "connect ENOENT" while the socket is missing, then loads the client and pings the engine once it listens', async () => {
    const sock = join(dirs.make(), 'docker.sock');
    const docker = new DockerRuntime({ host: `unix://${sock}`, clock: systemClock, random: Math.random, logger: silentLogger(), pingTimeoutMs: 5_000 });
    expect(await docker.availability()).toEqual({ ok: false, reason: `unix://${sock}: connect ENOENT ${sock}` });
    expect(docker.endpoint).toBe(`unix://${sock}`);

    const requests: string[] = [];
    const engine = createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      res.writeHead(200, { 'content-type': 'text/plain' }).end('OK');
    });
    await new Promise<void>((resolve) => engine.listen(sock, resolve));
    try {
      expect(await docker.availability()).toEqual({ ok: true });
      expect(requests).toEqual(['GET /_ping']);
      expect(docker.endpoint).toBe(`unix://${sock}`);
    } finally {
      await new Promise((resolve) => engine.close(resolve));
    }
  });

  it('an engine address that is not a socket path or tcp://HOST:PORT still fails at construction', () => {
    expect(() => new DockerRuntime({ host: 'http://nowhere', clock: systemClock, random: Math.random, logger: silentLogger() })).toThrow(/expected "unix:\/\/\/path\/to\/docker.sock" or "tcp:\/\/HOST:PORT"/);
  });
});
