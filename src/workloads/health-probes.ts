import { execFile } from 'node:child_process';
import { request } from 'node:http';
import { connect } from 'node:net';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Healthcheck } from './app-graph.js';
import type { HealthState } from './types.js';

/**
 * The agent's health checks for native processes: an HTTP GET or a TCP connect on loopback (the
 * schema refuses any other host: a target must not make the agent probe the network), or a
 * program run without a shell. The rules are the engine's, so both runtimes read the same: `starting`
 * until the first success, `healthy` after one, `unhealthy` after `retries` failures in a row;
 * failures in the start period do not count. Every probe waits `intervalSeconds` after the last.
 */

/** Docker's defaults, so a service means the same on either runtime. */
const DEFAULTS = { intervalSeconds: 30, timeoutSeconds: 30, retries: 3, startPeriodSeconds: 0 };
const OUTPUT_MAX = 300;

export interface HealthProbesOptions {
  clock: Clock;
  logger: Logger;
  /** A verdict changed (the runtime tells the reconciler). */
  changed: (id: string) => void;
}

interface Tracked {
  ctl: AbortController;
  health: HealthState;
  log: string | null;
}

type ProbeResult = { ok: true } | { ok: false; reason: string };

export class HealthProbes {
  private readonly tracked = new Map<string, Tracked>();

  constructor(private readonly o: HealthProbesOptions) {}

  /** Starts probing a freshly started instance (replacing any earlier probing of it); no-op without a check. */
  track(id: string, check: Healthcheck | undefined): void {
    this.untrack(id);
    if (check === undefined || (check.http === undefined && check.tcp === undefined && check.command === undefined)) return;
    const t: Tracked = { ctl: new AbortController(), health: 'starting', log: null };
    this.tracked.set(id, t);
    void this.loop(id, check, t);
  }

  untrack(id: string): void {
    this.tracked.get(id)?.ctl.abort();
    this.tracked.delete(id);
  }

  /** The verdict on an instance, for its `Instance` (nothing while untracked). */
  verdict(id: string): { health?: HealthState; healthLog?: string | null } {
    const t = this.tracked.get(id);
    return t ? { health: t.health, healthLog: t.log } : {};
  }

  close(): void {
    for (const id of [...this.tracked.keys()]) this.untrack(id);
  }

  private async loop(id: string, check: Healthcheck, t: Tracked): Promise<void> {
    const c = { ...DEFAULTS, ...definedTiming(check) };
    const signal = t.ctl.signal;
    const startedAt = this.o.clock.monotonic();
    let failures = 0;
    while (!signal.aborted) {
      try {
        await this.o.clock.sleep(c.intervalSeconds * 1000, signal);
      } catch {
        return;
      }
      const r = await this.probe(check, c.timeoutSeconds * 1000, signal);
      if (signal.aborted) return;
      const before = `${t.health}:${t.log}`;
      if (r.ok) {
        failures = 0;
        t.health = 'healthy';
      } else {
        t.log = r.reason;
        const inStartPeriod = t.health === 'starting' && this.o.clock.monotonic() - startedAt < c.startPeriodSeconds * 1000;
        if (!inStartPeriod && ++failures >= c.retries) t.health = 'unhealthy';
      }
      if (`${t.health}:${t.log}` !== before) this.o.changed(id);
    }
  }

  /** One probe, cut off after `timeoutMs` on the injected clock. */
  private async probe(check: Healthcheck, timeoutMs: number, signal: AbortSignal): Promise<ProbeResult> {
    const ctl = new AbortController();
    const stop = (): void => ctl.abort(new Error('stopped'));
    signal.addEventListener('abort', stop, { once: true });
    const timer = new AbortController();
    const timeout = this.o.clock.sleep(timeoutMs, timer.signal).then(
      () => ctl.abort(new Error(`timed out after ${timeoutMs / 1000} s`)),
      () => undefined,
    );
    try {
      if (check.http !== undefined) return await httpProbe(check.http, ctl.signal);
      if (check.tcp !== undefined) return await tcpProbe(check.tcp, ctl.signal);
      return await commandProbe(check.command ?? [], ctl.signal);
    } catch (err) {
      return { ok: false, reason: ctl.signal.aborted ? errorMessage(ctl.signal.reason) : errorMessage(err) };
    } finally {
      timer.abort();
      await timeout;
      signal.removeEventListener('abort', stop);
    }
  }
}

function definedTiming(h: Healthcheck): Partial<typeof DEFAULTS> {
  const out: Partial<typeof DEFAULTS> = {};
  if (h.intervalSeconds !== undefined) out.intervalSeconds = h.intervalSeconds;
  if (h.timeoutSeconds !== undefined) out.timeoutSeconds = h.timeoutSeconds;
  if (h.retries !== undefined) out.retries = h.retries;
  if (h.startPeriodSeconds !== undefined) out.startPeriodSeconds = h.startPeriodSeconds;
  return out;
}

/** A GET that counts 2xx and 3xx as healthy, as Kubernetes does. Plain node:http: loopback only, no retries, no TLS. */
function httpProbe(url: string, signal: AbortSignal): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'GET', signal }, (res) => {
      res.resume();
      const code = res.statusCode ?? 0;
      resolve(code >= 200 && code < 400 ? { ok: true } : { ok: false, reason: `HTTP ${code} from ${url}` });
    });
    req.once('error', reject);
    req.end();
  });
}

function tcpProbe(spec: string, signal: AbortSignal): Promise<ProbeResult> {
  const i = spec.lastIndexOf(':');
  const host = spec.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(spec.slice(i + 1));
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port, signal });
    sock.once('connect', () => {
      sock.destroy();
      resolve({ ok: true });
    });
    sock.once('error', (err) => reject(new Error(`${spec}: ${errorMessage(err)}`)));
  });
}

function commandProbe(command: readonly string[], signal: AbortSignal): Promise<ProbeResult> {
  const [file, ...args] = command;
  return new Promise((resolve, reject) => {
    execFile(file as string, args, { signal, maxBuffer: 64 * 1024, shell: false }, (err, stdout, stderr) => {
      if (err === null) return resolve({ ok: true });
      const code = (err as { code?: unknown }).code;
      if (typeof code !== 'number') return reject(err);
      const output = `${stdout}${stderr}`.trim().replace(/\s+/g, ' ').slice(0, OUTPUT_MAX);
      resolve({ ok: false, reason: output ? `exit code ${code}: ${output}` : `exit code ${code}` });
    });
  });
}
