import type { AgentConfig } from '../config/schema.js';
import type { Outbox } from '../outbox/outbox.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import type { ProcessOutput } from '../workloads/runtimes/process.js';
import type { AgentLogTap } from './agent-tap.js';
import { DockerLogs, type DockerLogRuntime } from './docker-logs.js';
import type { LogStore } from './log-store.js';
import { ProcessLogs } from './process-logs.js';
import { committedLines, ServiceLog } from './service-log.js';
import { AGENT_SERVICE, type LogDropReason, type LogLine } from './types.js';

export interface LogCollectorOptions {
  config: AgentConfig['logs'];
  outbox: Pick<Outbox, 'enqueueMany'>;
  store: LogStore;
  clock: Clock;
  logger: Logger;
  docker?: DockerLogRuntime;
  process?: ProcessOutput;
  tap?: AgentLogTap;
  /** Masks secret values in the workloads' lines (not the agent's own, which never holds them). */
  mask?: (text: string) => string;
}

export interface ServiceLogStats {
  /** Lines stored for sending since the start (markers included). */
  lines: number;
  /** Lines dropped since the start, by reason. */
  dropped: Partial<Record<LogDropReason, number>>;
  /** Bytes of text waiting for the outbox. */
  backlogBytes: number;
}

export interface LogCollectorEvents {
  /** Lines of one service committed (in sequence order). */
  lines: readonly LogLine[];
}

/** The collector's event channel: followers of GET /v2/logs listen. */
export class LogEvents extends TypedEmitter<LogCollectorEvents> {
  committed(lines: readonly LogLine[]): void {
    if (lines.length > 0) this.emit('lines', lines);
  }
}

/** Whether `name` (`<app>/<service>`) matches one of the configured patterns (`*`: any run). */
export function shipsService(patterns: readonly string[], name: string): boolean {
  return patterns.some((p) => new RegExp(`^${p.split('*').map(escapeRegExp).join('.*')}$`).test(name));
}

/** A loop with nothing to do: it runs until stopped (LoopRunner restarts a loop that returns). */
function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
}

function escapeRegExp(s: string): string {
  return s.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Collects every shipped log source (docs/logs.md): the containers' logs (DockerLogs), the native
 * processes' output (ProcessLogs) and the agent's own records (AgentLogTap), each service through a
 * ServiceLog of its own, so one noisy service's limits, backlog and refusals never touch another's.
 */
export class LogCollector {
  readonly events = new LogEvents();
  private readonly logs = new Map<string, ServiceLog>();
  private readonly stats = new Map<string, { lines: number; dropped: Partial<Record<LogDropReason, number>> }>();
  private readonly docker: DockerLogs | undefined;
  private readonly shipped = new Map<string, boolean>();
  private closed = false;
  /** Stops following the processes' output and the agent's records (at `close`). */
  private readonly detach: Array<() => void> = [];

  constructor(private readonly o: LogCollectorOptions) {
    const c = o.config;
    if (o.docker) {
      this.docker = new DockerLogs({
        runtime: o.docker,
        store: o.store,
        logOf: (s) => this.logOf(s),
        clock: o.clock,
        logger: o.logger,
        maxLineBytes: c.maxLineBytes,
        syncIntervalMs: 10_000,
        retryMs: 2_000,
      });
    }
  }

  /** The log of `service`, made at its first line; undefined when the service does not ship logs. */
  logOf(service: string): ServiceLog | undefined {
    if (this.closed) return undefined;
    const log = this.logs.get(service);
    if (log) return log;
    if (!this.ships(service)) return undefined;
    const c = this.o.config;
    const stat = { lines: 0, dropped: {} as Partial<Record<LogDropReason, number>> };
    this.stats.set(service, stat);
    const made = new ServiceLog({
      service,
      store: this.o.store,
      outbox: this.o.outbox,
      clock: this.o.clock,
      logger: this.o.logger,
      rate: { linesPerSecond: c.linesPerSecond, bytesPerSecond: c.bytesPerSecond, burstSeconds: c.burstSeconds },
      chunk: { maxLines: c.chunkLines, maxBytes: 256 * 1024, windowMs: c.chunkWindowMs, maxPendingBytes: 1_048_576 },
      markerIntervalMs: c.markerIntervalSeconds * 1000,
      quiet: service === AGENT_SERVICE,
      onCommitted: (chunk, ts) => {
        stat.lines += chunk.lines.length;
        // Expanded for the local followers only when there are some.
        if (this.events.listenerCount('lines') > 0) this.events.committed(committedLines(chunk, ts));
      },
      onDropped: (reason, count) => (stat.dropped[reason] = (stat.dropped[reason] ?? 0) + count),
      onRewind: () => this.docker?.rewind(service),
      ...(this.o.mask && service !== AGENT_SERVICE ? { mask: this.o.mask } : {}),
    });
    this.logs.set(service, made);
    return made;
  }

  private ships(service: string): boolean {
    let yes = this.shipped.get(service);
    if (yes === undefined) {
      yes = this.o.config.enabled && (service === AGENT_SERVICE ? this.o.config.agentLevel !== 'off' : shipsService(this.o.config.services, service));
      this.shipped.set(service, yes);
    }
    return yes;
  }

  /**
   * Follows the containers until `signal` aborts. The processes' output and the agent's records are
   * taken from the start until `close`: a process stopped with the agent says its last words after
   * the loops have stopped.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (!this.o.config.enabled) return untilAborted(signal);
    if (this.o.process) this.detach.push(new ProcessLogs({ output: this.o.process, logOf: (s) => this.logOf(s), clock: this.o.clock, maxLineBytes: this.o.config.maxLineBytes }).start());
    const tap = this.o.tap;
    if (tap && this.ships(AGENT_SERVICE)) {
      this.detach.push(
        tap.attach(
          (line) => this.logOf(AGENT_SERVICE)?.push(line),
          (count) => this.logOf(AGENT_SERVICE)?.drop('backlog', count),
        ),
      );
    }
    if (this.docker) await this.docker.run(signal);
    else await untilAborted(signal);
  }

  /** Commits what every service has pending and stops taking lines (agent shutdown, before the outbox closes). */
  async close(): Promise<void> {
    for (const off of this.detach.splice(0)) off();
    this.closed = true;
    await Promise.all(
      [...this.logs.values()].map((log) => log.close().catch((err: unknown) => this.o.logger.warn({ service: log.service, err: errorMessage(err) }, 'logs: could not commit the last lines'))),
    );
  }

  /** The last lines of each service (LogStore.read), for the local API, CLI and dashboard. */
  get tail(): Pick<LogStore, 'read' | 'services'> {
    return this.o.store;
  }

  /** Per service, what was stored and dropped since the start. */
  serviceStats(): Record<string, ServiceLogStats> {
    const out: Record<string, ServiceLogStats> = {};
    for (const [service, s] of this.stats) out[service] = { lines: s.lines, dropped: { ...s.dropped }, backlogBytes: this.logs.get(service)?.backlogBytes ?? 0 };
    return out;
  }
}
