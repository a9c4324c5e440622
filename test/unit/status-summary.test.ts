import { describe, expect, it } from 'vitest';
import { colourWanted, palette } from '../../src/cli-client.js';
import { formatParked, formatQueue, selectionProblem } from '../../src/queue-cli.js';
import { renderSummary } from '../../src/status-summary.js';
import { when } from '../../src/status-view.js';

const NOW = Date.UTC(2026, 11, 6, 12, 0, 0);
const ESC = '\u001b[';
/** An ANSI colour code (the ESC built from a string: a control character in a regex literal is a lint error). */
const SGR = new RegExp(`${String.fromCharCode(27)}\\[\\d+m`, 'g');

const status = {
  device: { uuid: 'dev-1', version: '9.9.9' },
  connection: {
    status: 'degraded',
    uptime: 3_600_000,
    offlineSince: null,
    lastPollSuccess: 0,
    lastReportSuccess: 0,
    pollFailures: 0,
    reportFailures: 0,
    channels: {
      api: { status: 'online', consecutiveFailures: 0, lastError: null, lastFailureKind: null, offlineSince: null, lastSuccess: { poll: NOW - 65_000, report: NOW - 5_000 } },
      mqtt: {
        status: 'offline',
        consecutiveFailures: 4,
        lastError: 'the broker refused the connection: Not authorized (0x87)',
        lastFailureKind: 'auth',
        offlineSince: NOW - 300_000,
        lastSuccess: {},
      },
    },
    outages: [],
  },
  state: {
    mode: 'cloud',
    target: null,
    lastRejection: null,
    lastPollError: null,
    current: { status: 'running', apps: { demo: { services: { web: { status: 'running' }, worker: { status: 'exited', restarts: 3, lastError: 'exit code 1' } } } } },
  },
  loops: [],
  queue: {
    depth: 12,
    bytes: 3072,
    oldestAgeMs: 120_000,
    channels: {
      telemetry: { depth: 12, bytes: 3072, oldestAgeMs: 120_000, delivered: 40, dropped: 1, expired: 0, parked: 2 },
      events: { depth: 0, bytes: 0, oldestAgeMs: 0, delivered: 0, dropped: 0, expired: 0, parked: 0 },
    },
    ledger: { balanced: true, channels: { telemetry: { accepted: 55, unaccounted: 0 } } },
    dataDisk: { state: 'low', dataDir: '/var/lib/iotistic-agent', freeBytes: 50 * 1_048_576 },
  },
};

describe('iotistic-agent status (the summary)', () => {
  it('says in a few lines: agent, each channel with since and age, outbox, services, ledger, disk', () => {
    expect(renderSummary(status, { now: NOW, colour: false })).toBe(
      [
        'Iotistic Agent 9.9.9  device dev-1  up 60m',
        'Connection  degraded',
        '  api   online   last success 2026-12-06 11:59:55Z (5s ago)',
        '  mqtt  OFFLINE since 2026-12-06 11:55:00Z (5m ago), 4 failures, auth: the broker refused the connection: Not authorized (0x87)',
        'Outbox  12 waiting, 3.0 KiB, oldest 2m',
        '  telemetry  12 waiting (3.0 KiB, oldest 2m)  40 delivered  1 dropped  0 expired  2 parked',
        'Services  running',
        '  demo/web     running',
        '  demo/worker  exited  3 restarts  last error: exit code 1',
        'Ledger  balanced',
        'Disk  low: 50.0 MiB free in /var/lib/iotistic-agent',
        '',
      ].join('\n'),
    );
  });

  it('colours states and losses only when asked, and the text is the same without the codes', () => {
    const plain = renderSummary(status, { now: NOW, colour: false });
    const coloured = renderSummary(status, { now: NOW, colour: true });
    expect(plain).not.toContain(ESC);
    expect(coloured).toContain(`${ESC}31mOFFLINE${ESC}39m`);
    expect(coloured).toContain(`${ESC}33mdegraded${ESC}39m`);
    expect(coloured).toContain(`${ESC}33m2 parked${ESC}39m`);
    expect(coloured).toContain(`Ledger  ${ESC}32mbalanced${ESC}39m`);
    expect(coloured.replaceAll(SGR, '')).toBe(plain);
  });

  it('shows a ledger that does not balance, a config fallback, an unsynced clock and the features shed', () => {
    const off = {
      ...status,
      connection: {
        ...status.connection,
        clock: { synced: false, source: 'plausibility', detail: 'before the build date' },
        degradation: { mode: 'degraded', reason: 'offline for 312 s (threshold 300 s)', features: [{ name: 'metrics-sampling', order: 1, paused: true }, { name: 'jobs', order: 2, paused: false }] },
      },
      state: { ...status.state, config: { source: 'last-known-good', file: '/etc/a.json', fallback: { message: 'the config /etc/a.json is invalid (1 issue)', issues: [], issueCount: 1, lastKnownGoodAgeMs: 0 } } },
      queue: { ...status.queue, ledger: { balanced: false, channels: { telemetry: { accepted: 55, unaccounted: 2 } } } },
    };
    const out = renderSummary(off, { now: NOW, colour: false });
    expect(out.split('\n')[1]).toBe('!! CONFIG FALLBACK: the config /etc/a.json is invalid (1 issue); the file is NOT in force (iotistic-agent config check; status --full lists the issues)');
    expect(out).toContain('Connection  degraded  clock NOT synced (before the build date)\n  degraded: offline for 312 s (threshold 300 s); paused: metrics-sampling\n  api   online');
    expect(renderSummary({ ...status, connection: { ...status.connection, degradation: { mode: 'normal', features: [] } } }, { now: NOW, colour: false })).not.toContain('normal');
    expect(out).toContain('Ledger  DOES NOT BALANCE: unaccounted telemetry 2');
  });

  it('says a refused or pending registration (what to do, never a key), and nothing once a key is in use', () => {
    const reason = "registration refused (403): the provisioning key's device limit is reached: raise it in the cloud or use another device.provisioningKey";
    const refused = renderSummary({ ...status, state: { ...status.state, registration: { state: 'refused', reason } } }, { now: NOW, colour: false });
    expect(refused).toContain(`Registration  refused: ${reason}\n`);
    const pending = renderSummary({ ...status, state: { ...status.state, registration: { state: 'registering', lastError: 'POST /device/v1/register failed: connection refused (ECONNREFUSED)' } } }, { now: NOW, colour: false });
    expect(pending).toContain('Registration  registering: POST /device/v1/register failed: connection refused (ECONNREFUSED)\n');
    expect(renderSummary({ ...status, state: { ...status.state, registration: { state: 'registered' } } }, { now: NOW, colour: false })).not.toContain('Registration');
  });

  it('names an image the target needs that could not be pulled, and how to bring it without a registry', () => {
    const missing = [{ image: 'registry.local:5000/app:2', services: ['shop/web'], lastError: 'pull of registry.local:5000/app:2 failed: connection refused' }];
    const out = renderSummary({ ...status, state: { ...status.state, missingImages: missing } }, { now: NOW, colour: false });
    expect(out).toContain('Image  registry.local:5000/app:2 missing (shop/web): pull of registry.local:5000/app:2 failed: connection refused; on a device without a registry: iotistic-agent images import FILE\n');
    expect(renderSummary({ ...status, state: { ...status.state, missingImages: [] } }, { now: NOW, colour: false })).not.toContain('Image  ');
  });

  it('says an update on trial with its deadline, and a rolled-back one for a day; nothing when the last one succeeded', () => {
    const base = { version: '0.2.0', launched: true, release: '0.2.0-abcdef012345', previous: null, trial: null, lastOutcome: null };
    const trial = { kind: 'agent', from: '0.2.0', to: '0.3.0', startedAt: NOW - 5_000, deadline: NOW + 115_000, attempts: 1 };
    const on = renderSummary({ ...status, state: { ...status.state, lifecycle: { ...base, trial } } }, { now: NOW, colour: false });
    expect(on).toContain(`Update  version 0.3.0 on trial since ${when(NOW - 5_000)}, healthy by ${when(NOW + 115_000)} or rolled back (start 1)\n`);
    const failed = { jobId: 'j-9', status: 'FAILED', at: NOW - 60_000, reason: 'version 0.3.0 exited with code 1 two times during its trial' };
    const rolled = renderSummary({ ...status, state: { ...status.state, lifecycle: { ...base, lastOutcome: failed } } }, { now: NOW, colour: false });
    expect(rolled).toContain(`Update  job j-9 FAILED ${when(NOW - 60_000)}: version 0.3.0 exited with code 1 two times during its trial\n`);
    const dayLater = renderSummary({ ...status, state: { ...status.state, lifecycle: { ...base, lastOutcome: failed } } }, { now: NOW + 86_400_000, colour: false });
    expect(dayLater).not.toContain('Update');
    const ok = renderSummary({ ...status, state: { ...status.state, lifecycle: { ...base, lastOutcome: { ...failed, status: 'SUCCEEDED', reason: null } } } }, { now: NOW, colour: false });
    expect(ok).not.toContain('Update');
  });
});

describe('colour', () => {
  it('only on a terminal, and never with NO_COLOR set (an empty NO_COLOR does not count)', () => {
    expect(colourWanted({ isTTY: true }, {})).toBe(true);
    expect(colourWanted({ isTTY: false }, {})).toBe(false);
    expect(colourWanted({}, {})).toBe(false);
    expect(colourWanted({ isTTY: true }, { NO_COLOR: '1' })).toBe(false);
    expect(colourWanted({ isTTY: true }, { NO_COLOR: '' })).toBe(true);
    expect(palette(false).red('x')).toBe('x');
  });
});

describe('iotistic-agent queue (the formatting)', () => {
  it('lines the channels up in columns, losses in yellow on a terminal', () => {
    const plain = formatQueue(status.queue, palette(false));
    expect(plain).toBe(
      [
        'Outbox  12 waiting, 3.0 KiB, oldest 2m',
        'channel    waiting    bytes  oldest  delivered  dropped  expired  parked',
        'telemetry       12  3.0 KiB      2m         40        1        0       2',
        'events           0      0 B       -          0        0        0       0',
        '',
      ].join('\n'),
    );
    const coloured = formatQueue(status.queue, palette(true));
    expect(coloured).toContain(`${ESC}33m      1${ESC}39m`);
    expect(coloured.replaceAll(SGR, '')).toBe(plain);
  });

  it('lists parked messages with id, channel, when and why, and says when only the oldest are shown', () => {
    const q = { ...status.queue, parkedMessages: [{ id: 'm-1', channel: 'telemetry', parkedAt: NOW - 90_000, reason: 'HTTP 422: bad payload' }] };
    expect(formatParked(q, NOW)).toBe(
      '2 parked messages (the oldest 1 shown); retry: iotistic-agent queue retry ID... | --all; delete: iotistic-agent queue purge ID... | --all\n' +
        'm-1  telemetry  2026-12-06 11:58:30Z (90s ago)  HTTP 422: bad payload\n',
    );
    expect(formatParked({ ...q, channels: {}, parkedMessages: [] }, NOW)).toBe('no parked messages\n');
  });

  it('wants IDs or --all, one of the two', () => {
    expect(selectionProblem('purge', [], false)).toBe('queue purge: expected parked message IDs (iotistic-agent queue parked lists them) or --all, got neither');
    expect(selectionProblem('retry', ['a', 'b'], true)).toBe('queue retry: give parked message IDs or --all, not both (got --all and 2 IDs)');
    expect(selectionProblem('retry', ['a'], false)).toBeUndefined();
  });
});
