import type Docker from 'dockerode';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../util/logger.js';
import { errorMessage } from '../../util/errors.js';
import { dependencies, hasHealthcheck, type Healthcheck } from '../app-graph.js';
import type { ServiceSpec } from '../target-schema.js';
import { LABELS, type HealthState, type Instance } from '../types.js';

/**
 * The Docker side of apps as a unit: each app's own bridge network (its services find each other
 * by service name) and the engine's health checks (set at create, read back from inspect).
 */

const NS_PER_S = 1_000_000_000;

/** The engine's Healthcheck (durations in nanoseconds) for a service's `healthcheck`, or undefined. */
export function engineHealthcheck(h: Healthcheck | undefined): Docker.HealthConfig | undefined {
  if (h === undefined || h.test === undefined) return undefined;
  if (!hasHealthcheck(h)) return { Test: ['NONE'] };
  const ns = (s: number | undefined): number | undefined => (s === undefined ? undefined : Math.round(s * NS_PER_S));
  const out: Docker.HealthConfig = { Test: h.test };
  const interval = ns(h.intervalSeconds);
  const timeout = ns(h.timeoutSeconds);
  const start = ns(h.startPeriodSeconds);
  if (interval !== undefined) out.Interval = interval;
  if (timeout !== undefined) out.Timeout = timeout;
  if (h.retries !== undefined) out.Retries = h.retries;
  if (start !== undefined) out.StartPeriod = start;
  return out;
}

interface InspectHealth {
  Status?: string;
  Log?: { ExitCode?: number; Output?: string }[];
}

/** The health check's verdict and the last failed probe's output, from a container's inspect. */
export function healthOf(state: { Health?: InspectHealth } | undefined): { health: HealthState | null; healthLog: string | null } {
  const h = state?.Health;
  const status = h?.Status;
  if (status !== 'starting' && status !== 'healthy' && status !== 'unhealthy') return { health: null, healthLog: null };
  const failed = [...(h?.Log ?? [])].reverse().find((l) => l.ExitCode !== 0);
  const output = failed?.Output?.trim().replace(/\s+/g, ' ').slice(0, 300);
  const healthLog = failed ? (output ? `exit code ${failed.ExitCode}: ${output}` : `exit code ${failed.ExitCode}`) : null;
  return { health: status, healthLog };
}

/** What an instance carries for apps as a unit: its health (while it runs) and the dependencies it was created with. */
export function appFields(labels: Record<string, string>, running: { Health?: InspectHealth } | undefined): Pick<Instance, 'health' | 'healthLog' | 'dependsOn'> {
  const deps = labels[LABELS.dependsOn];
  return { ...(running ? healthOf(running) : {}), ...(deps ? { dependsOn: deps.split(',') } : {}) };
}

/** The services a container depends on, as a label: the reverse stop order needs them once the target no longer names the app. */
export function dependsOnLabel(spec: Pick<ServiceSpec, 'dependsOn'>): Record<string, string> {
  const deps = dependencies(spec.dependsOn).map((d) => d.service);
  return deps.length > 0 ? { [LABELS.dependsOn]: deps.join(',') } : {};
}

/** The network part of a container's create options: the app's network with the service name as alias, unless the service sets a mode. */
export function networkOptions(spec: Pick<ServiceSpec, 'network_mode'>, network: string | undefined, service: string): { NetworkMode?: string; NetworkingConfig?: Docker.ContainerCreateOptions['NetworkingConfig'] } {
  if (spec.network_mode !== undefined) return { NetworkMode: spec.network_mode };
  if (network === undefined) return {};
  return { NetworkMode: network, NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: [service] } } } };
}

function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number } | undefined)?.statusCode;
}

export interface AppNetworksOptions {
  engine: () => Promise<Docker>;
  agentId: string;
  logger: Logger;
  /** The per-call signal (with the runtime's call timeout). */
  callSignal: (signal?: AbortSignal) => AbortSignal;
}

/**
 * One user-defined bridge network per app, found by the agent's labels (so it is adopted after an
 * agent restart), created before the app's first container and removed once the app has left the
 * target and its containers are gone.
 */
export class AppNetworks {
  /** One lookup-or-create per app at a time: an app's services are created side by side. */
  private readonly pending = new Map<string, Promise<string>>();

  constructor(private readonly o: AppNetworksOptions) {}

  private labels(): string[] {
    return [`${LABELS.managed}=true`, `${LABELS.agent}=${this.o.agentId}`];
  }

  private async list(signal?: AbortSignal): Promise<Docker.NetworkInspectInfo[]> {
    const docker = await this.o.engine();
    return docker.listNetworks({ filters: { label: this.labels() }, abortSignal: this.o.callSignal(signal) } as object);
  }

  /**
   * The id of the app's network, created when it does not exist yet. Containers join it by id: the
   * engine lets two networks share a name (another agent's, someone's by hand), and then refuses the name.
   */
  ensure(app: string, signal?: AbortSignal): Promise<string> {
    let p = this.pending.get(app);
    if (!p) {
      p = this.lookupOrCreate(app, signal).finally(() => this.pending.delete(app));
      this.pending.set(app, p);
    }
    return p;
  }

  private async lookupOrCreate(app: string, signal?: AbortSignal): Promise<string> {
    const found = (await this.list(signal)).find((n) => n.Labels?.[LABELS.app] === app);
    if (found) return found.Id;
    const docker = await this.o.engine();
    const create = async (name: string): Promise<string> =>
      (await docker.createNetwork({
        Name: name,
        Driver: 'bridge',
        CheckDuplicate: true,
        Labels: { [LABELS.managed]: 'true', [LABELS.agent]: this.o.agentId, [LABELS.app]: app },
        abortSignal: this.o.callSignal(signal),
      } as Docker.NetworkCreateOptions)).id;
    const name = `${app}_default`;
    const taken = (await docker.listNetworks({ filters: { name: [name] }, abortSignal: this.o.callSignal(signal) } as object)).some((n) => n.Name === name);
    if (!taken) return create(name);
    // Taken by a network that is not this agent's (its own was looked for above).
    const other = `${app}_${randomBytes(4).toString('hex')}`;
    this.o.logger.info({ app, name, instead: other }, 'network name taken by a network this agent does not manage; using another name');
    return create(other);
  }

  /** Removes the networks of apps not in `keep`; one still in use (containers not yet gone) is left for a later pass. */
  async prune(keep: ReadonlySet<string>, signal?: AbortSignal): Promise<void> {
    const docker = await this.o.engine();
    for (const n of await this.list(signal)) {
      const app = n.Labels?.[LABELS.app];
      if (app === undefined || keep.has(app)) continue;
      try {
        await docker.getNetwork(n.Id).remove({ abortSignal: this.o.callSignal(signal) } as object);
        this.o.logger.info({ app, network: n.Name }, 'removed the network of an app that left the target');
      } catch (err) {
        if (statusOf(err) === 404) continue;
        this.o.logger.debug({ app, network: n.Name, err: errorMessage(err) }, 'network not removed yet; trying again on a later pass');
      }
    }
  }
}
