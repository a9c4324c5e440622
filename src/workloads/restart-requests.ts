import { AgentError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { isActive, serviceKey } from './planner.js';
import type { RetryTracker } from './retry.js';
import type { Instance, TargetSource, WorkloadRuntime } from './types.js';

/** What `restartService` did. */
export interface RestartResult {
  /** Instances stopped (when running) and started again. */
  instances: number;
}

export interface RestartRequestsOptions {
  source: TargetSource;
  docker?: WorkloadRuntime;
  process: WorkloadRuntime;
  /** The crash backoff: a restart on request starts the service's crash loop afresh. */
  crash: RetryTracker;
  logger: Logger;
  /** Ends with the agent: requests not yet run are refused. */
  lifetime: AbortSignal;
  /** A request came in: the reconcile loop runs it between passes. */
  queued: () => void;
}

interface Request {
  app: string;
  service: string;
  /** Another task run between passes (a purge): instead of the restart of app/service. */
  task?: (signal: AbortSignal) => Promise<unknown>;
  resolve(r: unknown): void;
  reject(err: Error): void;
}

/**
 * Restarts of services on request (a cloud job, an operator), queued and run by the reconcile
 * loop between passes so that they never race an apply.
 */
export class RestartRequests {
  private queue: Request[] = [];

  constructor(private readonly o: RestartRequestsOptions) {}

  get pending(): number {
    return this.queue.length;
  }

  /**
   * Queues a restart of a service of the target in force. Rejects with `UNKNOWN_SERVICE` (naming the
   * services there are) or `NO_INSTANCE` (nothing created yet), or the runtime's error; `signal`
   * withdraws a request that has not started.
   */
  request(app: string, service: string, signal?: AbortSignal): Promise<RestartResult> {
    const unknown = this.unknownService(app, service);
    if (unknown) return Promise.reject(unknown);
    return this.enqueue<RestartResult>({ app, service }, signal);
  }

  /** Runs `task` between passes, after the requests queued before it (a purge of an app's data). */
  exclusive<T>(task: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.enqueue<T>({ app: '', service: '', task }, signal);
  }

  private unknownService(app: string, service: string): AgentError | undefined {
    const target = this.o.source.current();
    if (!target || !Object.hasOwn(target.apps, app) || !Object.hasOwn(target.apps[app]?.services ?? {}, service)) {
      const known = target ? Object.entries(target.apps).flatMap(([a, d]) => Object.keys(d.services).map((s) => `${a}/${s}`)) : [];
      const list = known.length > 0 ? known.join(', ') : 'none';
      return new AgentError('UNKNOWN_SERVICE', `no service ${app}/${service} in the target in force (services: ${list})`);
    }
    return undefined;
  }

  private enqueue<T>(what: Pick<Request, 'app' | 'service' | 'task'>, signal?: AbortSignal): Promise<T> {
    if (this.o.lifetime.aborted) return Promise.reject(new AgentError('STOPPING', 'the agent is stopping'));
    return new Promise<T>((resolve, reject) => {
      const req: Request = { ...what, resolve: (r) => resolve(r as T), reject };
      this.queue.push(req);
      signal?.addEventListener(
        'abort',
        () => {
          const i = this.queue.indexOf(req);
          if (i < 0) return; // already under way: it finishes
          this.queue.splice(i, 1);
          reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
        },
        { once: true },
      );
      this.o.queued();
    });
  }

  /** Runs the requests queued so far, one after another. */
  async run(signal: AbortSignal): Promise<void> {
    const pending = this.queue;
    this.queue = [];
    for (const req of pending) {
      try {
        req.resolve(req.task ? await req.task(signal) : await this.restartNow(req.app, req.service, signal));
      } catch (err) {
        req.reject(err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  /** Refuses the requests not yet run (the agent stops). */
  refuseAll(): void {
    for (const req of this.queue.splice(0)) req.reject(new AgentError('STOPPING', 'the agent is stopping'));
  }

  private async restartNow(app: string, service: string, signal: AbortSignal): Promise<RestartResult> {
    const key = serviceKey(app, service);
    const runtimes = [this.o.process, ...(this.o.docker && (await this.o.docker.availability(signal)).ok ? [this.o.docker] : [])];
    const found: { rt: WorkloadRuntime; instance: Instance }[] = [];
    for (const rt of runtimes) for (const i of await rt.list(signal)) if (i.app === app && i.service === service) found.push({ rt, instance: i });
    if (found.length === 0) throw new AgentError('NO_INSTANCE', `service ${key} has no instance yet (it is still being created or pulled); try again later`);
    this.o.crash.forget(key);
    for (const { rt, instance } of found) {
      if (isActive(instance)) await rt.stop(instance.id, signal);
      await rt.start(instance.id, signal);
    }
    this.o.logger.info({ app, service, instances: found.length }, `service ${key} restarted on request`);
    return { instances: found.length };
  }
}
