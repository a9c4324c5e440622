import type Docker from 'dockerode';
import { parseSize, parseTmpfs } from '../service-options.js';
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
