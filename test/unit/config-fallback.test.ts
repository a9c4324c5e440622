import { describe, expect, it } from 'vitest';
import { announceConfigSource, configStatus, configView, type ConfigSource } from '../../src/config/fallback.js';
import { defaultConfig } from '../../src/config/schema.js';
import { captureLogger } from '../helpers/logger.js';

const issues = Array.from({ length: 25 }, (_, i) => ({ path: `settings.k${i}`, source: 'file', expected: 'no such key' }));
const fallback: ConfigSource = { source: 'last-known-good', file: '/etc/a.json', reason: 'invalid', issues, lastKnownGoodSavedAt: 1_000, since: 5_000 };

describe('the config source as shown', () => {
  it('reports the first 20 issues with the total, and the age of the last-known-good copy', () => {
    const s = configStatus(fallback, 61_000);
    expect(s.source).toBe('last-known-good');
    expect(s.fallback?.issues).toHaveLength(20);
    expect(s.fallback).toMatchObject({ issueCount: 25, lastKnownGoodAgeMs: 60_000, reason: 'invalid', since: 5_000 });
    expect(s.fallback?.message).toBe('the config /etc/a.json is invalid (25 issues); running on the last-known-good config saved 1970-01-01T00:00:01.000Z');
    expect(configStatus({ source: 'file', file: '/etc/a.json' }, 0)).toEqual({ source: 'file', file: '/etc/a.json', fallback: null });
  });

  it('GET /v2/config has every issue and the config with its secrets redacted', () => {
    const config = { ...defaultConfig(), device: { apiKey: 'secret-key-123' }, api: { ...defaultConfig().api, localApiKey: 'local-secret-0123456' } };
    const v = configView(config, fallback, 2_000);
    expect(v.fallback?.issues).toHaveLength(25);
    expect(v.config.device.apiKey).toBe('[redacted]');
    expect(v.config.api.localApiKey).toBe('[redacted]');
    expect(JSON.stringify(v)).not.toContain('secret-key-123');
    expect(JSON.stringify(v)).not.toContain('local-secret-0123456');
  });
});

describe('telling the cloud at start', () => {
  function run(status: ReturnType<typeof configStatus>, before: boolean, opts: { failWrite?: boolean } = {}) {
    const events: { type: string; data: Record<string, unknown> }[] = [];
    const writes: boolean[] = [];
    let reports = 0;
    const log = captureLogger();
    announceConfigSource({
      status,
      announced: {
        get: () => before,
        set: (v) => {
          if (opts.failWrite) throw new Error('database or disk is full');
          writes.push(v);
        },
      },
      event: (type, data) => events.push({ type, data }),
      healthReport: () => reports++,
      logger: log.logger,
    });
    return { events, writes, reports, records: log.records };
  }

  it('on a fallback: an event with the reasons, a health report, and it remembers', () => {
    const r = run(configStatus(fallback, 2_000), false);
    expect(r.events.map((e) => e.type)).toEqual(['config-fallback']);
    expect(r.events[0]?.data).toMatchObject({ file: '/etc/a.json', reason: 'invalid', issueCount: 25 });
    expect(r.reports).toBe(1);
    expect(r.writes).toEqual([true]);
  });

  it('on the first run on the file after a fallback: config-restored and a health report', () => {
    const r = run(configStatus({ source: 'file', file: '/etc/a.json' }, 0), true);
    expect(r.events).toEqual([{ type: 'config-restored', data: { file: '/etc/a.json' } }]);
    expect(r.reports).toBe(1);
    expect(r.writes).toEqual([false]);
  });

  it('on the file with nothing to correct: nothing', () => {
    const r = run(configStatus({ source: 'file', file: null }, 0), false);
    expect(r).toMatchObject({ events: [], writes: [], reports: 0 });
  });

  it('a write that fails (full disk) is logged; the event and report still go', () => {
    const r = run(configStatus(fallback, 2_000), false, { failWrite: true });
    expect(r.events).toHaveLength(1);
    expect(r.reports).toBe(1);
    expect(r.records().some((l) => String(l.msg).includes('could not remember') && String(l.err).includes('disk is full'))).toBe(true);
  });

  it('a fallback already announced is announced again (the cloud may have missed it), and not remembered twice', () => {
    const r = run(configStatus(fallback, 2_000), true);
    expect(r.events.map((e) => e.type)).toEqual(['config-fallback']);
    expect(r.reports).toBe(1);
    expect(r.writes).toEqual([]);
  });

  it('a remembered state it cannot read counts as not announced, and is logged', () => {
    const log = captureLogger();
    const events: string[] = [];
    announceConfigSource({
      status: configStatus({ source: 'file', file: '/etc/a.json' }, 0),
      announced: {
        get: () => {
          throw new Error('SQLITE_CORRUPT');
        },
        set: () => undefined,
      },
      event: (type) => events.push(type),
      healthReport: () => undefined,
      logger: log.logger,
    });
    expect(events).toEqual([]);
    expect(log.records()).toEqual([expect.objectContaining({ level: 40, msg: 'could not read whether a config fallback was reported', err: 'SQLITE_CORRUPT' })]);
  });

  it('logs the failed write with its level, message and error', () => {
    const r = run(configStatus(fallback, 2_000), false, { failWrite: true });
    expect(r.records()).toEqual([expect.objectContaining({ level: 40, msg: 'could not remember that a config fallback was reported', err: 'database or disk is full' })]);
  });
});

describe('the fallback message', () => {
  const base = { source: 'last-known-good' as const, lastKnownGoodSavedAt: 0, since: 0 };
  it('says in words why the file could not be used, how many issues, and from when the copy in use is', () => {
    const one = [{ path: '', source: 'file', expected: 'x' }];
    expect(configStatus({ ...base, file: '/a.json', reason: 'unreadable', issues: one }, 0).fallback?.message).toBe(
      'the config /a.json is unreadable (1 issue); running on the last-known-good config saved 1970-01-01T00:00:00.000Z',
    );
    expect(configStatus({ ...base, file: '/a.json', reason: 'not-json', issues: [] }, 0).fallback?.message).toContain('is not valid JSON (0 issues)');
    expect(configStatus({ ...base, file: null, reason: 'not-an-object', issues: one }, 0).fallback?.message).toContain(
      'the config (environment) is not a JSON object (1 issue)',
    );
  });

  it('never reports a negative age when the clock went back', () => {
    expect(configStatus({ ...fallback }, 0).fallback?.lastKnownGoodAgeMs).toBe(0);
  });
});
