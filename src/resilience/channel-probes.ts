import type { Clock } from '../util/clock.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import type { ConnectionMonitor, FailureKind } from './connection-monitor.js';
import type { StatusChange, StatusSource } from './degradation.js';
import { ConnectivityProbe, probeTargetsFromUrls, type ConnectFn } from './probe.js';
import { Wakeup } from './wakeup.js';

/** The little of the connection monitor a channel's probe follows. */
export type ChannelMonitor = Pick<ConnectionMonitor, 'channelStatus' | 'lastFailureKind' | 'on' | 'off'>;

/**
 * One channel of the monitor seen as a status source: offline when that channel is, whatever the
 * others do. A channel's probe follows it, so an API that is down while MQTT works (the overall
 * status then only `degraded`) is still probed.
 */
export function channelStatusSource(monitor: ChannelMonitor, channel: string): StatusSource {
  const listeners = new Map<(e: StatusChange) => void, (e: { channel: string; from: string; to: string; at: number }) => void>();
  return {
    status: () => monitor.channelStatus(channel) ?? 'online',
    on(_event, fn) {
      const relay = (e: { channel: string; from: string; to: string; at: number }): void => {
        if (e.channel === channel) fn({ from: e.from, to: e.to, at: e.at });
      };
      listeners.set(fn, relay);
      monitor.on('channel', relay);
    },
    off(_event, fn) {
      const relay = listeners.get(fn);
      if (relay) monitor.off('channel', relay);
      listeners.delete(fn);
    },
  };
}

export interface ChannelProbesOptions {
  monitor: ChannelMonitor;
  /**
   * Each channel and the URL of its endpoint, or the URLs of its endpoints (`api`: the device API;
   * `mqtt`: every broker of `mqtt.urls`, since the session moves to whichever is up): a round
   * handshakes with all of them, and any one connecting opens that channel's way.
   */
  endpoints: Record<string, string | readonly string[]>;
  clock: Clock;
  random: Random;
  logger: Logger;
  /** settings.offline.probeMaxIntervalSeconds * 1000. */
  maxIntervalMs: number;
  /** Wake stagger of each channel's Wakeup for wakes other than the probe's (default WAKE_STAGGER_MAX_MS). */
  staggerMaxMs?: number;
  /** The spread of a probe's wake (default WAKE_SPREAD_MS; see wakeStaggerMs). */
  wakeSpreadMs?: number;
  initialIntervalMs?: number;
  connect?: ConnectFn;
}

/**
 * A probe and a Wakeup per channel. The loops and sinks of a channel sleep on that channel's
 * Wakeup; when the channel is offline its probe handshakes with that channel's endpoints alone, and
 * a handshake wakes that channel's sleepers only (with the stagger). Each probe keeps its own
 * schedule, so a channel that works is never probed and a fleet's probes stay as spread as before.
 */
export class ChannelProbes {
  private readonly wakeups = new Map<string, Wakeup>();
  private readonly byChannel = new Map<string, ConnectivityProbe>();
  readonly probes: ConnectivityProbe[] = [];

  constructor(private readonly opts: ChannelProbesOptions) {
    for (const [channel, urls] of Object.entries(opts.endpoints)) {
      const monitor = opts.monitor;
      const probe = new ConnectivityProbe({
        targets: probeTargetsFromUrls(typeof urls === 'string' ? [urls] : urls),
        status: channelStatusSource(monitor, channel),
        // Offline because the endpoint answered errors (503s) or refused the credentials is not a closed way: a handshake proves nothing new.
        wayClosed: () => wayClosedBy(monitor.lastFailureKind(channel)),
        wakeup: this.wakeup(channel),
        clock: opts.clock,
        random: opts.random,
        logger: opts.logger.child({ part: `probe-${channel}`, channel }),
        maxIntervalMs: opts.maxIntervalMs,
        // Stryker disable next-line ConditionalExpression: 'true' passes undefined, which is the default; 'false' is killed by "starts each offline stretch at the initial interval it is given"
        ...(opts.initialIntervalMs !== undefined ? { initialIntervalMs: opts.initialIntervalMs } : {}),
        ...(opts.wakeSpreadMs !== undefined ? { wakeSpreadMs: opts.wakeSpreadMs } : {}),
        ...(opts.connect ? { connect: opts.connect } : {}),
      });
      this.probes.push(probe);
      this.byChannel.set(channel, probe);
    }
  }

  /** Whether the channel's probe is probing and its latest handshake connected (see ConnectivityProbe.wayOpen). */
  wayOpen(channel: string): boolean {
    return this.byChannel.get(channel)?.wayOpen() ?? false;
  }

  /** The Wakeup the channel's loops sleep on (made on first use, also for a channel without a probe). */
  wakeup(channel: string): Wakeup {
    let w = this.wakeups.get(channel);
    if (!w) {
      // Stryker disable next-line ConditionalExpression: 'true' passes undefined, which is the default; 'false' is killed by "wakes with the stagger it is given"
      w = new Wakeup({ clock: this.opts.clock, random: this.opts.random, ...(this.opts.staggerMaxMs !== undefined ? { staggerMaxMs: this.opts.staggerMaxMs } : {}) });
      this.wakeups.set(channel, w);
    }
    return w;
  }

  /** Runs every probe until `signal` aborts; resolves once all have stopped. */
  async start(signal: AbortSignal): Promise<void> {
    await Promise.all(this.probes.map((p) => p.start(signal)));
  }
}

/** Whether the channel's latest failure says the way to its endpoint is closed (a transport failure, or none known). */
export function wayClosedBy(kind: FailureKind | null): boolean {
  return kind !== 'answer' && kind !== 'auth';
}

/** What decides whether a channel's loops keep the offline floor. */
export interface OfflineFloorState {
  offline: boolean;
  lastFailureKind: FailureKind | null;
  /** The channel's probe's latest handshake of this offline stretch connected. */
  wayOpen: boolean;
}

/**
 * Whether a channel's loops wait at least the offline floor (offlineRetryIntervalSeconds) between
 * their own attempts: while the channel is offline for want of a connection and its probe has not
 * seen the way open, the probe's handshake is what wakes them when it opens. Once a handshake
 * connects and the loops still fail (a balancer that accepts and closes or never answers, a captive
 * portal), no later handshake can tell them more: their own backoff paces them, or they would be
 * back only a floor's length after the cloud.
 */
export function offlineFloorApplies(s: OfflineFloorState): boolean {
  return s.offline && s.lastFailureKind === 'transport' && !s.wayOpen;
}
