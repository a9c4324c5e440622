import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { formatIssues, loadConfig } from '../../src/config/load.js';
import { defaultConfig } from '../../src/config/schema.js';
import { linkLine } from '../../src/status-view.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterEach(() => dirs.cleanup());

function errorsOf(content: unknown): string[] {
  const file = join(dirs.make(), 'config.json');
  writeFileSync(file, JSON.stringify(content));
  const r = loadConfig({ file, env: {} });
  expect(r.ok).toBe(false);
  return r.ok ? [] : formatIssues(r.issues).split('\n');
}

describe('settings.network', () => {
  it('defaults to cellular names metered, the control channels allowed, no cap, a month', () => {
    expect(defaultConfig().settings.network).toEqual({
      meteredInterfaces: ['wwan*', 'wwp*', 'wwx*', 'ppp*'],
      meteredChannels: ['state', 'events', 'jobs', 'shadow'],
      meteredBudgetBytes: 0,
      meteredBudgetPeriod: 'month',
      routeCheckIntervalMs: 2_000,
    });
  });

  it('names the field, the value and what was expected', () => {
    const lines = errorsOf({
      settings: { network: { meteredInterfaces: ['wwan[0-9]'], meteredChannels: [''], meteredBudgetBytes: -1, meteredBudgetPeriod: 'week', routeCheckIntervalMs: 10, metered: true } },
    });
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^ {2}- settings\.network\.meteredInterfaces\.0: expected an interface name pattern .*, got "wwan\[0-9\]" \(a string\)$/),
        expect.stringMatching(/^ {2}- settings\.network\.meteredChannels\.0: expected a channel name/),
        expect.stringMatching(/^ {2}- settings\.network\.meteredBudgetBytes: expected .*0.*, got -1 \(a number\)$/),
        '  - settings.network.meteredBudgetPeriod: expected one of "day", "month", got "week" (a string)',
        expect.stringMatching(/^ {2}- settings\.network\.routeCheckIntervalMs: expected .*200.*, got 10 \(a number\)$/),
        expect.stringMatching(/settings\.network.*metered/),
      ]),
    );
  });
});

describe('the status line of the link', () => {
  it('says where, how much of what, when it resets, and what is held', () => {
    const resetsAt = Date.UTC(2027, 0, 1);
    expect(linkLine({ interface: 'wwan0', metered: true, budget: { period: 'month', limitBytes: 204_800, usedBytes: 184_525, resetsAt, exhausted: true }, held: { telemetry: 812, metrics: 3 } })).toBe(
      'wwan0 (metered): 180.2 KiB of 200.0 KiB this month (spent), resets 2027-01-01 00:00:00Z; held: telemetry 812, metrics 3',
    );
    expect(linkLine({ interface: 'eth1', metered: false, budget: { period: 'day', limitBytes: 0, usedBytes: 0, resetsAt, exhausted: false }, held: {} })).toBe(
      'eth1: 0 B today, no cap, resets 2027-01-01 00:00:00Z',
    );
  });
});
