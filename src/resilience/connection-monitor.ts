import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import type { OutageLog, OutageRecord } from './outage-log.js';

/**
 * What the agent knows about its way to the cloud, from the outcome of every transport operation.
 * Each channel (the HTTP device API, the MQTT session, ...) counts consecutive failures:
 * 0 is `online`, 1 to threshold-1 is `degraded`, threshold or more is `offline`. The overall status is
 * `online` when every known channel is online, `offline` when every known channel is offline, and
 * `degraded` in between. It holds no timers and never pauses anything itself: the degradation
 * controller subscribes to its events.
 */

export type ChannelStatus = 'online' | 'degraded' | 'offline';
export type OverallStatus = ChannelStatus;
/** The operations the seed's health fields name, plus any other a transport reports. */
export type Operation = 'poll' | 'report' | (string & {});

export interface Outage {
  channel: string;
  /** Wall time of the first failure of the streak that took the channel offline. */
  start: number;
  /** Wall time of the success that ended it; null while it lasts. */
  end: number | null;
  /** Measured on the monotonic clock, so a wall-clock step during the outage does not distort it. */
  durationMs: number | null;
  /** "<operation>: <error>" of that first failure. */
  cause: string;
}

export interface QueueStats {
  depth: number;
  bytes: number;
  oldestAgeMs: number;
  dropped: number;
  expired: number;
}

export interface ChannelHealth {
  status: ChannelStatus;
  consecutiveFailures: number;
  /** Failures per operation since the monitor started. */
  failures: Record<string, number>;
  /** Wall time of the latest success per operation; an operation that never succeeded is absent. */
  lastSuccess: Record<string, number>;
  lastError: string | null;
  /**
   * Whether the latest failure was a transport failure (no connection, timeout), an answer (the
   * peer said 5xx/429...) or a refusal of the credentials (`auth`: an MQTT broker refused the
   * username or password; only a fix on either side ends it). An answer or a refusal proves the way
   * is open, so the probe does not wake loops for them.
   */
  lastFailureKind: FailureKind | null;
  /** Wall time of the first failure of the current outage; null when not offline. */
  offlineSince: number | null;
}

export type FailureKind = 'transport' | 'answer' | 'auth';

/** PROTOCOL.md's ConnectionHealth. `outages[].channel` is an addition to the seed's fields. */
export interface ConnectionHealth {
  status: OverallStatus;
  /** Milliseconds since the monitor started. */
  uptime: number;
  lastPollSuccess: number;
  lastReportSuccess: number;
  pollFailures: number;
  reportFailures: number;
  offlineSince: number | null;
  channels: Record<string, ChannelHealth>;
  /** Most recent start first, the ongoing ones included (end null), at most `maxOutagesKept`. */
  outages: Outage[];
  queue: QueueStats;
}

export interface ChannelEvent {
  channel: string;
  from: ChannelStatus;
  to: ChannelStatus;
  operation: Operation;
  /** The error of the failure that caused the transition; absent on a success. */
  error?: string;
  at: number;
}

export interface StatusCause {
  channel: string;
  operation: Operation;
  error?: string;
}

export interface StatusEvent {
  from: OverallStatus;
  to: OverallStatus;
  at: number;
  /** The mark that changed it; absent when adding a channel did. */
  cause?: StatusCause;
}

/**
 * Emitted in this order for one mark: `channel`, then `outage-started` / `outage-ended`, then
 * `status`. Every listener runs after the monitor's state is updated, so a listener may call back
 * into the monitor and sees the new state.
 */
export interface ConnectionMonitorEvents {
  channel: ChannelEvent;
  status: StatusEvent;
  'outage-started': Outage;
  'outage-ended': Outage;
}

/** The little of a logger the monitor uses; a pino Logger fits. */
export interface MonitorLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export interface ConnectionMonitorOptions {
  clock: Clock;
  /** Consecutive failures on a channel before it counts as offline (`settings.offline.offlineAfterFailures`). */
  offlineAfterFailures?: number;
  /** Persists outages; without it they live in memory only and a restart forgets them. */
  outageLog?: OutageLog;
  /** Channels known from the start, e.g. ['api', 'mqtt'], so the overall status counts them before their first mark. */
  channels?: string[];
  /** Outages kept in memory and shown in health(). */
  maxOutagesKept?: number;
  /** Outages and failures of listeners or of the outage log; without it, the latter become process warnings. */
  logger?: MonitorLogger;
}

interface Streak {
  wall: number;
  mono: number;
  operation: Operation;
  error: string;
}

interface OpenOutage {
  record: Outage;
  id: number | undefined;
  /** Monotonic time of the first failure; for a restored outage, derived from the stored wall start. */
  monoStart: number;
}

interface ChannelState {
  consecutiveFailures: number;
  status: ChannelStatus;
  failures: Map<string, number>;
  lastSuccess: Map<string, number>;
  lastError: string | null;
  lastFailureKind: FailureKind | null;
  streak: Streak | null;
  outage: OpenOutage | null;
}

/** Errors longer than this are cut, so a chatty error cannot bloat reports or the outage table. */
const MAX_ERROR_CHARS = 500;

export class ConnectionMonitor extends TypedEmitter<ConnectionMonitorEvents> {
  readonly offlineAfterFailures: number;
  readonly maxOutagesKept: number;
  private readonly clock: Clock;
  private readonly outageLog: OutageLog | undefined;
  private readonly logger: MonitorLogger | undefined;
  private readonly startedMono: number;
  private readonly channels = new Map<string, ChannelState>();
  /** Most recent start first. */
  private outages: Outage[] = [];

  constructor(opts: ConnectionMonitorOptions) {
    super();
    const threshold = opts.offlineAfterFailures ?? 3;
    const kept = opts.maxOutagesKept ?? 50;
    if (!Number.isInteger(threshold) || threshold < 1) {
      throw new AgentError('MONITOR_OPTIONS_INVALID', `connection monitor offlineAfterFailures: expected an integer >= 1, got ${String(threshold)}`);
    }
    if (!Number.isInteger(kept) || kept < 1) {
      throw new AgentError('MONITOR_OPTIONS_INVALID', `connection monitor maxOutagesKept: expected an integer >= 1, got ${String(kept)}`);
    }
    this.clock = opts.clock;
    this.offlineAfterFailures = threshold;
    this.maxOutagesKept = kept;
    this.outageLog = opts.outageLog;
    this.logger = opts.logger;
    this.startedMono = opts.clock.monotonic();
    for (const name of opts.channels ?? []) this.channels.set(name, newChannel());
    this.restore();
  }

  /** Makes a channel known (online until it fails). Does nothing for a known one. */
  addChannel(channel: string): void {
    if (this.channels.has(channel)) return;
    const before = this.status();
    this.channels.set(channel, newChannel());
    this.emitStatusChange(before, undefined);
  }

  get channelNames(): string[] {
    return [...this.channels.keys()];
  }

  /** The kind of the channel's latest failure (null before any). */
  lastFailureKind(channel: string): FailureKind | null {
    return this.channels.get(channel)?.lastFailureKind ?? null;
  }

  markSuccess(channel: string, operation: Operation): void {
    const before = this.status();
    const ch = this.channel(channel);
    const at = this.clock.now();
    ch.lastSuccess.set(operation, at);
    ch.consecutiveFailures = 0;
    ch.streak = null;
    const from = ch.status;
    ch.status = 'online';
    if (from !== 'online') this.emit('channel', { channel, from, to: 'online', operation, at });
    if (ch.outage) this.endOutage(ch, ch.outage, at);
    this.emitStatusChange(before, { channel, operation });
  }

  markFailure(channel: string, operation: Operation, error: string, kind: FailureKind = 'transport'): void {
    const before = this.status();
    const ch = this.channel(channel);
    const at = this.clock.now();
    const message = error.length > MAX_ERROR_CHARS ? `${error.slice(0, MAX_ERROR_CHARS)}…` : error;
    if (ch.streak === null) ch.streak = { wall: at, mono: this.clock.monotonic(), operation, error: message };
    ch.consecutiveFailures++;
    ch.failures.set(operation, (ch.failures.get(operation) ?? 0) + 1);
    ch.lastError = message;
    ch.lastFailureKind = kind;
    const from = ch.status;
    const to = this.statusOf(ch.consecutiveFailures);
    ch.status = to;
    if (from !== to) this.emit('channel', { channel, from, to, operation, error: message, at });
    if (to === 'offline' && !ch.outage) this.startOutage(channel, ch, ch.streak);
    this.emitStatusChange(before, { channel, operation, error: message });
  }

  /** Overall: online when every known channel is; offline when every known channel is; else degraded. No channels: online. */
  status(): OverallStatus {
    let online = 0;
    let offline = 0;
    for (const ch of this.channels.values()) {
      if (ch.status === 'online') online++;
      else if (ch.status === 'offline') offline++;
    }
    if (online === this.channels.size) return 'online';
    if (offline === this.channels.size) return 'offline';
    return 'degraded';
  }

  /** Undefined for a channel the monitor does not know. */
  channelStatus(channel: string): ChannelStatus | undefined {
    return this.channels.get(channel)?.status;
  }

  /**
   * True unless the overall status is offline: at least one channel still works. As in the seed,
   * where isOnline turned false only after the failure threshold, `degraded` counts as online.
   */
  isOnline(): boolean {
    return this.status() !== 'offline';
  }

  /**
   * Wall time since which the agent has had no working channel, or null when not offline: the
   * start of the latest-starting outage among the channels, i.e. the first failure of the last
   * channel to go. Backdated to the first failure like a channel's, so it survives restarts and
   * agrees with a single channel's offlineSince.
   */
  offlineSince(): number | null {
    // Stryker disable next-line ConditionalExpression: with no channel the status is online, so the first test returns already
    if (this.status() !== 'offline' || this.channels.size === 0) return null;
    let latest = -Infinity;
    // Stryker disable next-line UnaryOperator: an offline channel always has an outage (startOutage, restore), so the fallback is never taken
    for (const ch of this.channels.values()) latest = Math.max(latest, ch.outage?.record.start ?? -Infinity);
    return Number.isFinite(latest) ? latest : null;
  }

  /**
   * How long the agent has been offline by the monotonic clock (0 when not offline). Use this rather
   * than `now() - offlineSince()` for timeouts: a wall-clock step cannot shorten or stretch it.
   */
  offlineDurationMs(): number {
    // Stryker disable next-line ConditionalExpression: with no channel the status is online, so the first test returns already
    if (this.status() !== 'offline' || this.channels.size === 0) return 0;
    let latest = -Infinity;
    // Stryker disable next-line UnaryOperator: an offline channel always has an outage (startOutage, restore), so the fallback is never taken
    for (const ch of this.channels.values()) latest = Math.max(latest, ch.outage?.monoStart ?? -Infinity);
    return Number.isFinite(latest) ? Math.max(0, this.clock.monotonic() - latest) : 0;
  }

  health(extra: { queue?: QueueStats } = {}): ConnectionHealth {
    const channels: Record<string, ChannelHealth> = {};
    let lastPollSuccess = 0;
    let lastReportSuccess = 0;
    let pollFailures = 0;
    let reportFailures = 0;
    for (const [name, ch] of this.channels) {
      lastPollSuccess = Math.max(lastPollSuccess, ch.lastSuccess.get('poll') ?? 0);
      lastReportSuccess = Math.max(lastReportSuccess, ch.lastSuccess.get('report') ?? 0);
      pollFailures += ch.failures.get('poll') ?? 0;
      reportFailures += ch.failures.get('report') ?? 0;
      channels[name] = {
        status: ch.status,
        consecutiveFailures: ch.consecutiveFailures,
        failures: Object.fromEntries(ch.failures),
        lastSuccess: Object.fromEntries(ch.lastSuccess),
        lastError: ch.lastError,
        lastFailureKind: ch.lastFailureKind,
        // Stryker disable next-line ConditionalExpression: only an offline channel has an outage, so both sides give null otherwise
        offlineSince: ch.status === 'offline' ? (ch.outage?.record.start ?? null) : null,
      };
    }
    return {
      status: this.status(),
      uptime: Math.round(Math.max(0, this.clock.monotonic() - this.startedMono)),
      lastPollSuccess,
      lastReportSuccess,
      pollFailures,
      reportFailures,
      offlineSince: this.offlineSince(),
      channels,
      outages: this.outages.map((o) => ({ ...o })),
      queue: { ...(extra.queue ?? { depth: 0, bytes: 0, oldestAgeMs: 0, dropped: 0, expired: 0 }) },
    };
  }

  private channel(name: string): ChannelState {
    let ch = this.channels.get(name);
    if (!ch) {
      ch = newChannel();
      this.channels.set(name, ch);
    }
    return ch;
  }

  private statusOf(consecutiveFailures: number): ChannelStatus {
    // Stryker disable next-line ConditionalExpression: only markFailure asks, after counting a failure: never 0
    if (consecutiveFailures === 0) return 'online';
    return consecutiveFailures >= this.offlineAfterFailures ? 'offline' : 'degraded';
  }

  private emitStatusChange(before: OverallStatus, cause: StatusCause | undefined): void {
    const after = this.status();
    if (after === before) return;
    const event: StatusEvent = { from: before, to: after, at: this.clock.now() };
    if (cause) event.cause = cause;
    this.emit('status', event);
  }

  private startOutage(channel: string, ch: ChannelState, streak: Streak): void {
    const record: Outage = { channel, start: streak.wall, end: null, durationMs: null, cause: `${streak.operation}: ${streak.error}` };
    let id: number | undefined;
    try {
      id = this.outageLog?.open(channel, record.start, record.cause);
    } catch (err) {
      // The monitor keeps counting in memory; a full or broken disk must not blind it.
      this.report('error', { err, channel }, `could not record the start of the ${channel} outage: ${errorMessage(err)}`);
    }
    ch.outage = { record, id, monoStart: streak.mono };
    this.remember(record);
    this.report('warn', { channel, cause: record.cause, since: record.start }, `${channel} is offline (${record.cause})`);
    this.emit('outage-started', { ...record });
  }

  private endOutage(ch: ChannelState, outage: OpenOutage, at: number): void {
    ch.outage = null;
    const record = outage.record;
    record.end = at;
    record.durationMs = Math.max(0, Math.round(this.clock.monotonic() - outage.monoStart));
    if (outage.id !== undefined) {
      try {
        this.outageLog?.close(outage.id, at, record.durationMs);
      } catch (err) {
        this.report('error', { err, channel: record.channel }, `could not record the end of the ${record.channel} outage: ${errorMessage(err)}`);
      }
    }
    this.report('info', { channel: record.channel, durationMs: record.durationMs }, `${record.channel} is back online after ${record.durationMs} ms`);
    this.emit('outage-ended', { ...record });
  }

  private remember(record: Outage): void {
    this.outages.push(record);
    this.outages.sort((a, b) => b.start - a.start);
    // Stryker disable next-line EqualityOperator: cutting a list to the length it has changes nothing
    if (this.outages.length > this.maxOutagesKept) this.outages.length = this.maxOutagesKept;
  }

  /**
   * Takes back what the log knew when the agent stopped: recent outages for health(), and every
   * outage still open, whose channel starts offline with its stored start, so offline time spans
   * the restart. The failure counters are not persisted: a restored channel counts as having the
   * threshold's worth of consecutive failures, the fewest that made it offline.
   */
  private restore(): void {
    const log = this.outageLog;
    if (!log) return;
    let recent: OutageRecord[];
    let open: OutageRecord[];
    try {
      recent = log.recent(this.maxOutagesKept);
      open = log.openOutages();
    } catch (err) {
      this.report('error', { err }, `could not read the outage log; starting without its history: ${errorMessage(err)}`);
      return;
    }
    const byId = new Map<number, Outage>();
    for (const r of recent) {
      const outage: Outage = { channel: r.channel, start: r.start, end: r.end, durationMs: r.durationMs, cause: r.cause };
      byId.set(r.id, outage);
      this.outages.push(outage);
    }
    const nowWall = this.clock.now();
    const nowMono = this.clock.monotonic();
    for (const r of open) {
      const ch = this.channel(r.channel);
      if (ch.outage) {
        // Two open outages for one channel (two agents on one database, or a bug): keep the older, close the other.
        this.closeQuietly(log, r.id, nowWall);
        continue;
      }
      let record = byId.get(r.id);
      if (!record) {
        record = { channel: r.channel, start: r.start, end: null, durationMs: null, cause: r.cause };
        this.remember(record);
      }
      const separator = r.cause.indexOf(': ');
      // Stryker disable next-line ConditionalExpression,EqualityOperator,MethodExpression,StringLiteral: a restored channel has its outage, so its streak is never read (startOutage runs only without one)
      const operation = separator > 0 ? r.cause.slice(0, separator) : 'unknown';
      const error = separator > 0 ? r.cause.slice(separator + 2) : r.cause;
      // Where the first failure lies on this run's monotonic clock; the wall clock is all that was stored.
      const mono = nowMono - Math.max(0, nowWall - r.start);
      ch.streak = { wall: r.start, mono, operation, error };
      ch.consecutiveFailures = this.offlineAfterFailures;
      ch.status = 'offline';
      ch.lastError = error;
      // What kind of failure opened it was not stored; count it as a closed way so the probe's
      // first handshake wakes the loops.
      ch.lastFailureKind = 'transport';
      ch.outage = { record, id: r.id, monoStart: mono };
    }
    // Stryker disable next-line MethodExpression,ArithmeticOperator: recent() comes most recent first and remember() sorts what it adds
    this.outages.sort((a, b) => b.start - a.start);
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.report('error', { err, event }, `a listener of the connection monitor's "${event}" event failed: ${errorMessage(err)}`);
  }

  private closeQuietly(log: OutageLog, id: number, end: number): void {
    try {
      log.close(id, end);
    } catch (err) {
      this.report('error', { err }, `could not close a duplicate open outage: ${errorMessage(err)}`);
    }
  }

  private report(level: 'info' | 'warn' | 'error', fields: object, message: string): void {
    if (this.logger) this.logger[level](fields, message);
    else if (level === 'error') process.emitWarning(message, 'ConnectionMonitorWarning');
  }
}

function newChannel(): ChannelState {
  return {
    consecutiveFailures: 0,
    status: 'online',
    failures: new Map(),
    lastSuccess: new Map(),
    lastError: null,
    lastFailureKind: null,
    streak: null,
    outage: null,
  };
}

export { TypedEmitter };
