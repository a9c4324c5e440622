import type Docker from 'dockerode';
import { AgentError } from '../../util/errors.js';
import { parseSize, parseTmpfs } from '../service-options.js';
import { parsePort } from '../target-schema.js';
import { LABELS, type DesiredService } from '../types.js';
import { dependsOnLabel, engineHealthcheck, networkOptions } from './docker-apps.js';
import { secretEnv } from './secret-files.js';
import type { ServiceSpec } from '../target-schema.js';

/**
 * The engine's create options for a service's container options (service-options.ts): what goes in
 * the container's config and what in its host config. Pure, so the mapping is unit-tested without an engine.
 */
export function containerOptions(spec: Pick<ServiceSpec, 'cpus' | 'memory' | 'memoryReservation' | 'user' | 'entrypoint' | 'readOnly' | 'tmpfs'>): {
  config: Pick<Docker.ContainerCreateOptions, 'User' | 'Entrypoint'>;
  host: Pick<Docker.HostConfig, 'NanoCpus' | 'Memory' | 'MemorySwap' | 'MemoryReservation' | 'ReadonlyRootfs' | 'Tmpfs'>;
} {
  const memory = spec.memory === undefined ? undefined : parseSize(spec.memory);
  const reservation = spec.memoryReservation === undefined ? undefined : parseSize(spec.memoryReservation);
  const tmpfs: Record<string, string> = {};
  for (const t of spec.tmpfs ?? []) {
    const parsed = parseTmpfs(t);
    if (parsed) tmpfs[parsed.path] = parsed.options;
  }
  return {
    config: {
      ...(spec.user !== undefined ? { User: spec.user } : {}),
      ...(spec.entrypoint ? { Entrypoint: spec.entrypoint } : {}),
    },
    host: {
      ...(spec.cpus !== undefined ? { NanoCpus: Math.round(spec.cpus * 1e9) } : {}),
      // Swap equal to the limit: the engine's default (twice the limit) would let a leak run on into swap.
      ...(memory !== undefined ? { Memory: memory, MemorySwap: memory } : {}),
      ...(reservation !== undefined ? { MemoryReservation: reservation } : {}),
      ...(spec.readOnly ? { ReadonlyRootfs: true } : {}),
      ...(Object.keys(tmpfs).length > 0 ? { Tmpfs: tmpfs } : {}),
    },
  };
}

export interface CreateContext {
  /** Volumes and secret files, as "source:target[:ro]". */
  binds: string[];
  /** The app's network id, when the service joins it (no network_mode of its own). */
  network: string | undefined;
  agentId: string;
  stopTimeoutSeconds: number;
  logConfig: Pick<Docker.HostConfig, 'LogConfig'>;
}

/** The whole create request of a service's container: its image, env, labels, ports, devices, network, options. */
export function createOptions(desired: DesiredService, ctx: CreateContext): Docker.ContainerCreateOptions {
  const { spec, app, service } = desired;
  const exposed: Record<string, object> = {};
  const bindings: Record<string, { HostIp?: string; HostPort: string }[]> = {};
  for (const port of spec.ports) {
    const p = parsePort(port);
    if (!p) throw new AgentError('PORT_INVALID', `${app}/${service}: bad port mapping ${JSON.stringify(port)}`);
    const key = `${p.container}/${p.proto}`;
    exposed[key] = {};
    (bindings[key] ??= []).push({ ...(p.ip ? { HostIp: p.ip } : {}), HostPort: String(p.host) });
  }
  const devices = spec.devices.map((d) => {
    const [host, inContainer, perms] = d.split(':');
    return { PathOnHost: host as string, PathInContainer: inContainer ?? (host as string), CgroupPermissions: perms ?? 'rwm' };
  });
  const extra = containerOptions(spec);
  const net = networkOptions(spec, spec.network_mode === undefined ? ctx.network : undefined, service);
  const healthcheck = engineHealthcheck(spec.healthcheck);
  return {
    name: `${app}_${service}_${desired.configHash.slice(0, 8)}`,
    Image: desired.image,
    ...(spec.command ? { Cmd: spec.command } : {}),
    // Env secrets show in `docker inspect` on the host; file secrets do not. The options are never logged.
    Env: Object.entries({ ...spec.environment, ...secretEnv(desired) }).map(([k, v]) => `${k}=${v}`),
    ...(spec.workingDir ? { WorkingDir: spec.workingDir } : {}),
    ...extra.config,
    // The engine's own stops (its shutdown, `docker stop` by hand) keep the agent's grace period too.
    StopTimeout: ctx.stopTimeoutSeconds,
    Labels: {
      ...spec.labels,
      [LABELS.managed]: 'true',
      [LABELS.agent]: ctx.agentId,
      [LABELS.app]: app,
      [LABELS.service]: service,
      [LABELS.configHash]: desired.configHash,
      ...dependsOnLabel(spec),
    },
    ExposedPorts: exposed,
    ...(healthcheck ? { Healthcheck: healthcheck } : {}),
    ...(net.NetworkingConfig ? { NetworkingConfig: net.NetworkingConfig } : {}),
    HostConfig: {
      Binds: ctx.binds,
      PortBindings: bindings,
      Privileged: spec.privileged,
      Devices: devices,
      ...(net.NetworkMode ? { NetworkMode: net.NetworkMode } : {}),
      // The agent restarts, with its own CrashLoopBackOff.
      RestartPolicy: { Name: 'no' },
      ...ctx.logConfig,
      ...extra.host,
    },
  };
}
