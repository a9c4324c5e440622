import * as dns from 'node:dns';
import * as net from 'node:net';
import * as os from 'node:os';
import { abortError, type Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { Backoff } from './backoff.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import type { StatusChange, StatusSource } from './degradation.js';
import type { Wakeup } from './wakeup.js';

export interface ProbeTarget {
  host: string;
  port: number;
}

export type ProbeTrigger = 'schedule' | 'interfaces';

export interface ReachableEvent {
  target: ProbeTarget;
  /** Wall-clock time the probe connected. */
  at: number;
  trigger: ProbeTrigger;
}

/** Resolves once a TCP connection to `target` is established (and closed again); rejects otherwise. */
export type ConnectFn = (target: ProbeTarget, timeoutMs: number, signal: AbortSignal) => Promise<void>;

export type InterfacesFn = () => NodeJS.Dict<os.NetworkInterfaceInfo[]>;

const DEFAULT_PORTS: Record<string, number> = {
  'http:': 80,
  'https:': 443,
  'ws:': 80,
  'wss:': 443,
  'mqtt:': 1883,
  'mqtts:': 8883,
};

/**
 * The hosts and ports to probe for a set of cloud URLs (API, MQTT broker), without duplicates.
 * http/ws → 80, https/wss → 443, mqtt → 1883, mqtts → 8883, unless the URL names a port.
 */
export function probeTargetsFromUrls(urls: readonly string[]): ProbeTarget[] {
  const targets = new Map<string, ProbeTarget>();
  for (const raw of urls) {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new AgentError('PROBE_TARGET_INVALID', `probe target "${raw}" is not a URL; expected e.g. https://api.example.com or mqtts://broker:8883`);
    }
    const port = url.port !== '' ? Number(url.port) : DEFAULT_PORTS[url.protocol];
    if (port === undefined) {
      throw new AgentError(
        'PROBE_TARGET_INVALID',
        `probe target "${raw}" has scheme "${url.protocol}" and no port; expected http, https, ws, wss, mqtt or mqtts, or an explicit port`,
      );
    }
    // URL keeps IPv6 literals in brackets; net.connect wants them bare.
    // Stryker disable next-line Regex: a bracketed hostname starts with its bracket
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (host === '') throw new AgentError('PROBE_TARGET_INVALID', `probe target "${raw}" has no host`);
    targets.set(`${host}|${port}`, { host, port });
  }
  return [...targets.values()];
}

/**
 * A real TCP connect probe: connect, then destroy the socket at once, so the cloud pays a
 * handshake and never an API call. Rejects with code PROBE_TIMEOUT after `timeoutMs`,
 * PROBE_CONNECT_FAILED on a refusal or network error, or the AbortError when `signal` aborts.
 *
 * Name lookups are shared: while a lookup of a host is still running, the next probe of that host
 * joins it instead of starting another. When the uplink is down getaddrinfo can hang for tens of
 * seconds, cannot be cancelled, and runs on libuv's small thread pool (which fs and crypto need
 * too); probing every few seconds must not fill that pool with stuck lookups.
 */
export function createTcpConnect(): ConnectFn {
  const pending = new Map<string, Array<(err: NodeJS.ErrnoException | null, address: string | dns.LookupAddress[], family?: number) => void>>();
  const lookup: net.LookupFunction = (hostname, options, callback) => {
    const key = `${hostname}|${JSON.stringify(options)}`;
    const waiting = pending.get(key);
    if (waiting) {
      waiting.push(callback);
      return;
    }
    pending.set(key, [callback]);
    dns.lookup(hostname, options, (err, address, family) => {
      const callbacks = pending.get(key) ?? [];
      pending.delete(key);
      for (const cb of callbacks) cb(err, address, family);
    });
  };

  return (target, timeoutMs, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal.aborted) return reject(abortError(signal));
      const socket = net.connect({ host: target.host, port: target.port, lookup });
      const finish = (err?: Error): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        socket.removeAllListeners();
        socket.on('error', () => undefined);
        socket.destroy();
        if (err) reject(err);
        else resolve();
      };
      const onAbort = (): void => finish(abortError(signal));
      const timer = setTimeout(
        () => finish(new AgentError('PROBE_TIMEOUT', `no TCP connection to ${target.host}:${target.port} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      socket.once('connect', () => finish());
      socket.once('error', (err) =>
        finish(new AgentError('PROBE_CONNECT_FAILED', `cannot connect to ${target.host}:${target.port}: ${errorMessage(err)}`, { cause: err })),
      );
      // Stryker disable next-line ObjectLiteral,BooleanLiteral: finish() removes it, and an AbortSignal fires once
      signal.addEventListener('abort', onAbort, { once: true });
    });
}

export interface ConnectivityProbeOptions {
  status: StatusSource;
  wakeup: Pick<Wakeup, 'wake'>;
  /** Where the cloud lives (see probeTargetsFromUrls). Each round tries them all at once. */
  targets: readonly ProbeTarget[];
  clock: Clock;
  random: Random;
  logger: Logger;
  /** First wait between probes, before jitter. */
  initialIntervalMs?: number;
  /** settings.offline.probeMaxIntervalSeconds * 1000: the longest wait between probes. */
  maxIntervalMs?: number;
  /** A probe that has not connected within this counts as failed. */
  connectTimeoutMs?: number;
  /** A wake spreads the woken loops over what is left of this (see wakeStaggerMs); WAKE_SPREAD_MS unless told. */
  wakeSpreadMs?: number;
  /** How often the network interfaces are looked at while offline. */
  interfacesPollMs?: number;
  interfaces?: InterfacesFn;
  connect?: ConnectFn;
  /**
   * Whether going offline closed the way (transport failures) rather than the cloud answering with
   * errors. When it did not, a handshake proves nothing new: the loops keep their backoff and the
   * probe wakes them only after a probe has failed and then succeeded. Default: always closed.
   */
  wayClosed?: () => boolean;
}


/**
 * While the connection is offline, checks cheaply whether the cloud can be reached again, so that
 * loops sleeping out a long backoff (on the Wakeup) can try at once instead of minutes later.
 *
 * Probes are TCP connects on a jittered schedule that starts near `initialIntervalMs` (at most) and
 * doubles onto `maxIntervalMs`, timed from the start of one round to the start of the next (a
 * black-holed round waiting out its timeout does not slow it); a change of the machine's
 * non-internal addresses (a link came up, DHCP gave an address) triggers a probe at once and
 * restarts the schedule.
 *
 * `'reachable'` is emitted, and the Wakeup woken, when a probe connects after the way was closed:
 * at the first success after the status went offline, and afterwards only after a probe has failed
 * again. A cloud that accepts TCP but still fails its API (an overload, a bad credential) is thus
 * not answered by waking every loop on every probe, which would defeat their backoff.
 */
/** The first probe of an offline stretch comes within this (then the schedule doubles). */
export const PROBE_INITIAL_INTERVAL_MS = 1000;

/** A probe that has not connected within this counts as failed (the agent does not set it). */
export const PROBE_CONNECT_TIMEOUT_MS = 3000;

/**
 * A probe's wake spreads the woken loops over what is left of this after the time since the way was
 * last seen closed (its latest failed probe, or the start of the offline stretch): the cloud came back
 * within that time, so the loops' first attempts land within about WAKE_SPREAD_MS of its return, as
 * spread as that allows. A fleet that probes at short intervals (early in an outage) would otherwise
 * come back within a few seconds of each other; one that probes at long intervals has already spent
 * most of the budget waiting for its probe. Never less than WAKE_SPREAD_MIN_MS.
 */
export const WAKE_SPREAD_MS = 38_000;
export const WAKE_SPREAD_MIN_MS = 1_000;

/**
 * A round that takes longer than this to connect found the way closed at its start: its SYN went
 * unanswered and a resend got through (the kernel's first resend comes after 1 s). Its moment of
 * success is the network's, shared by every device whose round was under way, not its own.
 */
export const SLOW_HANDSHAKE_MS = 900;

/**
 * How long ago the way may have opened, as the wake after the round that found it counts it: a round
 * that connected only after a resend (`tookMs` over SLOW_HANDSHAKE_MS) saw it closed at its own start;
 * any other counts at least its reach (`reachMs`), the step its wait was drawn under, beside the time
 * since the way was last seen closed. Exported for the fleet simulation.
 */
export function wakeSinceClosedMs(tookMs: number, sinceClosedMs: number, reachMs: number): number {
  return tookMs > SLOW_HANDSHAKE_MS ? tookMs : Math.max(sinceClosedMs, reachMs);
}

/** The stagger of a probe's wake when the way was last seen closed `sinceClosedMs` ago. */
export function wakeStaggerMs(sinceClosedMs: number, spreadMs = WAKE_SPREAD_MS): number {
  return Math.max(Math.min(WAKE_SPREAD_MIN_MS, spreadMs), spreadMs - Math.max(0, sinceClosedMs));
}

export interface ProbeEvents {
  reachable: ReachableEvent;
}

export class ConnectivityProbe extends TypedEmitter<ProbeEvents> {
  private readonly status: StatusSource;
  private readonly wakeup: Pick<Wakeup, 'wake'>;
  private readonly targets: readonly ProbeTarget[];
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly logger: Logger;
  private readonly initialIntervalMs: number;
  private readonly maxIntervalMs: number;
  private readonly connectTimeoutMs: number;
  private readonly interfacesPollMs: number;
  private readonly wakeSpreadMs: number;
  private readonly interfaces: InterfacesFn;
  private readonly connect: ConnectFn;
  private readonly wayClosed: () => boolean;
  /** Stops the current offline stretch's probing; null while not probing. */
  private episode: AbortController | null = null;
  /** Every episode not yet finished (a stopped one may still be closing its sockets). */
  private readonly running = new Set<Promise<void>>();
  private started = false;
  /** Whether the latest probe of the current offline stretch connected (false before its first). */
  private lastConnected = false;
  /** Monotonic time the way was last seen closed: the start of the latest failed probe, or the stretch's start. */
  private closedAt = 0;
  /** Whether this offline stretch has woken the loops already. */
  private woke = false;

  constructor(opts: ConnectivityProbeOptions) {
    super();
    this.status = opts.status;
    this.wakeup = opts.wakeup;
    this.targets = opts.targets;
    this.clock = opts.clock;
    this.random = opts.random;
    this.logger = opts.logger;
    this.maxIntervalMs = Math.max(1, opts.maxIntervalMs ?? 30_000);
    this.initialIntervalMs = Math.min(this.maxIntervalMs, Math.max(1, opts.initialIntervalMs ?? PROBE_INITIAL_INTERVAL_MS));
    this.wayClosed = opts.wayClosed ?? (() => true);
    this.connectTimeoutMs = Math.max(1, opts.connectTimeoutMs ?? PROBE_CONNECT_TIMEOUT_MS);
    this.interfacesPollMs = Math.max(1, opts.interfacesPollMs ?? 5000);
    this.wakeSpreadMs = Math.max(0, opts.wakeSpreadMs ?? WAKE_SPREAD_MS);
    this.interfaces = opts.interfaces ?? os.networkInterfaces;
    this.connect = opts.connect ?? createTcpConnect();
  }

  /** True while probing (the status is offline and the probe is started). */
  probing(): boolean {
    return this.episode !== null;
  }

  /**
   * True while probing when the latest probe connected: the way to the endpoint is open, so
   * requests that still fail fail beyond the handshake, where the next probes cannot see.
   */
  wayOpen(): boolean {
    return this.episode !== null && this.lastConnected;
  }

  /**
   * Follows the status source until `signal` aborts: probing starts when the status becomes
   * offline and stops when it leaves offline. The promise resolves once everything has stopped
   * (timers cleared, sockets closed, listener removed) and never rejects.
   */
  async start(signal: AbortSignal): Promise<void> {
    if (this.started) throw new AgentError('ALREADY_STARTED', 'the connectivity probe was already started');
    this.started = true;
    if (signal.aborted) return;

    const onStatus = (e: StatusChange): void => this.follow(e.to === 'offline');
    this.status.on('status', onStatus);
    this.follow(this.status.status() === 'offline');
    // Stryker disable next-line ObjectLiteral,BooleanLiteral: an AbortSignal fires 'abort' once
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    this.status.off('status', onStatus);
    this.follow(false, { stopping: true });
    // Stryker disable next-line ArrayDeclaration: an aborted episode ends within microtasks (nothing in it awaits a connect once its round is aborted)
    await Promise.all([...this.running]);
  }

  private follow(offline: boolean, o: { stopping?: boolean } = {}): void {
    if (offline && !this.episode) {
      const episode = new AbortController();
      const done: Promise<void> = this.run(episode.signal)
        .catch((err: unknown) => {
          this.logger.error({ err: errorMessage(err) }, 'connectivity probe stopped on an unexpected error');
        })
        // Stryker disable next-line ArrowFunction: only memory: the set would keep settled promises, which start()'s final wait passes at once
        .finally(() => this.running.delete(done));
      this.running.add(done);
      this.episode = episode;
      this.lastConnected = false;
      this.woke = false;
      this.closedAt = this.clock.monotonic();
      this.logger.debug({ targets: this.targets }, 'offline: probing the cloud');
    } else if (!offline && this.episode) {
      this.episode.abort();
      this.episode = null;
      // A loop's own request got through before a probe saw the way open (its offline floor ran out
      // first): the channel's other loops may still sleep out theirs, up to offlineRetryIntervalSeconds
      // after the return. Wake them as the probe would have. Not when a handshake had connected: then
      // no floor held them (offlineFloorApplies), their backoff does.
      if (!o.stopping && !this.woke && !this.lastConnected) this.wakeLoops('the channel is back: a request got through', {});
    }
  }

  /** One offline stretch: a single loop serving both the probe schedule and the interface watch. */
  private async run(signal: AbortSignal): Promise<void> {
    const schedule = probeSchedule(this.initialIntervalMs, this.maxIntervalMs, this.clock, this.random);
    // Going offline for want of a connection is the evidence that the way was closed, so the first
    // success counts. Offline because the cloud kept answering errors, it takes a failed probe first.
    let reachable = !this.wayClosed();
    let addresses = this.addressSet();
    let nextProbe = this.clock.monotonic() + schedule.next();
    // Stryker disable next-line ArithmeticOperator: a poll at once finds the addresses just read: the next one is an interval later either way
    let nextPoll = this.clock.monotonic() + this.interfacesPollMs;

    // A round's start: a black-holed round learns of its failure only at its timeout, and the way may
    // have opened while it waited, so its start is when the way was last known closed, and the next
    // round is timed from it: a black hole is probed at the same cadence as a refusal.
    let roundStart = 0;
    // `reachMs`: how far after the previous round's start this one could have come (0: not scheduled).
    const probe = async (trigger: ProbeTrigger, reachMs: number): Promise<void> => {
      roundStart = this.clock.monotonic();
      const target = await this.firstReachable(signal);
      // Stryker disable next-line ConditionalExpression: an abort makes firstReachable answer null at once, so a target here means it came first
      if (signal.aborted) return;
      this.lastConnected = target !== null;
      if (target === null) {
        reachable = false;
        this.closedAt = roundStart;
        return;
      }
      if (reachable) return;
      reachable = true;
      const now = this.clock.monotonic();
      this.reached({ target, at: this.clock.now(), trigger }, wakeSinceClosedMs(now - roundStart, now - this.closedAt, reachMs));
    };

    while (!signal.aborted) {
      const now = this.clock.monotonic();
      if (now >= nextPoll) {
        nextPoll = now + this.interfacesPollMs;
        const current = this.addressSet();
        if (current !== null && current !== addresses) {
          const first = addresses === null;
          addresses = current;
          if (!first) {
            this.logger.debug('network interfaces changed: probing now');
            await probe('interfaces', 0);
            schedule.reset();
            nextProbe = roundStart + schedule.next();
            continue;
          }
        }
      }
      if (now >= nextProbe) {
        await probe('schedule', schedule.reachMs);
        nextProbe = roundStart + schedule.next();
        continue;
      }
      await this.clock.sleep(Math.min(nextProbe, nextPoll) - now, signal).catch(() => undefined);
    }
  }

  /** Tries every target at once; the first connect wins and the others are abandoned. */
  private async firstReachable(signal: AbortSignal): Promise<ProbeTarget | null> {
    // Stryker disable next-line ConditionalExpression: without targets the round ends with null at its deadline instead: nothing is probed either way
    if (this.targets.length === 0) return null;
    const round = new AbortController();
    const stop = (): void => round.abort();
    // Stryker disable next-line ObjectLiteral,BooleanLiteral: the finally block removes it, and an AbortSignal fires once
    signal.addEventListener('abort', stop, { once: true });
    // The probe keeps its own deadline on the injected clock, whatever the connect function does.
    this.clock.sleep(this.connectTimeoutMs, round.signal).then(stop, () => undefined);
    try {
      return await new Promise<ProbeTarget | null>((resolve) => {
        let failures = 0;
        for (const target of this.targets) {
          Promise.resolve()
            .then(() => this.connect(target, this.connectTimeoutMs, round.signal))
            .then(
              () => resolve(target),
              (err: unknown) => {
                this.logger.trace({ target, err: errorMessage(err) }, 'probe failed');
                if (++failures === this.targets.length) resolve(null);
              },
            );
        }
        // Stryker disable next-line ObjectLiteral,BooleanLiteral: an AbortSignal fires 'abort' once
        round.signal.addEventListener('abort', () => resolve(null), { once: true });
      });
    } finally {
      stop();
      signal.removeEventListener('abort', stop);
    }
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.logger.warn({ err: errorMessage(err) }, `a ${event} listener threw`);
  }

  private reached(event: ReachableEvent, sinceClosedMs: number): void {
    this.emit('reachable', event);
    this.wakeLoops(`cloud reachable at ${event.target.host}:${event.target.port} (${event.trigger})`, { target: event.target, trigger: event.trigger }, sinceClosedMs);
  }

  /**
   * Wakes the channel's waiting loops, spread over what is left of the spread after `sinceClosedMs`
   * (by default since the way was last seen closed). A round that found the way counts it as at least
   * the round's reach: a round drawn over a wide range (the first at the cap is drawn over all of it)
   * finds the way at a moment of its own on each device, so a fleet that lost the way together is
   * already spread over that range, and waking each one over what is left after its own draw would
   * crowd them all before the end of the spread.
   */
  private wakeLoops(reason: string, context: Record<string, unknown>, sinceClosedMs = this.clock.monotonic() - this.closedAt): void {
    this.woke = true;
    const staggerMaxMs = wakeStaggerMs(sinceClosedMs, this.wakeSpreadMs);
    const woken = this.wakeup.wake(reason, { staggerMaxMs });
    this.logger.info({ ...context, reason, woken, staggerMaxMs: Math.round(staggerMaxMs) }, 'cloud reachable again: waking waiting loops');
  }

  /** The machine's non-internal addresses as one comparable string; null when they cannot be read. */
  private addressSet(): string | null {
    try {
      const all = this.interfaces();
      // Stryker disable next-line ArrayDeclaration: an extra constant entry is in every set alike, so comparisons do not change
      const addresses: string[] = [];
      for (const [name, infos] of Object.entries(all)) {
        for (const info of infos ?? []) if (!info.internal) addresses.push(`${name} ${info.family} ${info.address}`);
      }
      return addresses.sort().join(',');
    } catch (err) {
      this.logger.debug({ err: errorMessage(err) }, 'cannot read network interfaces');
      return null;
    }
  }
}

/** The waits between a probe's rounds over one offline stretch. */
export interface ProbeSchedule {
  /** The wait before the next round (from the start of the one before it). */
  next(): number;
  /** The longest wait the latest `next()` could have drawn: the step it was drawn under. */
  readonly reachMs: number;
  /** Back to the first step (the network interfaces changed). */
  reset(): void;
}

/**
 * The probe's schedule is the project's one backoff with spread jitter: the first wait uniform in
 * [0.1 s or less, first], where first is `maxMs` halved until it is no longer than `initialMs`, then
 * base doubling onto `maxMs` with at most a tenth taken off (no step before the cap is over half of it,
 * so the wake's spread after any of them keeps at least half of its length), so a long
 * outage settles at one probe every 0.9-1 x maxMs. Nearly even intervals are what let the wake's
 * spread (wakeStaggerMs) work: the time since the latest failed probe says how long ago the cloud may
 * have come back, and a fleet whose probes keep their phases detects a return evenly over one interval,
 * not in a crowd. The phases a doubling schedule gives a fleet that went offline together are close
 * together, though (a device with many loops on the API goes offline within seconds of losing it, as
 * every other does): the first wait at the cap is drawn over the whole of it, like the first retry of a
 * run, which spreads the phases once; the later ones keep them. Exported for the fleet simulation.
 */
export function probeSchedule(initialMs: number, maxMs: number, clock: Pick<Clock, 'monotonic' | 'now'>, random: Random): ProbeSchedule {
  const capMs = Math.max(initialMs, maxMs);
  // The cap halved until it is no longer than initialMs: the doubling then lands on the cap exactly.
  const firstMs = capMs / 2 ** Math.ceil(Math.log2(capMs / initialMs));
  const backoff = new Backoff({ minMs: firstMs, maxMs: capMs, strategy: 'spread', clock, random });
  let spreadAtCap = true;
  let reachMs = 0;
  return {
    next() {
      const step = firstMs * backoff.multiplier ** backoff.attempt;
      const atCap = step >= capMs;
      const shared = atCap && spreadAtCap;
      if (atCap) spreadAtCap = false;
      reachMs = Math.min(step, capMs);
      return backoff.failure(shared ? { shared: true } : {});
    },
    get reachMs() {
      return reachMs;
    },
    reset() {
      backoff.reset();
      spreadAtCap = true;
    },
  };
}
