import { spawnSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDirs } from '../helpers/tmp.js';

/**
 * deploy/systemd/iotistic-agent.service as systemd itself reads it (`systemd-analyze verify`), and the
 * choices an operator relies on: it always comes back, the agent stops its own children, the stop
 * timeout is above the agent's own, state and config where the docs say.
 */

const ROOT = new URL('../../', import.meta.url).pathname;
const UNIT = join(ROOT, 'deploy/systemd/iotistic-agent.service');
const ANALYZE = '/usr/bin/systemd-analyze';
const BIN = '/usr/local/bin/iotistic-agent';
/** The agent's hard stop deadline (src/cli.ts, `stop`): it exits within this after SIGTERM. */
const AGENT_STOP_DEADLINE_S = 8;

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

const text = readFileSync(UNIT, 'utf8');
/** The values of a key in the unit, comments left out. */
function values(key: string): string[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

describe('the systemd unit', () => {
  // systemd-analyze is installed by scripts/test-services.mjs (npm test): no skip hides it missing.
  it('passes systemd-analyze verify without a warning', () => {
    // verify checks that ExecStart's binary exists: a copy of the unit points it at a stand-in.
    const dir = dirs.make();
    const bin = join(dir, 'iotistic-agent');
    writeFileSync(bin, '#!/bin/sh\nexit 0\n');
    chmodSync(bin, 0o755);
    expect(text).toContain(`ExecStart=${BIN} `);
    const unit = join(dir, 'iotistic-agent.service');
    writeFileSync(unit, text.replace(`ExecStart=${BIN} `, `ExecStart=${bin} `));
    const r = spawnSync(ANALYZE, ['verify', unit], { encoding: 'utf8' });
    expect(r.stderr.split('\n').filter((l) => l.includes('iotistic-agent'))).toEqual([]);
    expect(r.status).toBe(0);
  });

  it('runs the installed bin on the installed config, with state and config dirs of its own', () => {
    expect(values('ExecStart')).toEqual([`${BIN} launch --config /etc/iotistic-agent/config.json`]);
    expect(values('Type')).toEqual(['exec']);
    expect(values('StateDirectory')).toEqual(['iotistic-agent']);
    expect(values('ConfigurationDirectory')).toEqual(['iotistic-agent']);
  });

  it('never gives up restarting', () => {
    expect(values('Restart')).toEqual(['always']);
    expect(values('StartLimitIntervalSec')).toEqual(['0']);
    expect(values('RestartSec')).toHaveLength(1);
  });

  it('lets the agent stop its process groups, and waits longer than the agent does', () => {
    expect(values('KillMode')).toEqual(['mixed']);
    const [stop] = values('TimeoutStopSec');
    expect(Number.parseInt(stop ?? '', 10)).toBeGreaterThan(AGENT_STOP_DEADLINE_S);
  });

  it('is hardened without a User= (processes switch users) and without hiding /run (the Docker socket)', () => {
    for (const key of ['NoNewPrivileges', 'PrivateTmp', 'ProtectKernelTunables', 'ProtectKernelModules', 'ProtectKernelLogs', 'ProtectControlGroups', 'RestrictSUIDSGID', 'LockPersonality', 'RestrictRealtime']) {
      expect(values(key), key).toEqual(['yes']);
    }
    expect(values('ProtectSystem')).toEqual(['strict']);
    expect(values('ProtectHome')).toEqual(['yes']);
    expect(values('SystemCallArchitectures')).toEqual(['native']);
    expect(values('User')).toEqual([]);
    expect(values('InaccessiblePaths')).toEqual([]);
  });
});
