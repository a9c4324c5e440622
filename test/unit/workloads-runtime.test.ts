import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dockerAddress } from '../../src/workloads/runtimes/docker.js';
import { RotatingLog } from '../../src/workloads/runtimes/rotating-log.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

describe('dockerAddress', () => {
  it('reads unix sockets and tcp addresses, and names what it expected otherwise', () => {
    expect(dockerAddress('unix:///run/docker.sock')).toEqual({ socketPath: '/run/docker.sock' });
    expect(dockerAddress('/run/docker.sock')).toEqual({ socketPath: '/run/docker.sock' });
    expect(dockerAddress('tcp://10.0.0.2:2375')).toEqual({ host: '10.0.0.2', port: 2375, protocol: 'http' });
    expect(() => dockerAddress('docker.local')).toThrow('docker host: expected "unix:///path/to/docker.sock" or "tcp://HOST:PORT", got "docker.local"');
  });
});

describe('RotatingLog', () => {
  it('rotates at the cap and keeps the newest output in at most keep + 1 files', () => {
    const path = join(dirs.make(), 'svc', 'output.log');
    const log = new RotatingLog(path, 100, 2);
    for (let i = 0; i < 50; i++) log.write(`line ${String(i).padStart(3, '0')}\n`); // 9 bytes each
    log.close();
    for (const f of [path, `${path}.1`, `${path}.2`]) expect(statSync(f).size).toBeLessThanOrEqual(100);
    expect(existsSync(`${path}.3`)).toBe(false);
    expect(readFileSync(path, 'utf8').trimEnd().split('\n').at(-1)).toBe('line 049');
    expect(readFileSync(`${path}.2`, 'utf8')).not.toContain('line 000');
  });

  it('keeps only the end of a chunk larger than the cap; keep 0 truncates', () => {
    const path = join(dirs.make(), 'output.log');
    const log = new RotatingLog(path, 10, 0);
    log.write('0123456789abcdef');
    expect(readFileSync(path, 'utf8')).toBe('6789abcdef');
    log.write('xy');
    expect(readFileSync(path, 'utf8')).toBe('xy');
    expect(existsSync(`${path}.1`)).toBe(false);
    log.close();
  });

  it('continues an existing file after a restart, counting its size', () => {
    const path = join(dirs.make(), 'output.log');
    const first = new RotatingLog(path, 20, 1);
    first.write('0123456789');
    first.close();
    const again = new RotatingLog(path, 20, 1);
    again.write('abcdefghijk'); // 10 + 11 > 20: rotates first
    again.close();
    expect(readFileSync(`${path}.1`, 'utf8')).toBe('0123456789');
    expect(readFileSync(path, 'utf8')).toBe('abcdefghijk');
  });
});
