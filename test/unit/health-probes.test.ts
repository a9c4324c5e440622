import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HealthProbes } from '../../src/workloads/health-probes.js';
import { waitFor } from '../helpers/agent-process.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { silentLogger } from '../helpers/logger.js';

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

/** A loopback HTTP server whose /health answers with `code.value`. */
async function server(): Promise<{ port: number; code: { value: number } }> {
  const code = { value: 200 };
  const srv = createServer((_req, res) => {
    res.statusCode = code.value;
    res.end('ok');
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  closers.push(() => srv.close());
  return { port: (srv.address() as AddressInfo).port, code };
}

function probes(): { clock: FakeClock; p: HealthProbes; changes: string[] } {
  const clock = new FakeClock();
  const changes: string[] = [];
  const p = new HealthProbes({ clock, logger: silentLogger(), changed: (id) => changes.push(id) });
  closers.push(() => p.close());
  return { clock, p, changes };
}

describe('process health probes (fake clock, real loopback)', () => {
  it('an HTTP check: starting, healthy after the first answer, unhealthy after `retries` failures in a row, healthy again', async () => {
    const { port, code } = await server();
    const { clock, p, changes } = probes();
    p.track('s1', { http: `http://127.0.0.1:${port}/health`, intervalSeconds: 5, retries: 2 });
    expect(p.verdict('s1')).toEqual({ health: 'starting', healthLog: null });
    await clock.advance(4_999);
    expect(p.verdict('s1').health).toBe('starting');
    await clock.advance(1);
    await waitFor('healthy', () => p.verdict('s1').health === 'healthy', 5_000, 5);
    expect(changes).toEqual(['s1']);
    code.value = 503;
    await clock.advance(5_000);
    await waitFor('one failure seen', () => p.verdict('s1').healthLog !== null, 5_000, 5);
    expect(p.verdict('s1')).toEqual({ health: 'healthy', healthLog: `HTTP 503 from http://127.0.0.1:${port}/health` });
    await clock.advance(5_000);
    await waitFor('unhealthy', () => p.verdict('s1').health === 'unhealthy', 5_000, 5);
    code.value = 200;
    await clock.advance(5_000);
    await waitFor('healthy again', () => p.verdict('s1').health === 'healthy', 5_000, 5);
    p.untrack('s1');
    expect(p.verdict('s1')).toEqual({});
  });

  it('failures in the start period do not count; a TCP check and a command check', async () => {
    const { port } = await server();
    const { clock, p } = probes();
    p.track('cmd', { command: ['/bin/sh', '-c', 'echo not ready; exit 3'], intervalSeconds: 1, retries: 1, startPeriodSeconds: 10 });
    p.track('tcp', { tcp: `127.0.0.1:${port}`, intervalSeconds: 1 });
    p.track('none', undefined);
    for (let i = 0; i < 3; i++) {
      await clock.advance(1_000);
      await waitFor('a probe ran', () => p.verdict('cmd').healthLog !== null && p.verdict('tcp').health === 'healthy', 5_000, 5);
    }
    expect(p.verdict('cmd')).toEqual({ health: 'starting', healthLog: 'exit code 3: not ready' });
    expect(p.verdict('none')).toEqual({});
    await clock.advance(8_000);
    await waitFor('unhealthy after the start period', () => p.verdict('cmd').health === 'unhealthy', 5_000, 5);
  });

  it('a probe that does not answer in time fails with "timed out"', async () => {
    const { clock, p } = probes();
    p.track('slow', { command: ['/bin/sleep', '30'], intervalSeconds: 1, timeoutSeconds: 2, retries: 1 });
    await clock.advance(1_000);
    await clock.advance(2_000);
    await waitFor('unhealthy', () => p.verdict('slow').health === 'unhealthy', 5_000, 5);
    expect(p.verdict('slow').healthLog).toBe('timed out after 2 s');
  });
});
