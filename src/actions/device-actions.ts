import { describeValue } from '../config/issues.js';
import type { AgentConfig } from '../config/schema.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { isActive } from '../workloads/planner.js';
import type { Reconciler } from '../workloads/reconciler.js';
import type { TargetSource, WorkloadRuntime } from '../workloads/types.js';
import type { PowerAction } from './power.js';

/**
 * Device actions an operator (local API, CLI) or the cloud (jobs) asks for: restart a service or an
 * app, reboot, shut down, purge an app's data. Each is recorded as an event through the outbox (who
 * asked, what, the outcome). Reboot and shutdown are the device's own call (`actions.allow*`, local
 * only); the agent stops cleanly before the power action runs.
 */

/** Who asked: the local API (an operator, the CLI) or a cloud job. */
export type ActionCaller = { by: 'local-api' } | { by: 'job'; jobId: string };

/** Codes: ACTION_NOT_ALLOWED (403), ACTION_BAD_CONFIRM (400), UNKNOWN_APP / UNKNOWN_SERVICE (404), NO_INSTANCE (409). */
export class ActionError extends AgentError {
  constructor(code: 'ACTION_NOT_ALLOWED' | 'ACTION_BAD_CONFIRM' | 'UNKNOWN_APP' | 'UNKNOWN_SERVICE' | 'NO_INSTANCE', message: string) {
    super(code, message);
    this.name = 'ActionError';
  }
}

export interface DeviceActionsOptions {
  config: Pick<AgentConfig['actions'], 'allowReboot' | 'allowShutdown'>;
  reconciler: Pick<Reconciler, 'restartService' | 'exclusive' | 'reconcileNow'>;
  source: TargetSource;
  runtimes: readonly WorkloadRuntime[];
  /** Queues an event on the `events` channel; resolves once it is durable (the outbox committed it). */
  record(type: string, data: Record<string, unknown>): Promise<void>;
  /** Stops the agent cleanly, then runs the power action. */
  power(action: PowerAction): void;
  logger: Logger;
}

export interface PowerRequest {
  requested: PowerAction;
  /** Starts the stop and the power action; the caller calls it once its answer is out (a job's result queued). */
  go(): void;
}

const ALLOW_KEY: Record<PowerAction, 'allowReboot' | 'allowShutdown'> = { reboot: 'allowReboot', shutdown: 'allowShutdown' };

export class DeviceActions {
  private powering = false;

  constructor(private readonly o: DeviceActionsOptions) {}

  async restartService(app: string, service: string, who: ActionCaller): Promise<{ instances: number }> {
    return this.recorded({ action: 'restart-service', app, service }, who, async () => {
      try {
        return await this.o.reconciler.restartService(app, service);
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (code === 'UNKNOWN_SERVICE' || code === 'NO_INSTANCE') throw new ActionError(code, errorMessage(err));
        throw err;
      }
    });
  }

  /** Restarts every service of `app`, one after another; a service with no instance yet is reported, not fatal. */
  async restartApp(app: string, who: ActionCaller): Promise<{ services: Record<string, { instances: number } | { error: string }> }> {
    return this.recorded({ action: 'restart-app', app }, who, async () => {
      const services = Object.keys(this.appDoc(app).services);
      const out: Record<string, { instances: number } | { error: string }> = {};
      for (const service of services) {
        try {
          out[service] = await this.o.reconciler.restartService(app, service);
        } catch (err) {
          out[service] = { error: errorMessage(err) };
        }
      }
      if (services.length > 0 && services.every((s) => 'error' in (out[s] ?? {}))) {
        throw new ActionError('NO_INSTANCE', `app ${app}: no service could be restarted (${services.map((s) => `${s}: ${(out[s] as { error: string }).error}`).join('; ')})`);
      }
      return { services: out };
    });
  }

  /**
   * Reboot or shutdown: refused unless the device's config allows it. Allowed: the event is durable
   * before this resolves; `go()` then stops the agent and runs the power action.
   */
  async power(action: PowerAction, who: ActionCaller): Promise<PowerRequest> {
    const key = ALLOW_KEY[action];
    return this.recorded({ action }, who, () => {
      if (!this.o.config[key]) {
        throw new ActionError('ACTION_NOT_ALLOWED', `${action} is not allowed on this device: set actions.${key} to true in its local config (a cloud config update cannot)`);
      }
      return Promise.resolve({ requested: action });
    }).then((r) => ({
      ...r,
      go: () => {
        if (this.powering) return;
        this.powering = true;
        this.o.logger.warn({ action, ...who }, `${action} requested: stopping the agent`);
        this.o.power(action);
      },
    }));
  }

  /**
   * Deletes an app's data: its services stop and go, its named volumes (and a process app's working
   * dirs) are deleted, and the next pass creates them afresh. `confirm` must be the app's name again.
   */
  async purgeApp(app: string, confirm: unknown, who: ActionCaller): Promise<{ instances: number; removed: string[] }> {
    return this.recorded({ action: 'purge-app', app }, who, async () => {
      if (confirm !== app) {
        throw new ActionError('ACTION_BAD_CONFIRM', `confirm: expected the app's name ${JSON.stringify(app)} typed again (its data is deleted for good), got ${describeValue(confirm)}`);
      }
      this.appDoc(app);
      const done = await this.o.reconciler.exclusive(async (signal) => {
        let instances = 0;
        const removed: string[] = [];
        for (const rt of this.o.runtimes) {
          if (!(await rt.availability(signal)).ok) continue;
          for (const i of (await rt.list(signal)).filter((x) => x.app === app)) {
            if (isActive(i)) await rt.stop(i.id, signal);
            await rt.remove(i.id, signal);
            instances++;
          }
          removed.push(...((await rt.purgeAppData?.(app, signal)) ?? []));
        }
        return { instances, removed };
      });
      this.o.reconciler.reconcileNow();
      return done;
    });
  }

  private appDoc(app: string): { services: Record<string, unknown> } {
    const target = this.o.source.current();
    const doc = target && Object.hasOwn(target.apps, app) ? target.apps[app] : undefined;
    if (!doc) {
      const known = target ? Object.keys(target.apps).join(', ') || 'none' : 'none (no target yet)';
      throw new ActionError('UNKNOWN_APP', `no app ${JSON.stringify(app)} in the target in force (apps: ${known})`);
    }
    return doc;
  }

  /** Runs an action and records it, done, refused or failed, as an event (durable before the answer). */
  private async recorded<T>(what: Record<string, string>, who: ActionCaller, run: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await run();
    } catch (err) {
      const outcome = err instanceof ActionError ? 'refused' : 'failed';
      await this.record({ ...what, ...who, outcome, error: errorMessage(err) });
      throw err;
    }
    await this.record({ ...what, ...who, outcome: 'done', result });
    return result;
  }

  private async record(data: Record<string, unknown>): Promise<void> {
    try {
      await this.o.record('device-action', data);
    } catch (err) {
      // The action happened (or was refused) all the same; the log keeps it.
      this.o.logger.warn({ err: errorMessage(err), ...data }, 'could not queue the event of a device action');
    }
  }
}
