import { createHash } from 'node:crypto';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import { Kick } from '../util/kick.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import { hasExited, isActive, planService, resolveTarget, serviceKey, wantsRestart, type ResolvedService, type ServicePlan, type Step } from './planner.js';
import { buildCurrentState, type StateInputs } from './current-state.js';
import { ImagePulls } from './image-pulls.js';
import { MissingImages } from './missing-images.js';
import { holdForDependencies } from './app-order.js';
import { hasHealthcheck } from './app-graph.js';
import { RejectedUpdates } from './health-gate.js';
import { TargetRegistryCredentials, type RegistryCredentials, type RegistryLogin } from './registry-auth.js';
import { RestartRequests, type RestartResult } from './restart-requests.js';
import { RetryManager, type RestartBackoffSpec } from './retry.js';
import { DEFAULT_WORKLOAD_POLICY, type TargetState, type WorkloadPolicy } from './target-schema.js';
import type { Availability, CurrentState, Instance, RuntimeKind, SecretSource, TargetSource, WorkloadRuntime } from './types.js';

/**
 * The workload reconciler, in the kubelet's shape: observe what runs (both runtimes), diff it
 * against the target, plan the steps per service, act, repeat: every `reconciliationIntervalMs`,
 * at once when the target changes or a runtime reports an event, and when a retry falls due.
 *
 * One pass at a time; a newer target aborts the pass in flight. Services are independent: their
 * steps run side by side and one failing (missing image, bad command, port taken) never stops the
 * others. Image downloads run in the background, so a slow registry holds up nothing but the service
 * that waits for the image. Restarts are the agent's (containers are created with Docker's restart
 * policy "no"), so CrashLoopBackOff and the restart counts are ours, the same for both runtimes.
 */

export interface ReconcilerOptions {
  source: TargetSource;
  /** The Docker runtime; undefined when the device has none configured (docker services are then `failed`). */
  docker?: WorkloadRuntime;
  process: WorkloadRuntime;
  clock: Clock;
  random: Random;
  logger: Logger;
  /** `settings.reconciliationIntervalMs`, read each cycle (a target may change it). */
  reconciliationIntervalMs: number | (() => number);
  /** What the device's local config allows (host mounts, privileged, host network, devices); default: nothing. */
  policy?: Partial<WorkloadPolicy>;
  /** Override the crash-loop and pull backoffs (tests use short ones). */
  crashBackoff?: Partial<RestartBackoffSpec>;
  pullBackoff?: Partial<RestartBackoffSpec>;
  /** A pull that has not finished in this time is aborted and backs off; 20 minutes unless told. */
  pullTimeoutMs?: number;
  /** The device's own registry logins (`workloads.registries`), used where the target has none. */
  deviceRegistries?: Readonly<Record<string, RegistryLogin>>;
  /** The device's secrets, for services that name some; a change of a value recreates the services using it. */
  secrets?: SecretSource;
}

export interface ReconcilerEvents {
  /** The current state changed (the state reporter subscribes). */
  changed: CurrentState;
}

export interface PassResult {
  /** Steps were taken (create, start, stop, remove, pull started). */
  acted: boolean;
  /** Some step failed. */
  failed: boolean;
}

interface ServiceMemo {
  hash: string;
  restarts: number;
  lastError: string | null;
}

function targetKey(t: TargetState | undefined): string {
  return t === undefined ? 'none' : `${t.version}:${createHash('sha256').update(JSON.stringify(t)).digest('hex')}`;
}

export class Reconciler extends TypedEmitter<ReconcilerEvents> {
  private readonly kick = new Kick();
  private readonly retry: RetryManager;
  private readonly policy: WorkloadPolicy;
  private readonly memos = new Map<string, ServiceMemo>();
  private readonly pulls: ImagePulls;
  private readonly restarts: RestartRequests;
  /** Images the target needs that the engine lacks and could not pull (an import brings them). */
  readonly missing: MissingImages;
  private readonly rejected = new RejectedUpdates();
  /** The registry credentials of the target of the pass under way. */
  private credentials: RegistryCredentials | undefined;
  private state: CurrentState = { status: 'applied', targetVersion: null, apps: {} };
  private stateJson = JSON.stringify(this.state);
  private passCtl: AbortController | undefined;
  private passKey: string | undefined;
  private passStartedAt = 0;
  private readonly lifetime = new AbortController();
  /** The last pass that threw (the engine went away mid-pass, a bug), for /v2/state. */
  lastPassError: string | null = null;

  constructor(private readonly o: ReconcilerOptions) {
    super();
    this.policy = { ...DEFAULT_WORKLOAD_POLICY, ...o.policy };
    this.retry = new RetryManager({ clock: o.clock, random: o.random, crash: o.crashBackoff, pull: o.pullBackoff });
    const lifetime = this.lifetime.signal;
    this.pulls = new ImagePulls({
      docker: o.docker,
      backoff: this.retry.pull,
      clock: o.clock,
      logger: o.logger,
      lifetime,
      timeoutMs: o.pullTimeoutMs ?? 20 * 60_000,
      settled: () => this.kick.kick(),
    });
    this.missing = new MissingImages(this.retry.pull, () => this.kick.kick());
    this.restarts = new RestartRequests({ source: o.source, docker: o.docker, process: o.process, crash: this.retry.crash, logger: o.logger, lifetime, queued: () => this.kick.kick() });
    // Until the first pass has looked, a target in force is being applied.
    const t = o.source.current();
    if (t) this.state = { status: 'applying', targetVersion: t.version, apps: {} };
    this.stateJson = JSON.stringify(this.state);
  }

  /** The state as last computed (a copy). */
  currentState(): CurrentState {
    return structuredClone(this.state);
  }

  /** Reconcile now (a local request, a test). */
  reconcileNow(): void {
    this.kick.kick();
  }

  /**
   * Restarts a service of the target in force (a cloud job, an operator): its instances are stopped
   * when running and started again. It runs in the reconcile loop between passes, so it never races
   * an apply; the crash loop of the service starts afresh (an operator's restart is a new start).
   * Rejects with `UNKNOWN_SERVICE` (naming the services there are) or `NO_INSTANCE` (nothing created
   * yet), or the runtime's error; `signal` withdraws a request that has not started.
   */
  restartService(app: string, service: string, signal?: AbortSignal): Promise<RestartResult> {
    return this.restarts.request(app, service, signal);
  }

  /** Runs `task` in the reconcile loop between passes, so it never races an apply (a purge of an app's data). */
  exclusive<T>(task: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.restarts.exclusive(task, signal);
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.o.logger.error({ err: errorMessage(err), event }, 'a workloads state listener failed');
  }

  /** The reconcile loop; returns when `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    const onEvent = (): void => this.kick.kick();
    const offs = [
      this.o.source.onChange(() => this.onTargetChange()),
      this.o.process.events.on('changed', onEvent),
      ...(this.o.secrets ? [this.o.secrets.onChange(onEvent)] : []),
      ...(this.o.docker ? [this.o.docker.events.on('changed', onEvent)] : []),
    ];
    const watch = this.o.docker?.watch?.(signal).catch((err: unknown) => {
      if (!signal.aborted) this.o.logger.error({ err: errorMessage(err) }, 'docker event watch ended');
    });
    let settling = 0;
    try {
      while (!signal.aborted) {
        this.kick.consume();
        if (this.restarts.pending > 0) await this.restarts.run(signal);
        const ctl = new AbortController();
        this.passCtl = ctl;
        let result: PassResult = { acted: false, failed: false };
        try {
          result = await this.reconcileOnce(AbortSignal.any([signal, ctl.signal]));
          this.lastPassError = null;
        } catch (err) {
          if (signal.aborted) break;
          if (!ctl.signal.aborted) {
            this.lastPassError = errorMessage(err);
            this.o.logger.error({ err: this.lastPassError }, 'workload reconciliation pass failed');
          }
        } finally {
          this.passCtl = undefined;
        }
        if (ctl.signal.aborted && !signal.aborted) continue; // superseded by a newer target: apply it now
        // After acting, look again at once to confirm (a start that died at once, a removal), a few
        // times in a row at most so a step that "succeeds" without effect cannot spin.
        if (result.acted && !result.failed && settling < 3) {
          settling++;
          continue;
        }
        settling = 0;
        await this.kick.wait(this.nextWaitMs(), signal, this.o.clock);
      }
    } finally {
      for (const off of offs) off();
      await watch;
    }
  }

  /** Aborts pulls and releases the runtimes (the process runtime stops its children). Containers keep running. */
  async close(): Promise<void> {
    this.lifetime.abort();
    this.restarts.refuseAll();
    await this.pulls.close();
    await Promise.allSettled([this.o.process.close(), ...(this.o.docker ? [this.o.docker.close()] : [])]);
  }

  private onTargetChange(): void {
    this.kick.kick();
    const next = targetKey(this.o.source.current());
    if (this.passCtl && this.passKey !== next) {
      this.o.logger.info('a newer target arrived: aborting the apply in flight');
      this.passCtl.abort(Object.assign(new Error('superseded by a newer target'), { name: 'AbortError' }));
    }
  }

  private intervalMs(): number {
    const i = this.o.reconciliationIntervalMs;
    return typeof i === 'function' ? i() : i;
  }

  /** The interval, or sooner when a retry falls due (one due before this pass began was already weighed by it). */
  private nextWaitMs(): number {
    const interval = this.intervalMs();
    const due = this.retry.nextDue();
    if (due === undefined || due <= this.passStartedAt) return interval;
    return Math.min(interval, Math.max(0, due - this.o.clock.monotonic()) + 5);
  }

  private runtime(kind: RuntimeKind): WorkloadRuntime | undefined {
    return kind === 'docker' ? this.o.docker : this.o.process;
  }

  /** One pass: observe, diff, plan, act. Exposed for tests; the loop calls it. */
  async reconcileOnce(signal: AbortSignal = this.lifetime.signal): Promise<PassResult> {
    this.passStartedAt = this.o.clock.monotonic();
    const target = this.o.source.current();
    this.passKey = targetKey(target);
    if (!target) {
      // Never had a target: leave whatever runs alone (nothing tells us what should).
      this.missing.update([], new Map());
      this.publish({ status: 'applied', targetVersion: null, apps: {} });
      return { acted: false, failed: false };
    }

    const { docker, instances } = await this.observe(signal);
    const resolved = resolveTarget(target, docker, this.policy, this.o.secrets);
    const byKey = new Map<string, ResolvedService>();
    for (const r of resolved) byKey.set(serviceKey(r.desired.app, r.desired.service), r);
    const instancesByKey = new Map<string, Instance[]>();
    for (const i of instances) {
      const k = serviceKey(i.app, i.service);
      instancesByKey.set(k, [...(instancesByKey.get(k) ?? []), i]);
    }

    this.forgetGone(byKey);
    this.credentials = new TargetRegistryCredentials(target.registries, this.o.deviceRegistries, this.o.secrets);
    this.pulls.retryChangedCredentials(this.credentials);
    const images = await this.pulls.present(resolved, signal);
    this.missing.update(resolved, images);

    // Plan.
    const plans = new Map<string, ServicePlan>();
    for (const key of new Set([...byKey.keys(), ...instancesByKey.keys()])) {
      const r = byKey.get(key);
      const found = instancesByKey.get(key) ?? [];
      if (r) this.observeExits(key, r, found);
      const image = r?.desired.image;
      plans.set(
        key,
        planService({
          resolved: r,
          instances: found,
          imagePresent: image === undefined || images.get(image) === true,
          pulling: image !== undefined && this.pulls.pulling(image),
          pullWaiting: image !== undefined && this.retry.pull.waiting(image),
          crashWaiting: this.retry.crash.waiting(key),
          rejected: r ? this.rejected.reason(key, r.desired.configHash) : undefined,
        }),
      );
      if (r) this.rejected.record(key, r.desired, plans.get(key), this.o.logger);
    }
    holdForDependencies(plans, byKey, instancesByKey);
    this.pulls.abortUnwanted(resolved);
    const acting = [...plans.values()].some((p) => p.steps.length > 0);
    this.publish(buildCurrentState(target, byKey, plans, acting, this.stateInputs()));

    // Act: services side by side, each one's steps in order.
    let failed = false;
    await Promise.all(
      [...plans].map(async ([key, plan]) => {
        if (plan.steps.length === 0) return;
        const ok = await this.act(key, byKey.get(key), plan, signal);
        if (!ok) failed = true;
        if (byKey.has(key)) this.publish(buildCurrentState(target, byKey, plans, true, this.stateInputs()));
      }),
    );
    signal.throwIfAborted();
    if (docker.ok) await this.o.docker?.pruneNetworks?.(new Set(Object.keys(target.apps)), signal);
    this.publish(buildCurrentState(target, byKey, plans, false, this.stateInputs()));
    return { acted: acting, failed };
  }

  /** What runs now: the engine's containers (when it answers) and the processes. */
  private async observe(signal: AbortSignal): Promise<{ docker: Availability; instances: Instance[] }> {
    let docker: Availability = this.o.docker ? await this.o.docker.availability(signal) : { ok: false, reason: 'no container engine is configured on this device' };
    const instances: Instance[] = [];
    if (this.o.docker && docker.ok) {
      try {
        instances.push(...(await this.o.docker.list(signal)));
      } catch (err) {
        signal.throwIfAborted();
        docker = { ok: false, reason: `listing containers failed: ${errorMessage(err)}` };
      }
    }
    instances.push(...(await this.o.process.list(signal)));
    signal.throwIfAborted();
    return { docker, instances };
  }

  /** Counts new exits of the instance that is the service into its crash loop. */
  private observeExits(key: string, r: ResolvedService, found: Instance[]): void {
    const memo = this.memo(key, r.desired.configHash);
    const current = found.find((i) => i.runtime === r.desired.runtime && i.configHash === r.desired.configHash && (isActive(i) || hasExited(i)));
    if (!current) return;
    if (isActive(current)) {
      this.retry.crash.succeed(key);
      return;
    }
    // A failed start (created, with an error) was counted by the step that tried it.
    if (current.state === 'created' || current.exitKey === null) return;
    if (this.retry.crash.hasSeen(key, current.exitKey)) return;
    const why = exitReason(current);
    if (!this.retry.crash.known(key) || !wantsRestart(r.desired.spec.restart, current)) {
      // Exited before this agent saw it run (the device or the agent restarted), or exited for good:
      // nothing to back off from.
      this.retry.crash.acknowledge(key, current.exitKey);
      if (wantsRestart(r.desired.spec.restart, current)) this.o.logger.info({ app: r.desired.app, service: r.desired.service, why }, 'found the service exited: starting it');
      memo.lastError = current.exitCode === 0 && current.error === null ? memo.lastError : why;
      return;
    }
    const delay = this.retry.crash.fail(key, why, current.exitKey);
    memo.lastError = why;
    this.o.logger.warn(
      { app: r.desired.app, service: r.desired.service, why, restartInMs: delay === undefined ? undefined : Math.round(delay) },
      `service ${r.desired.app}/${r.desired.service} ${why}; restarting after a backoff`,
    );
  }

  private memo(key: string, hash: string): ServiceMemo {
    let m = this.memos.get(key);
    if (!m || m.hash !== hash) {
      // A new configuration starts afresh: its crash loop, restart count and last error.
      if (m) this.retry.crash.forget(key);
      m = { hash, restarts: 0, lastError: null };
      this.memos.set(key, m);
    }
    return m;
  }

  private forgetGone(byKey: Map<string, ResolvedService>): void {
    this.rejected.prune(new Map([...byKey].map(([k, r]) => [k, r.desired.configHash])));
    for (const key of this.memos.keys()) {
      if (!byKey.has(key)) {
        this.memos.delete(key);
        this.retry.crash.forget(key);
      }
    }
    const images = new Set([...byKey.values()].map((r) => r.desired.image));
    for (const image of this.retry.pull.keys()) if (!images.has(image)) this.retry.pull.forget(image);
  }

  /** Runs one service's steps in order; stops at the first failure. Returns false if one failed. */
  private async act(key: string, r: ResolvedService | undefined, plan: ServicePlan, signal: AbortSignal): Promise<boolean> {
    const memo = r ? this.memo(key, r.desired.configHash) : undefined;
    const where = { app: r?.desired.app ?? key.split('/')[0], service: r?.desired.service ?? key.split('/')[1] };
    let created: string | undefined;
    for (const step of plan.steps) {
      if (signal.aborted) return true;
      try {
        await this.step(step, r, () => created, (id) => (created = id), signal);
        if (step.kind === 'start') {
          this.retry.crash.succeed(key);
          if (memo) {
            if (step.restart) memo.restarts++;
            memo.lastError = null;
          }
          plan.status = r && hasHealthcheck(r.desired.spec.healthcheck) ? 'starting' : 'running';
          plan.current = undefined;
        }
      } catch (err) {
        if (signal.aborted) return true;
        const why = `${step.kind} failed: ${errorMessage(err)}`;
        if (memo) memo.lastError = why;
        if ((step.kind === 'create' || step.kind === 'start') && r) {
          const delay = this.retry.crash.fail(key, why);
          plan.status = 'backoff';
          this.o.logger.warn({ ...where, err: errorMessage(err), retryInMs: delay === undefined ? undefined : Math.round(delay) }, `service ${key}: ${why}`);
        } else {
          this.o.logger.warn({ ...where, err: errorMessage(err) }, `service ${key}: ${why}; retrying on the next pass`);
        }
        return false;
      }
    }
    return true;
  }

  private async step(step: Step, r: ResolvedService | undefined, created: () => string | undefined, setCreated: (id: string) => void, signal: AbortSignal): Promise<void> {
    const where = { app: r?.desired.app, service: r?.desired.service };
    switch (step.kind) {
      case 'pull':
        this.pulls.start(step.image, this.credentials);
        return;
      case 'stop': {
        this.o.logger.info({ ...where, id: step.instance.id }, `stopping ${step.instance.app}/${step.instance.service}`);
        await this.need(step.instance.runtime).stop(step.instance.id, signal);
        return;
      }
      case 'remove':
        await this.need(step.instance.runtime).remove(step.instance.id, signal);
        return;
      case 'create': {
        this.o.logger.info({ ...where, image: step.desired.image, hash: step.desired.configHash }, `creating ${step.desired.app}/${step.desired.service}`);
        setCreated(await this.need(step.desired.runtime).create(step.desired, signal));
        return;
      }
      case 'start': {
        const id = step.instance?.id ?? created();
        const kind = step.instance?.runtime ?? r?.desired.runtime;
        if (id === undefined || kind === undefined) throw new Error('nothing to start');
        this.o.logger.info({ ...where, id, restart: step.restart }, `starting ${r?.desired.app}/${r?.desired.service}`);
        await this.need(kind).start(id, signal);
        return;
      }
    }
  }

  private need(kind: RuntimeKind): WorkloadRuntime {
    const rt = this.runtime(kind);
    if (!rt) throw new Error(`no ${kind} runtime`);
    return rt;
  }

  private stateInputs(): StateInputs {
    return { memo: (key, hash) => this.memo(key, hash), retry: this.retry, pullsUnderWay: this.pulls.size, now: this.o.clock.now() };
  }

  private publish(state: CurrentState): void {
    const json = JSON.stringify(state);
    if (json === this.stateJson) return;
    this.state = state;
    this.stateJson = json;
    this.emit('changed', this.currentState());
  }
}

function exitReason(i: Instance): string {
  const code = i.exitCode === null ? 'exited' : `exited with code ${i.exitCode}`;
  return i.error ? `${code}: ${i.error}` : code;
}

/** What the plan says went wrong: a dependency waited for, a rejected update, a failing health check. */
