import type { Readable } from 'node:stream';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { Kick } from '../util/kick.js';
import type { Instance, RuntimeEvents } from '../workloads/types.js';
import type { TypedEmitter } from '../util/typed-emitter.js';
import { DockerFrameReader, sinceParam } from './docker-frames.js';
import type { LogStore } from './log-store.js';
import type { ServiceLog } from './service-log.js';

/** What the Docker log source needs of the Docker runtime. */
export interface DockerLogRuntime {
  list(signal?: AbortSignal): Promise<Instance[]>;
  readonly events: TypedEmitter<RuntimeEvents>;
  logStream(id: string, since: string | undefined, signal: AbortSignal): Promise<Readable>;
}

export interface DockerLogsOptions {
  runtime: DockerLogRuntime;
  store: Pick<LogStore, 'cursor' | 'cursors' | 'forget'>;
  /** The service's log, or undefined when it does not ship logs. */
  logOf: (service: string) => ServiceLog | undefined;
  clock: Pick<Clock, 'sleep'>;
  logger: Logger;
  maxLineBytes: number;
  /** Containers are listed again at least this often (besides on every engine event). */
  syncIntervalMs: number;
  /** A follower that failed (or was rewound) starts again after this long. */
  retryMs: number;
}

interface Follower {
  service: string;
  ac: AbortController;
}

/** The log name of a workload: `<app>/<service>`. */
export function serviceName(app: string, service: string): string {
  return `${app}/${service}`;
}

/**
 * Follows the log of every container of this agent (docs/logs.md): one engine log stream per
 * container, resumed from the cursor stored with the last chunk committed, so a restart of the agent
 * neither skips nor repeats a line. A container that restarts is followed again from its cursor; a
 * replacement (a new container of the service) is followed from its start, with the service's
 * sequence numbers going on. A stopped container is read to its end once (until it runs again).
 */
export class DockerLogs {
  private readonly followers = new Map<string, Follower>();
  /** Stopped containers read to their end, with the finish time then (read again if it changes). */
  private readonly complete = new Map<string, number | null>();
  private readonly kick = new Kick();
  private signal: AbortSignal | undefined;

  constructor(private readonly o: DockerLogsOptions) {}

  /** Follows the containers until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    this.signal = signal;
    const off = this.o.runtime.events.on('changed', () => this.kick.kick());
    try {
      while (!signal.aborted) {
        await this.sync(signal);
        await this.kick.wait(this.o.syncIntervalMs, signal, this.o.clock);
      }
    } finally {
      off();
      for (const f of this.followers.values()) f.ac.abort();
    }
  }

  /** The outbox refused a chunk of `service`: its containers are read again from their stored cursors. */
  rewind(service: string): void {
    for (const [id, f] of this.followers) {
      if (f.service !== service) continue;
      f.ac.abort();
      this.followers.delete(id);
      this.complete.delete(id);
    }
    this.later();
  }

  private later(): void {
    const signal = this.signal;
    if (!signal || signal.aborted) return;
    this.o.clock.sleep(this.o.retryMs, signal).then(
      () => this.kick.kick(),
      () => undefined,
    );
  }

  private async sync(signal: AbortSignal): Promise<void> {
    let instances: Instance[];
    try {
      instances = (await this.o.runtime.list(signal)).filter((i) => i.runtime === 'docker');
    } catch (err) {
      if (!signal.aborted) this.o.logger.debug({ err: errorMessage(err) }, 'logs: cannot list containers');
      return;
    }
    const ids = new Set(instances.map((i) => i.id));
    for (const { source } of this.o.store.cursors()) {
      if (!ids.has(source)) this.o.store.forget(source);
    }
    for (const id of this.complete.keys()) if (!ids.has(id)) this.complete.delete(id);
    for (const inst of instances) {
      if (this.followers.has(inst.id)) continue;
      const service = serviceName(inst.app, inst.service);
      const log = this.o.logOf(service);
      if (!log) continue;
      const running = inst.state === 'running' || inst.state === 'restarting' || inst.state === 'paused';
      if (!running && this.complete.has(inst.id) && this.complete.get(inst.id) === inst.finishedAt) continue;
      this.follow(inst, service, log, running, signal);
    }
  }

  private follow(inst: Instance, service: string, log: ServiceLog, running: boolean, parent: AbortSignal): void {
    const ac = new AbortController();
    const signal = AbortSignal.any([parent, ac.signal]);
    this.followers.set(inst.id, { service, ac });
    this.read(inst.id, log, signal).then(
      (ended) => {
        if (this.followers.get(inst.id)?.ac !== ac) return;
        this.followers.delete(inst.id);
        if (ended && !running) this.complete.set(inst.id, inst.finishedAt);
        // The stream ends when the container stops: look again (it may have restarted meanwhile).
        this.kick.kick();
      },
      (err: unknown) => {
        if (this.followers.get(inst.id)?.ac === ac) this.followers.delete(inst.id);
        if (signal.aborted) return;
        this.o.logger.warn({ service, container: inst.id.slice(0, 12), err: errorMessage(err) }, `logs of ${service}: the engine's log stream failed; following it again`);
        this.later();
      },
    );
  }

  /** Reads one container's log from its cursor; true when the stream ended (the container stopped), false when aborted. */
  private async read(id: string, log: ServiceLog, signal: AbortSignal): Promise<boolean> {
    const cursor = this.o.store.cursor(id);
    const reader = new DockerFrameReader(this.o.maxLineBytes, cursor, id);
    const stream = await this.o.runtime.logStream(id, cursor ? sinceParam(cursor.at) : undefined, signal);
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        for (const line of reader.push(chunk)) {
          // Checked before every line: a rewind (or the end) must not let a stale line in.
          while (!signal.aborted && !log.push(line)) await log.drained();
          if (signal.aborted) return false;
        }
      }
    } catch (err) {
      if (signal.aborted) return false;
      throw err;
    } finally {
      stream.destroy();
    }
    return !signal.aborted;
  }
}
