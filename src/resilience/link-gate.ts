import { isIP } from 'node:net';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { BudgetView, LinkBudget } from './link-budget.js';
import { readCounters } from './link-counters.js';
import { readLinkRoute, type FileReader, type LinkRoute } from './link-route.js';

/**
 * What a batch costs on the wire beyond its stored bytes, as the carrier counts it: the batch's HTTP
 * request and answer headers and TCP acknowledgements; each message's envelope (id, channel, time),
 * its id in the answer, or a request of its own (state, job updates); and TCP/IP headers, about 5% of
 * full segments. Meant to be on the high side: it only decides whether a batch may start, and the
 * counters take over as soon as it is answered.
 */
export const WIRE_ESTIMATE = { perBatch: 2_048, perMessage: 768, factor: 1.1 } as const;

/** Re-resolve a cloud host name this often (a lookup can cost bytes on the metered link too). */
const RESOLVE_EVERY_MS = 10 * 60_000;

export interface LinkGateOptions {
  read: FileReader;
  /** meteredInterfaces: name patterns. */
  patterns: readonly string[];
  /** Channels sent while metered. */
  meteredChannels: readonly string[];
  budget: LinkBudget;
  /** Host of the cloud (an IP or a name); its route decides the link. Absent: the default route. */
  cloudHost: string | undefined;
  resolve: (host: string) => Promise<string>;
  clock: Pick<Clock, 'now' | 'monotonic' | 'sleep'>;
  logger: Logger;
  intervalMs: number;
  /** The window changed (another link, a new budget period, a batch answered): wake the flushers. */
  onChange: () => void;
}

export interface LinkState {
  iface: string | null;
  metered: boolean;
  allowedChannels: readonly string[];
  budget: BudgetView;
  /** An allowed message could not start for want of budget (until the period ends or the link changes). */
  budgetExhausted: boolean;
}

export interface LinkReservation {
  /** How many of the batch's first messages fit (all when the link is not metered). */
  count: number;
  /** Called once the batch is answered or failed. */
  release(): void;
}

/** Estimated wire bytes of `batch` (stored payload bytes each). */
export function wireEstimate(storedBytes: readonly number[]): number {
  return WIRE_ESTIMATE.perBatch + storedBytes.reduce((n, b) => n + Math.ceil(b * WIRE_ESTIMATE.factor) + WIRE_ESTIMATE.perMessage, 0);
}

/**
 * The link the cloud's traffic leaves on and what may go over it: unmetered, everything; metered, only
 * the allowed channels, within the budget. It reads the route every `intervalMs` and, while metered,
 * the interface's counters into the budget; a change of link or budget period wakes the flushers.
 * The flushers ask it before each batch (`window`, `reserve`).
 */
export class LinkGate {
  private route: LinkRoute = { iface: null, metered: false };
  private address: string | undefined;
  private resolvedAt = Number.NEGATIVE_INFINITY;
  private exhausted = false;
  private checked = false;
  private writeError: string | null = null;
  private readonly routeListeners: ((route: LinkRoute) => void)[] = [];

  constructor(private readonly o: LinkGateOptions) {
    if (o.cloudHost && isIP(o.cloudHost)) this.address = o.cloudHost;
  }

  /** `listener` hears each change of the cloud's interface (or of its metered-ness) after the first reading. */
  onRouteChange(listener: (route: LinkRoute) => void): void {
    this.routeListeners.push(listener);
  }

  /** Reads the route and the counters now; wakes the flushers when the link changed or a period began. */
  check(): void {
    const next = readLinkRoute(this.o.read, this.o.patterns, this.address);
    const changed = next.iface !== this.route.iface || next.metered !== this.route.metered;
    if (changed) {
      const msg = next.metered
        ? `the cloud is reached over a metered link (${next.iface}): only ${this.o.meteredChannels.join(', ') || 'no channels'} are sent${this.o.budget.limitBytes > 0 ? ', within the budget' : ''}; the rest waits`
        : `the cloud is reached over ${next.iface ?? 'no route'} (not metered)`;
      this.o.logger.info({ from: this.checked ? this.route.iface : undefined, to: next.iface, metered: next.metered }, msg);
      this.route = next;
      this.exhausted = false;
    }
    this.sample();
    const rolled = this.kept(() => this.o.budget.roll()) ?? false;
    if (rolled) this.exhausted = false;
    this.kept(() => this.o.budget.save());
    if (changed && this.checked) for (const l of this.routeListeners) l(next);
    if ((changed && this.checked) || rolled) this.o.onChange();
    this.checked = true;
  }

  /** undefined: not metered, send as usual. Else the channels allowed now and the stored bytes a batch may hold. */
  window(): { channels: readonly string[]; maxBytes: number } | undefined {
    if (!this.route.metered) return undefined;
    this.sample();
    const remaining = this.o.budget.remaining();
    const maxBytes = Number.isFinite(remaining) ? Math.floor((remaining - WIRE_ESTIMATE.perBatch - WIRE_ESTIMATE.perMessage) / WIRE_ESTIMATE.factor) : Number.POSITIVE_INFINITY;
    if (maxBytes <= 0) this.exhausted = true;
    return { channels: this.o.meteredChannels, maxBytes: Math.max(0, maxBytes) };
  }

  /** Takes the budget share of the longest head of `batch` that fits; count 0 when none does. */
  reserve(batch: readonly { storedBytes: number }[]): LinkReservation {
    if (!this.route.metered) return { count: batch.length, release: () => undefined };
    const remaining = this.o.budget.remaining();
    let count = 0;
    let bytes = WIRE_ESTIMATE.perBatch;
    for (const m of batch) {
      const more = Math.ceil(m.storedBytes * WIRE_ESTIMATE.factor) + WIRE_ESTIMATE.perMessage;
      if (bytes + more > remaining) break;
      bytes += more;
      count++;
    }
    if (count === 0 || !this.o.budget.reserve(bytes)) {
      this.exhausted = true;
      return { count: 0, release: () => undefined };
    }
    this.exhausted = false;
    let released = false;
    return {
      count,
      release: () => {
        if (released) return;
        released = true;
        // The real bytes first, then the estimate goes: the budget never looks larger in between.
        this.sample();
        this.o.budget.release(bytes);
        this.o.onChange();
      },
    };
  }

  /** Read now (the counters too, so the use shown is not a check interval behind). */
  state(): LinkState {
    if (this.route.metered) this.sample();
    return { iface: this.route.iface, metered: this.route.metered, allowedChannels: this.o.meteredChannels, budget: this.o.budget.view(), budgetExhausted: this.route.metered && this.exhausted };
  }

  async run(signal: AbortSignal): Promise<void> {
    try {
      while (!signal.aborted) {
        await this.refreshAddress();
        this.check();
        await this.o.clock.sleep(this.o.intervalMs, signal).catch(() => undefined);
      }
    } finally {
      this.kept(() => this.o.budget.save(true));
    }
  }

  private sample(): void {
    this.kept(() => this.o.budget.observe(this.route.metered && this.route.iface ? readCounters(this.o.read, this.route.iface) : undefined));
  }

  /**
   * Runs a step that writes the use to the database. A write that fails (a full disk) must not stop the
   * flushers that ask the gate (delivering is what frees the disk): it is logged when its reason changes,
   * and the use is written again at the next step.
   */
  private kept<T>(step: () => T): T | undefined {
    try {
      const r = step();
      if (!this.o.budget.unsaved) this.writeError = null;
      return r;
    } catch (err) {
      const msg = errorMessage(err);
      if (msg !== this.writeError) this.o.logger.warn({ err: msg }, 'the metered link\'s use could not be written; it is kept in memory and written again');
      this.writeError = msg;
      return undefined;
    }
  }

  private async refreshAddress(): Promise<void> {
    const host = this.o.cloudHost;
    if (!host || isIP(host) || this.o.clock.monotonic() - this.resolvedAt < RESOLVE_EVERY_MS) return;
    this.resolvedAt = this.o.clock.monotonic();
    try {
      this.address = await this.o.resolve(host);
    } catch (err) {
      // Offline or no DNS: the default route stands in (and the last address, if there was one).
      this.o.logger.debug({ host, err: errorMessage(err) }, 'the cloud host did not resolve; its link is the default route');
    }
  }
}
