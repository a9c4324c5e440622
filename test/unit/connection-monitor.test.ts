import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ConnectionMonitor,
  type ConnectionMonitorEvents,
  type ConnectionMonitorOptions,
} from '../../src/resilience/connection-monitor.js';
import { SqliteOutageLog, type OutageLog } from '../../src/resilience/outage-log.js';
import { Store } from '../helpers/store.js';
import { FakeClock } from '../helpers/fake-clock.js';

const T0 = Date.UTC(2026, 0, 1);
const HOUR = 60 * 60 * 1000;

type Recorded = { [K in keyof ConnectionMonitorEvents]: [K, ConnectionMonitorEvents[K]] }[keyof ConnectionMonitorEvents];

function record(monitor: ConnectionMonitor): Recorded[] {
  const events: Recorded[] = [];
  monitor.on('channel', (e) => events.push(['channel', e]));
  monitor.on('status', (e) => events.push(['status', e]));
  monitor.on('outage-started', (e) => events.push(['outage-started', e]));
  monitor.on('outage-ended', (e) => events.push(['outage-ended', e]));
  return events;
}

function make(over: Partial<ConnectionMonitorOptions> = {}): { monitor: ConnectionMonitor; clock: FakeClock; events: Recorded[] } {
  const clock = new FakeClock(T0);
  const monitor = new ConnectionMonitor({ clock, channels: ['api'], ...over });
  return { monitor, clock, events: record(monitor) };
}

interface CapturedLogger {
  info: (fields: object, msg: string) => void;
  warn: (fields: object, msg: string) => void;
  error: (fields: object, msg: string) => void;
  /** The messages of error lines. */
  errors: string[];
  /** Every line, as the log would hold it. */
  lines: Array<{ level: string; fields: object; msg: string }>;
}

function silentLogger(): CapturedLogger {
  const errors: string[] = [];
  const lines: CapturedLogger['lines'] = [];
  const at = (level: string) => (fields: object, msg: string) => {
    lines.push({ level, fields, msg });
    if (level === 'error') errors.push(msg);
  };
  return { info: at('info'), warn: at('warn'), error: at('error'), errors, lines };
}

describe('a channel before its first mark', () => {
  it('is online (optimistic) with no successes, and so is the overall status', () => {
    const { monitor } = make({ channels: ['api', 'mqtt'] });
    expect(monitor.channelStatus('api')).toBe('online');
    expect(monitor.status()).toBe('online');
    expect(monitor.isOnline()).toBe(true);
    expect(monitor.offlineSince()).toBeNull();
    const h = monitor.health();
    expect(h.channels.api).toEqual({ status: 'online', consecutiveFailures: 0, failures: {}, lastSuccess: {}, lastError: null, lastFailureKind: null, offlineSince: null });
    expect(h.lastPollSuccess).toBe(0);
  });

  it('is unknown until marked or added', () => {
    const { monitor } = make({ channels: [] });
    expect(monitor.status()).toBe('online'); // nothing has failed
    expect(monitor.channelStatus('mqtt')).toBeUndefined();
    monitor.markFailure('mqtt', 'publish', 'ECONNREFUSED');
    expect(monitor.channelStatus('mqtt')).toBe('degraded');
    expect(monitor.channelNames).toEqual(['mqtt']);
  });
});

describe('channel transitions', () => {
  it('goes online → degraded → offline → online with exactly these events', async () => {
    const { monitor, clock, events } = make();
    const t1 = clock.now();
    monitor.markFailure('api', 'poll', 'ECONNREFUSED');
    expect(events).toEqual([
      ['channel', { channel: 'api', from: 'online', to: 'degraded', operation: 'poll', error: 'ECONNREFUSED', at: t1 }],
      ['status', { from: 'online', to: 'degraded', at: t1, cause: { channel: 'api', operation: 'poll', error: 'ECONNREFUSED' } }],
    ]);
    events.length = 0;

    await clock.advance(2000);
    monitor.markFailure('api', 'report', 'timeout');
    expect(events).toEqual([]);
    expect(monitor.channelStatus('api')).toBe('degraded');

    await clock.advance(4000);
    const t3 = clock.now();
    monitor.markFailure('api', 'poll', 'ETIMEDOUT');
    const outage = { channel: 'api', start: t1, end: null, durationMs: null, cause: 'poll: ECONNREFUSED' };
    expect(events).toEqual([
      ['channel', { channel: 'api', from: 'degraded', to: 'offline', operation: 'poll', error: 'ETIMEDOUT', at: t3 }],
      ['outage-started', outage],
      ['status', { from: 'degraded', to: 'offline', at: t3, cause: { channel: 'api', operation: 'poll', error: 'ETIMEDOUT' } }],
    ]);
    events.length = 0;
    expect(monitor.offlineSince()).toBe(t1);
    expect(monitor.health().channels.api?.offlineSince).toBe(t1);
    expect(monitor.isOnline()).toBe(false);

    await clock.advance(8000);
    monitor.markFailure('api', 'poll', 'ETIMEDOUT');
    expect(events).toEqual([]);
    expect(monitor.offlineDurationMs()).toBe(14_000);

    await clock.advance(16_000);
    const t5 = clock.now();
    monitor.markSuccess('api', 'poll');
    expect(events).toEqual([
      ['channel', { channel: 'api', from: 'offline', to: 'online', operation: 'poll', at: t5 }],
      ['outage-ended', { ...outage, end: t5, durationMs: 30_000 }],
      ['status', { from: 'offline', to: 'online', at: t5, cause: { channel: 'api', operation: 'poll' } }],
    ]);
    expect(monitor.offlineSince()).toBeNull();
    expect(monitor.offlineDurationMs()).toBe(0);
    expect(monitor.health().channels.api).toMatchObject({ status: 'online', consecutiveFailures: 0, offlineSince: null, lastError: 'ETIMEDOUT' });
  });

  it('a success while degraded returns to online without an outage', () => {
    const { monitor, events } = make();
    monitor.markFailure('api', 'poll', 'x');
    monitor.markFailure('api', 'poll', 'x');
    monitor.markSuccess('api', 'report');
    expect(events.map(([name, e]) => `${name}:${'from' in e ? `${e.from}->${e.to}` : ''}`)).toEqual([
      'channel:online->degraded',
      'status:online->degraded',
      'channel:degraded->online',
      'status:degraded->online',
    ]);
    expect(monitor.health().outages).toEqual([]);
  });

  it('honours the threshold: 1 goes straight offline', () => {
    const { monitor, events } = make({ offlineAfterFailures: 1 });
    monitor.markFailure('api', 'poll', 'x');
    expect(monitor.channelStatus('api')).toBe('offline');
    expect(events.map(([name]) => name)).toEqual(['channel', 'outage-started', 'status']);
  });

  it('refuses a threshold below 1', () => {
    expect(() => make({ offlineAfterFailures: 0 })).toThrow(/offlineAfterFailures/);
  });

  it('refuses options that cannot work, naming the option, the value and what it expects; 1 is fine for both', () => {
    expect(() => make({ offlineAfterFailures: 1.5 })).toThrow('connection monitor offlineAfterFailures: expected an integer >= 1, got 1.5');
    for (const kept of [0, 2.5]) {
      expect(() => make({ maxOutagesKept: kept })).toThrow(`connection monitor maxOutagesKept: expected an integer >= 1, got ${kept}`);
    }
    expect(() => make({ maxOutagesKept: 0 })).toThrow(expect.objectContaining({ code: 'MONITOR_OPTIONS_INVALID' }));
    expect(() => make({ offlineAfterFailures: 0 })).toThrow(expect.objectContaining({ code: 'MONITOR_OPTIONS_INVALID' }));
    const { monitor } = make({ offlineAfterFailures: 1, maxOutagesKept: 1 });
    monitor.markFailure('api', 'poll', 'x');
    expect(monitor.health().outages).toHaveLength(1);
  });

  it('keeps an error of up to 500 characters whole and cuts a longer one, marking the cut', () => {
    const { monitor } = make();
    const exact = 'e'.repeat(500);
    monitor.markFailure('api', 'poll', exact);
    expect(monitor.health().channels.api?.lastError).toBe(exact);
    monitor.markFailure('api', 'poll', `${'f'.repeat(500)}TAIL`);
    expect(monitor.health().channels.api?.lastError).toBe(`${'f'.repeat(500)}…`);
  });

  it('measures outage durations on the monotonic clock, so a wall-clock step does not distort them', async () => {
    const { monitor, clock } = make({ offlineAfterFailures: 1 });
    monitor.markFailure('api', 'poll', 'x');
    clock.jumpWall(-24 * HOUR);
    await clock.advance(5000);
    monitor.markSuccess('api', 'poll');
    expect(monitor.health().outages[0]?.durationMs).toBe(5000);
  });
});

describe('overall status', () => {
  it('is degraded with api offline and mqtt online, offline when both are', async () => {
    const { monitor, clock, events } = make({ channels: ['api', 'mqtt'] });
    const tApi = clock.now();
    for (let i = 0; i < 3; i++) monitor.markFailure('api', 'poll', 'ECONNREFUSED');
    monitor.markSuccess('mqtt', 'publish');
    expect(monitor.channelStatus('api')).toBe('offline');
    expect(monitor.status()).toBe('degraded');
    expect(monitor.isOnline()).toBe(true);
    expect(monitor.offlineSince()).toBeNull();
    await clock.advance(1_000);
    // One channel works: the agent is not offline, however long api has been.
    expect(monitor.offlineDurationMs()).toBe(0);

    await clock.advance(59_000);
    const tMqtt = clock.now();
    events.length = 0;
    for (let i = 0; i < 3; i++) monitor.markFailure('mqtt', 'publish', 'connack timeout');
    expect(monitor.status()).toBe('offline');
    expect(monitor.isOnline()).toBe(false);
    // Offline since the last channel to go started failing.
    expect(monitor.offlineSince()).toBe(tMqtt);
    expect(monitor.health().channels.api?.offlineSince).toBe(tApi);
    expect(events.filter(([n]) => n === 'status')).toEqual([
      ['status', { from: 'degraded', to: 'offline', at: tMqtt, cause: { channel: 'mqtt', operation: 'publish', error: 'connack timeout' } }],
    ]);

    monitor.markSuccess('api', 'poll');
    expect(monitor.status()).toBe('degraded');
    monitor.markSuccess('mqtt', 'publish');
    expect(monitor.status()).toBe('online');
  });

  it('counts a channel added later, announcing the change without a cause', () => {
    const { monitor, clock, events } = make({ offlineAfterFailures: 1 });
    monitor.markFailure('api', 'poll', 'x');
    expect(monitor.status()).toBe('offline');
    events.length = 0;
    monitor.addChannel('mqtt');
    monitor.addChannel('mqtt');
    expect(monitor.status()).toBe('degraded');
    // No cause at all (not an undefined one): no mark changed it.
    expect(events).toStrictEqual([['status', { from: 'offline', to: 'degraded', at: clock.now() }]]);
  });

  it('adding a channel it already knows changes nothing: an offline one stays offline with its counts', () => {
    const { monitor, events } = make({ offlineAfterFailures: 1 });
    monitor.markFailure('api', 'poll', 'x');
    events.length = 0;
    monitor.addChannel('api');
    expect(monitor.channelStatus('api')).toBe('offline');
    expect(monitor.status()).toBe('offline');
    expect(monitor.health().channels.api).toMatchObject({ consecutiveFailures: 1, failures: { poll: 1 }, lastError: 'x' });
    expect(events).toEqual([]);
  });

  it('counts its uptime from its own start, not from the clock origin', async () => {
    const clock = new FakeClock(T0);
    await clock.advance(5_000);
    const monitor = new ConnectionMonitor({ clock, channels: ['api'] });
    await clock.advance(2_000);
    expect(monitor.health().uptime).toBe(2_000);
  });

  it('knows no channel when given none', () => {
    const monitor = new ConnectionMonitor({ clock: new FakeClock(T0) });
    expect(monitor.channelNames).toEqual([]);
    expect(monitor.health().channels).toEqual({});
    monitor.markFailure('api', 'poll', 'x');
    monitor.markFailure('api', 'poll', 'x');
    monitor.markFailure('api', 'poll', 'x');
    // api is the only channel, so the agent is offline (a phantom second channel would say degraded).
    expect(monitor.status()).toBe('offline');
  });

  it('a success on a channel that is online already announces nothing', () => {
    const { monitor, events } = make();
    monitor.markSuccess('api', 'poll');
    monitor.markSuccess('api', 'report');
    expect(events).toEqual([]);
    expect(monitor.health().channels.api?.lastSuccess).toEqual({ poll: T0, report: T0 });
  });

  it('a first mark on a new channel compares the overall status before and after, once', () => {
    const { monitor, events } = make({ offlineAfterFailures: 1 });
    monitor.markFailure('api', 'poll', 'x');
    events.length = 0;
    // Knowing mqtt (online) and failing it happen in one mark: offline stays offline, no flicker through degraded.
    monitor.markFailure('mqtt', 'publish', 'y');
    expect(monitor.status()).toBe('offline');
    expect(events.filter(([n]) => n === 'status')).toEqual([]);
    expect(events.map(([n]) => n)).toEqual(['channel', 'outage-started']);
  });
});

describe('health()', () => {
  it('has the ConnectionHealth fields of PROTOCOL.md, named as in the seed', async () => {
    const { monitor, clock } = make({ channels: ['api', 'mqtt'] });
    await clock.advance(1000);
    monitor.markSuccess('api', 'poll');
    const pollAt = clock.now();
    await clock.advance(1000);
    monitor.markFailure('api', 'report', '503 Service Unavailable', 'answer');
    monitor.markFailure('mqtt', 'report', 'not connected');
    monitor.markFailure('mqtt', 'poll', 'not connected');
    monitor.markSuccess('mqtt', 'report');
    const reportAt = clock.now();
    await clock.advance(500);

    const h = monitor.health();
    expect(Object.keys(h).sort()).toEqual(
      ['channels', 'lastPollSuccess', 'lastReportSuccess', 'offlineSince', 'outages', 'pollFailures', 'queue', 'reportFailures', 'status', 'uptime'].sort(),
    );
    expect(h).toEqual({
      status: 'degraded',
      uptime: 2500,
      lastPollSuccess: pollAt,
      lastReportSuccess: reportAt,
      pollFailures: 1,
      reportFailures: 2,
      offlineSince: null,
      channels: {
        api: {
          status: 'degraded',
          consecutiveFailures: 1,
          failures: { report: 1 },
          lastSuccess: { poll: pollAt },
          lastError: '503 Service Unavailable',
          lastFailureKind: 'answer',
          offlineSince: null,
        },
        mqtt: {
          status: 'online',
          consecutiveFailures: 0,
          failures: { report: 1, poll: 1 },
          lastSuccess: { report: reportAt },
          lastError: 'not connected',
          lastFailureKind: 'transport',
          offlineSince: null,
        },
      },
      outages: [],
      queue: { depth: 0, bytes: 0, oldestAgeMs: 0, dropped: 0, expired: 0 },
    });
  });

  it('carries the queue stats it is given, and copies rather than exposes its state', () => {
    const { monitor } = make({ offlineAfterFailures: 1 });
    const queue = { depth: 12, bytes: 3400, oldestAgeMs: 60_000, dropped: 1, expired: 2 };
    monitor.markFailure('api', 'poll', 'x');
    const h = monitor.health({ queue });
    expect(h.queue).toEqual(queue);
    h.outages[0]!.cause = 'tampered';
    h.channels.api!.failures.poll = 99;
    expect(monitor.health().outages[0]?.cause).toBe('poll: x');
    expect(monitor.health().channels.api?.failures.poll).toBe(1);
  });

  it('keeps a bounded outage history, most recent first, the ongoing one included', async () => {
    const { monitor, clock } = make({ offlineAfterFailures: 1, maxOutagesKept: 3 });
    for (let i = 1; i <= 5; i++) {
      monitor.markFailure('api', 'poll', `outage ${i}`);
      await clock.advance(1000);
      monitor.markSuccess('api', 'poll');
      await clock.advance(1000);
    }
    monitor.markFailure('api', 'poll', 'outage 6');
    const outages = monitor.health().outages;
    expect(outages.map((o) => o.cause)).toEqual(['poll: outage 6', 'poll: outage 5', 'poll: outage 4']);
    expect(outages).toHaveLength(3); // exactly maxOutagesKept, not one fewer
    expect(outages[0]).toMatchObject({ end: null, durationMs: null });
    expect(outages[1]).toMatchObject({ durationMs: 1000, end: outages[1]!.start + 1000 });
  });
});

describe('resilience of the monitor itself', () => {
  it('a throwing listener neither stops the other listeners nor the state change', () => {
    const logger = silentLogger();
    const { monitor } = make({ offlineAfterFailures: 1, logger });
    const seen: string[] = [];
    monitor.on('channel', () => {
      throw new Error('subscriber bug');
    });
    monitor.on('channel', (e) => seen.push(e.to));
    expect(() => monitor.markFailure('api', 'poll', 'x')).not.toThrow();
    expect(seen).toEqual(['offline']);
    expect(monitor.channelStatus('api')).toBe('offline');
    expect(logger.errors).toEqual([expect.stringContaining('subscriber bug')]);
    expect(logger.lines.find((l) => l.level === 'error')?.fields).toEqual({ err: expect.objectContaining({ message: 'subscriber bug' }), event: 'channel' });
  });

  it('without a logger, turns its errors (and only those) into process warnings', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const broken: OutageLog = {
        open: () => {
          throw new Error('SQLITE_FULL');
        },
        close: () => undefined,
        recent: () => [],
        openOutages: () => [],
      };
      const { monitor } = make({ offlineAfterFailures: 1, outageLog: broken });
      monitor.markFailure('api', 'poll', 'x'); // an error (the log) and a warn (offline)
      monitor.markSuccess('api', 'poll'); // an info (back online)
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.map((w) => [w.name, w.message])).toEqual([
        ['ConnectionMonitorWarning', 'could not record the start of the api outage: SQLITE_FULL'],
      ]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('once() and the returned unsubscribe work', () => {
    const { monitor } = make();
    const seen: string[] = [];
    monitor.once('channel', (e) => seen.push(`once:${e.to}`));
    const off = monitor.on('channel', (e) => seen.push(`on:${e.to}`));
    monitor.markFailure('api', 'poll', 'x');
    off();
    monitor.markSuccess('api', 'poll');
    expect(seen).toEqual(['once:degraded', 'on:degraded']);
    expect(monitor.listenerCount('channel')).toBe(1); // the recorder of make()
  });

  it('logs when a channel goes offline, with the cause, and when it is back, with the duration', async () => {
    const logger = silentLogger();
    const { monitor, clock } = make({ offlineAfterFailures: 2, logger });
    monitor.markFailure('api', 'poll', 'ECONNREFUSED');
    await clock.advance(1_000);
    monitor.markFailure('api', 'report', 'timeout');
    await clock.advance(4_000);
    monitor.markSuccess('api', 'poll');
    expect(logger.lines).toEqual([
      { level: 'warn', fields: { channel: 'api', cause: 'poll: ECONNREFUSED', since: T0 }, msg: 'api is offline (poll: ECONNREFUSED)' },
      { level: 'info', fields: { channel: 'api', durationMs: 5_000 }, msg: 'api is back online after 5000 ms' },
    ]);
  });

  it('logs a failed write of an outage end, with the channel, and carries on', () => {
    const logger = silentLogger();
    const log: OutageLog = {
      open: () => 7,
      close: () => {
        throw new Error('SQLITE_READONLY');
      },
      recent: () => [],
      openOutages: () => [],
    };
    const { monitor } = make({ offlineAfterFailures: 1, outageLog: log, logger });
    monitor.markFailure('api', 'poll', 'x');
    monitor.markSuccess('api', 'poll');
    expect(monitor.status()).toBe('online');
    expect(logger.lines.filter((l) => l.level === 'error')).toEqual([
      { level: 'error', fields: { err: expect.objectContaining({ message: 'SQLITE_READONLY' }), channel: 'api' }, msg: 'could not record the end of the api outage: SQLITE_READONLY' },
    ]);
  });

  it('starts without history, and says so, when the outage log cannot be read', () => {
    const logger = silentLogger();
    const log: OutageLog = {
      open: () => 1,
      close: () => undefined,
      recent: () => {
        throw new Error('SQLITE_CORRUPT');
      },
      openOutages: () => [],
    };
    const { monitor } = make({ outageLog: log, logger });
    expect(monitor.status()).toBe('online');
    expect(monitor.health().outages).toEqual([]);
    expect(logger.lines).toEqual([
      {
        level: 'error',
        fields: { err: expect.objectContaining({ message: 'SQLITE_CORRUPT' }) },
        msg: 'could not read the outage log; starting without its history: SQLITE_CORRUPT',
      },
    ]);
  });

  it('keeps working when the outage log fails', () => {
    const logger = silentLogger();
    const broken: OutageLog = {
      open: () => {
        throw new Error('SQLITE_FULL');
      },
      close: () => undefined,
      recent: () => [],
      openOutages: () => [],
    };
    const { monitor } = make({ offlineAfterFailures: 1, outageLog: broken, logger });
    monitor.markFailure('api', 'poll', 'x');
    expect(monitor.channelStatus('api')).toBe('offline');
    expect(monitor.health().outages).toHaveLength(1);
    monitor.markSuccess('api', 'poll');
    expect(monitor.status()).toBe('online');
    expect(logger.errors).toEqual([expect.stringContaining('SQLITE_FULL')]);
    expect(logger.lines.find((l) => l.level === 'error')?.fields).toEqual({ err: expect.objectContaining({ message: 'SQLITE_FULL' }), channel: 'api' });
  });
});

describe('persistence across restarts', () => {
  let dir: string;
  let path: string;
  const stores: Store[] = [];
  const openStore = (clock: FakeClock): Store => {
    const store = Store.open({ path, logger: pino({ level: 'silent' }), clock });
    stores.push(store);
    return store;
  };

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'monitor-'));
    path = join(dir, 'agent.db');
  });

  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('restores an open outage: the channel starts offline since the stored start', async () => {
    const clock1 = new FakeClock(T0);
    const store1 = openStore(clock1);
    const first = new ConnectionMonitor({ clock: clock1, channels: ['api', 'mqtt'], outageLog: new SqliteOutageLog(store1) });
    for (let i = 0; i < 3; i++) first.markFailure('mqtt', 'publish', 'ECONNREFUSED');
    await clock1.advance(500);
    const t1 = T0 + 500;
    for (let i = 0; i < 3; i++) {
      first.markFailure('api', 'poll', 'ENOTFOUND');
      await clock1.advance(1000);
    }
    expect(first.status()).toBe('offline');
    store1.close();

    // The agent comes back an hour later: a new process, so monotonic time starts again at 0.
    const clock2 = new FakeClock(T0 + HOUR);
    const second = new ConnectionMonitor({ clock: clock2, channels: ['api'], outageLog: new SqliteOutageLog(openStore(clock2)) });
    expect(second.channelStatus('api')).toBe('offline');
    expect(second.channelStatus('mqtt')).toBe('offline'); // known from the log though not configured
    expect(second.status()).toBe('offline');
    expect(second.offlineSince()).toBe(t1);
    expect(second.offlineDurationMs()).toBe(HOUR - 500);
    expect(second.health().channels.mqtt?.offlineSince).toBe(T0);
    expect(second.health().channels.api).toEqual({
      status: 'offline',
      consecutiveFailures: 3,
      failures: {},
      lastSuccess: {},
      lastError: 'ENOTFOUND',
      lastFailureKind: 'transport',
      offlineSince: t1,
    });
    expect(second.health().outages.map((o) => o.cause).sort()).toEqual(['poll: ENOTFOUND', 'publish: ECONNREFUSED']);

    const ended: ConnectionMonitorEvents['outage-ended'][] = [];
    second.on('outage-ended', (o) => ended.push(o));
    await clock2.advance(5000);
    second.markSuccess('api', 'poll');
    expect(ended).toEqual([{ channel: 'api', start: t1, end: T0 + HOUR + 5000, durationMs: HOUR + 4500, cause: 'poll: ENOTFOUND' }]);
    expect(second.status()).toBe('degraded');

    // A third start sees the api outage closed with its full length, and mqtt still open.
    const clock3 = new FakeClock(T0 + 2 * HOUR);
    const third = new ConnectionMonitor({ clock: clock3, outageLog: new SqliteOutageLog(openStore(clock3)) });
    expect(third.channelStatus('api')).toBeUndefined();
    expect(third.channelStatus('mqtt')).toBe('offline');
    const apiOutage = third.health().outages.find((o) => o.channel === 'api');
    expect(apiOutage).toEqual({ channel: 'api', start: t1, end: T0 + HOUR + 5000, durationMs: HOUR + 4500, cause: 'poll: ENOTFOUND' });
  });

  it('shows the error of a restored outage as stored when its cause names no operation', () => {
    const clock = new FakeClock(T0 + HOUR);
    const log = new SqliteOutageLog(openStore(clock));
    log.open('api', T0, 'connection reset');
    log.open('mqtt', T0, ': half a cause');
    const monitor = new ConnectionMonitor({ clock, outageLog: log });
    expect(monitor.health().channels.api?.lastError).toBe('connection reset');
    expect(monitor.health().channels.mqtt?.lastError).toBe(': half a cause');
  });

  it('of two open outages of one channel keeps the older and closes the other', () => {
    const clock = new FakeClock(T0 + HOUR);
    const store = openStore(clock);
    const log = new SqliteOutageLog(store);
    log.open('api', T0, 'poll: ECONNREFUSED');
    log.open('api', T0 + 1000, 'report: timeout');
    const monitor = new ConnectionMonitor({ clock, outageLog: log });
    expect(monitor.channelStatus('api')).toBe('offline');
    expect(monitor.offlineSince()).toBe(T0);
    expect(monitor.health().channels.api?.lastError).toBe('ECONNREFUSED');
    expect(log.openOutages().map((o) => o.cause)).toEqual(['poll: ECONNREFUSED']);
  });

  it('logs a duplicate open outage it cannot close, and still starts offline from the older', () => {
    const logger = silentLogger();
    const open = [
      { id: 1, channel: 'api', start: T0, end: null, durationMs: null, cause: 'poll: ECONNREFUSED' },
      { id: 2, channel: 'api', start: T0 + 1000, end: null, durationMs: null, cause: 'report: timeout' },
    ];
    const log: OutageLog = {
      open: () => 3,
      close: () => {
        throw new Error('SQLITE_BUSY');
      },
      recent: () => open,
      openOutages: () => open,
    };
    const monitor = new ConnectionMonitor({ clock: new FakeClock(T0 + HOUR), outageLog: log, logger });
    expect(monitor.offlineSince()).toBe(T0);
    expect(logger.lines).toEqual([
      { level: 'error', fields: { err: expect.objectContaining({ message: 'SQLITE_BUSY' }) }, msg: 'could not close a duplicate open outage: SQLITE_BUSY' },
    ]);
  });

  it('restores a channel that was online as online, with the outage history', async () => {
    const clock1 = new FakeClock(T0);
    const first = new ConnectionMonitor({ clock: clock1, offlineAfterFailures: 1, outageLog: new SqliteOutageLog(openStore(clock1)) });
    first.markFailure('api', 'poll', 'x');
    await clock1.advance(3000);
    first.markSuccess('api', 'poll');

    const clock2 = new FakeClock(T0 + HOUR);
    const second = new ConnectionMonitor({ clock: clock2, channels: ['api'], outageLog: new SqliteOutageLog(openStore(clock2)) });
    expect(second.status()).toBe('online');
    expect(second.health().outages).toEqual([{ channel: 'api', start: T0, end: T0 + 3000, durationMs: 3000, cause: 'poll: x' }]);
  });
});
