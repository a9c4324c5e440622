import { describe, expect, it } from 'vitest';
import { renderStatus } from '../../src/status-view.js';

const base = {
  device: { uuid: 'dev-1', version: '9.9.9' },
  connection: {
    status: 'degraded',
    uptime: 90_000,
    offlineSince: null,
    lastPollSuccess: 0,
    lastReportSuccess: 0,
    pollFailures: 2,
    reportFailures: 0,
    channels: { api: { status: 'online', consecutiveFailures: 0, lastError: null }, mqtt: { status: 'offline', consecutiveFailures: 3, lastError: 'connect ECONNREFUSED' } },
    outages: [],
    mqtt: { connected: false, inflight: 12, queued: 488, reconnects: 4, lastError: 'connect ECONNREFUSED 127.0.0.1:1883', sessionPresent: null },
  },
  state: { mode: 'cloud', target: null, lastRejection: null, lastPollError: null },
  loops: [{ name: 'mqtt', state: 'running', restarts: 0, lastError: null }],
  jobs: { enabled: true, running: { id: 'j-7', type: 'run-command' }, counts: { RUNNING: 1, SUCCEEDED: 3, FAILED: 0, REJECTED: 1, TIMED_OUT: 0 }, recent: [{ id: 'j-6', type: 'poll-target', status: 'SUCCEEDED', finishedAt: 0 }] },
  shadow: { reportedVersion: 5, desiredVersion: 2, delta: { fan: 'on' }, overrides: null, conflicts: [] },
};

describe('iotistic-agent status (the table)', () => {
  it('shows the MQTT session, the running job with what is kept, and the shadow', () => {
    const out = renderStatus(base);
    expect(out).toMatch(/MQTT session\n\s+connected\s+no\n\s+in flight\s+12 unacknowledged, 488 waiting\n\s+reconnects\s+4\n\s+last error\s+connect ECONNREFUSED 127\.0\.0\.1:1883/);
    expect(out).toContain('Jobs  running run-command j-7; kept: 1 running, 3 succeeded, 1 rejected');
    expect(out).toMatch(/Shadow\n\s+reported version\s+5\n\s+desired version\s+2\n\s+delta\s+fan\n\s+local overrides\s+none\n\s+conflicts\s+0/);
  });

  it('shows the outbox drops per channel by reason', () => {
    const queue = {
      depth: 100,
      bytes: 4096,
      oldestAgeMs: 60_000,
      channels: { telemetry: { depth: 100, bytes: 4096, oldestAgeMs: 60_000, delivered: 5, dropped: 42, expired: 1, parked: 0, drops: { count: 40, bytes: 0, disk: 2, ttl: 1, parkedLimit: 0 } } },
    };
    expect(renderStatus({ ...base, queue })).toMatch(/telemetry\s+100 waiting {2}5 delivered {2}42 dropped \(count 40, disk 2\) {2}1 expired {2}0 parked/);
  });

  it('says whether the loss ledger balances, and where it does not', () => {
    const queue = {
      depth: 3,
      bytes: 10,
      oldestAgeMs: 0,
      channels: {},
      ledger: { balanced: true, channels: { telemetry: { accepted: 7, unaccounted: 0 }, events: { accepted: 2, unaccounted: 0 } } },
    };
    expect(renderStatus({ ...base, queue })).toContain('Ledger  balanced: all 9 message(s) taken are delivered, queued, parked, dropped or expired');
    const off = { ...queue, ledger: { balanced: false, channels: { telemetry: { accepted: 7, unaccounted: 1 }, events: { accepted: 2, unaccounted: 0 } } } };
    expect(renderStatus({ ...base, queue: off })).toContain("Ledger  DOES NOT BALANCE: unaccounted telemetry 1 (removed behind the agent's back? see the log)");
  });

  it('says why jobs are off and that the shadow is off, and leaves out the MQTT session without MQTT', () => {
    const out = renderStatus({ ...base, connection: { ...base.connection, mqtt: null }, jobs: { enabled: false, reason: 'features.jobs is false', running: null, counts: null, recent: [] }, shadow: null });
    expect(out).not.toContain('MQTT session');
    expect(out).toContain('Jobs  off (features.jobs is false)');
    expect(out).toContain('Shadow  off');
  });

  it('shows a quarantined database with what was salvaged, and a salvage still due', () => {
    const database = {
      quarantine: {
        quarantinedTo: '/data/agent.db.corrupt-2026-12-05T04-00-00-000Z',
        at: '2026-12-05T04:00:00.000Z',
        reason: 'integrity check: Tree 8 page 40: btreeInitPage() returns error code 11',
        recovered: 1940,
        lost: 60,
        unknownLoss: ['outages'],
        salvageError: null,
        tables: { outbox: { recovered: 1930, lost: 60 }, kv: { recovered: 10, lost: 0 }, outages: { recovered: 0, lost: null }, jobs: { recovered: 0, lost: 0 } },
      },
      quarantinedThisStart: true,
      integrity: { state: 'skipped', detail: null, ms: null },
      salvagePending: null,
    };
    const out = renderStatus({ ...base, state: { ...base.state, database } });
    expect(out).toMatch(/Database\n\s+integrity check\s+skipped\n\s+quarantined\s+2026-12-05 04:00:00Z \(this start\)\s+integrity check: Tree 8/);
    expect(out).toMatch(/moved to\s+\/data\/agent\.db\.corrupt-2026-12-05T04-00-00-000Z/);
    expect(out).toMatch(/salvaged\s+1940 rows recovered, 60 lost \(\+ unknown in outages\)/);
    expect(out).toMatch(/outbox\s+1930 recovered, 60 lost/);
    expect(out).toMatch(/outages\s+0 recovered, unknown lost/);
    expect(out).not.toMatch(/jobs\s+0 recovered/);
    const pending = renderStatus({ ...base, state: { ...base.state, database: { ...database, quarantine: null, integrity: { state: 'failed', detail: 'page 9: bad', ms: 900 }, salvagePending: 'integrity check: page 9: bad' } } });
    expect(pending).toMatch(/integrity check\s+failed {2}page 9: bad\n\s+CORRUPT\s+integrity check: page 9: bad; quarantined and salvaged at the next start/);
  });
});

describe('iotistic-agent status on a last-known-good config', () => {
  const fallback = {
    source: 'last-known-good',
    file: '/etc/iotistic/agent.json',
    fallback: {
      message: 'the config /etc/iotistic/agent.json is invalid (3 issues); running on the last-known-good config saved 2026-01-01T00:00:00.000Z',
      issues: [
        { path: 'settings.pollIntervalMs', source: 'file', value: '30s', expected: 'a number' },
        { path: 'jobs.alowedCommands', source: 'file', expected: 'no such key' },
      ],
      issueCount: 3,
      lastKnownGoodAgeMs: 3 * 3600_000,
    },
  };

  it('says so right under the title, with the issues and how many are not shown', () => {
    const out = renderStatus({ ...base, state: { ...base.state, config: fallback } }).split('\n');
    expect(out[2]).toBe(`!! CONFIG FALLBACK: ${fallback.fallback.message} (3.0h ago).`);
    expect(out[3]).toContain('NOT in force');
    expect(out[4]).toBe('    - settings.pollIntervalMs: expected a number, got "30s" (a string)');
    expect(out[5]).toBe('    - jobs.alowedCommands: expected no such key');
    expect(out[6]).toBe('    ... and 1 more (GET /v2/config)');
    expect(out.join('\n')).toMatch(/config\s+last-known-good \(\/etc\/iotistic\/agent\.json\)/);
  });

  it('prints no warning when the file is in force', () => {
    const out = renderStatus({ ...base, state: { ...base.state, config: { source: 'file', file: '/etc/a.json', fallback: null } } });
    expect(out).not.toContain('CONFIG FALLBACK');
    expect(out).toMatch(/config\s+file \(\/etc\/a\.json\)/);
  });
});
