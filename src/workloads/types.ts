import type { TypedEmitter } from '../util/typed-emitter.js';
import type { ServiceSpec, TargetState, UpdateStrategy } from './target-schema.js';

export type RuntimeKind = 'docker' | 'process';

/**
 * What a service is doing, as reported (PROTOCOL.md, "Current state"). With a health check it is
 * `starting` until healthy and `unhealthy` after its retries fail; `waiting` while a dependency is not ready.
 */
export type ServiceStatus = 'running' | 'exited' | 'pulling' | 'backoff' | 'failed' | 'stopped' | 'creating' | 'starting' | 'unhealthy' | 'waiting';

/** A health check's verdict on a running instance; null when it has none. */
export type HealthState = 'starting' | 'healthy' | 'unhealthy';

export interface ServiceState {
  status: ServiceStatus;
  /** Restarts the agent made after the service exited, since the agent started. */
  restarts: number;
  lastError: string | null;
  /** The image it runs (docker), or null for a process. */
  image: string | null;
  runtime: RuntimeKind | null;
  /** Epoch ms the running instance started, or null. */
  startedAt: number | null;
  /** Epoch ms of the next attempt while in `backoff`, else null. */
  nextRetryAt: number | null;
  /** Exit code of the last exit seen, or null. */
  exitCode: number | null;
}

export type ApplyStatus = 'applying' | 'applied' | 'failed';

export interface CurrentState {
  status: ApplyStatus;
  /** Version of the target being applied (or applied); null before any target. */
  targetVersion: number | null;
  apps: Record<string, { services: Record<string, ServiceState> }>;
}

/** Where the reconciler gets its target: the stored target, the poller, or local mode. */
export interface TargetSource {
  /** The target in force now, or undefined when there has never been one (then nothing is touched). */
  current(): TargetState | undefined;
  /** Calls `listener` whenever `current()` changes; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
}

/** The state of one instance (a container, or a process slot) as its runtime sees it. */
export type InstanceState = 'created' | 'running' | 'exited' | 'restarting' | 'paused' | 'dead' | 'removing';

export interface Instance {
  /** Container id, or the process runtime's own id. */
  id: string;
  runtime: RuntimeKind;
  app: string;
  service: string;
  configHash: string;
  image: string | null;
  state: InstanceState;
  exitCode: number | null;
  /** The runtime's own error for the last start (e.g. "exec: not found"), if any. */
  error: string | null;
  startedAt: number | null;
  finishedAt: number | null;
  /** Changes with every exit, so one exit is counted once however often it is observed. */
  exitKey: string | null;
  /** The health check's verdict while it runs (absent or null: no health check). */
  health?: HealthState | null;
  /** The last failed probe's output or reason, for lastError. */
  healthLog?: string | null;
  /** The services of its app it depended on when created (the stop order on removal is the reverse). */
  dependsOn?: readonly string[];
}

/** A service as the target wants it, with its runtime resolved and its configuration hashed. */
export interface DesiredService {
  app: string;
  service: string;
  spec: ServiceSpec;
  runtime: RuntimeKind;
  /** The image to run (normalized: a bare name gets ":latest"); undefined for processes. */
  image: string | undefined;
  configHash: string;
  updateStrategy: UpdateStrategy;
  /** The values of the secrets the service names, by name. A Map: JSON and the logger show it as `{}`. */
  secretValues: ReadonlyMap<string, string>;
}

/** Where the reconciler reads the values of the secrets a target names (secrets/secret-store.ts). */
export interface SecretSource {
  get(name: string): string | undefined;
  /** An HMAC of the values, keyed with the secrets key, for the config hash (a change recreates the service). */
  digest(values: readonly (readonly [string, string])[]): string;
  onChange(listener: () => void): () => void;
}

export interface RuntimeEvents {
  /** Something about one of the runtime's instances changed (started, exited, removed), or the view was lost and must be refreshed. */
  changed: { id?: string; action: string };
}

/** A registry login for one pull, as the engine's X-Registry-Auth header carries it. */
export interface RegistryAuth {
  username: string;
  password: string;
  /** The registry (host[:port]) the login is for. */
  serveraddress: string;
}

export type Availability = { ok: true } | { ok: false; reason: string };

/** What the reconciler needs of a runtime. Every method acts only on instances the runtime itself created. */
export interface WorkloadRuntime {
  readonly kind: RuntimeKind;
  readonly events: TypedEmitter<RuntimeEvents>;
  /** Whether the runtime can run anything now, and why not. Cheap; called once per pass. */
  availability(signal?: AbortSignal): Promise<Availability>;
  /** The instances this agent created (labels / pid files), whatever their state. */
  list(signal?: AbortSignal): Promise<Instance[]>;
  /** Whether an image is present locally (always true for processes). */
  hasImage(image: string, signal?: AbortSignal): Promise<boolean>;
  /** The bytes of an image in the local store, or undefined when it is not here (the plan preview shows it). */
  imageSize?(image: string, signal?: AbortSignal): Promise<number | undefined>;
  /** Downloads an image, logging in with `auth` when given (never logged, never kept). */
  pull(image: string, signal?: AbortSignal, auth?: RegistryAuth): Promise<void>;
  /** Creates an instance (not started) and returns its id. */
  create(desired: DesiredService, signal?: AbortSignal): Promise<string>;
  start(id: string, signal?: AbortSignal): Promise<void>;
  /** Stops gracefully, then kills after the runtime's stop timeout. Stopping a stopped instance is a no-op. */
  stop(id: string, signal?: AbortSignal): Promise<void>;
  remove(id: string, signal?: AbortSignal): Promise<void>;
  /**
   * Deletes the data `app` keeps on this runtime (its named volumes; a process app's working dirs, logs
   * kept), its instances already removed; returns what went. Never a host bind mount.
   */
  purgeAppData?(app: string, signal?: AbortSignal): Promise<string[]>;
  /** Removes what the runtime made for apps not in `keep` beyond their instances (Docker: the app networks). */
  pruneNetworks?(keep: ReadonlySet<string>, signal?: AbortSignal): Promise<void>;
  /** Follows the runtime's own event stream, if it has one, until `signal` aborts. */
  watch?(signal: AbortSignal): Promise<void>;
  /** Releases the runtime at agent shutdown (the process runtime stops its children here). */
  close(): Promise<void>;
}

/** The labels every container the agent creates carries. */
export const LABELS = {
  managed: 'io.iotistic.managed',
  agent: 'io.iotistic.agent',
  app: 'io.iotistic.app',
  service: 'io.iotistic.service',
  configHash: 'io.iotistic.config-hash',
  dependsOn: 'io.iotistic.depends-on',
} as const;
