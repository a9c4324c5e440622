import type Docker from 'dockerode';
import { access } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { Backoff } from '../../resilience/backoff.js';
import type { Clock } from '../../util/clock.js';
import { AgentError, errorMessage } from '../../util/errors.js';
import type { Logger } from '../../util/logger.js';
import { writeSecretFiles } from './secret-files.js';
import type { Random } from '../../util/random.js';
import { parseImageReference } from '../image-ref.js';
import { parseVolume } from '../target-schema.js';
import { removeAppVolumes } from './docker-volumes.js';
import { LABELS, type Availability, type DesiredService, type Instance, type InstanceState, type RegistryAuth, type WorkloadRuntime } from '../types.js';
import { RuntimeEventEmitter } from './events.js';
import { createOptions } from './docker-create.js';
import { AppNetworks, appFields } from './docker-apps.js';

/**
 * The Docker runtime: dockerode against `DOCKER_HOST` or the default socket.
 *
 * dockerode (and what it brings: ssh2, gRPC, protobufs; about 20 MiB of an idle agent) is loaded at
 * the first call that needs the engine. While it is not loaded and the engine's address is a unix
 * socket that does not exist (a device without Docker), every call fails as dockerode's would
 * ("connect ENOENT <path>") without loading it; once the socket appears, the client is loaded.
 *
 * Every container and named volume the agent creates carries `io.iotistic.managed=true`, the agent
 * id, the app and the service, and containers the hash of their configuration: after its own
 * restart the agent finds (re-adopts) them by those labels, and it never lists, stops or removes
 * anything without them. Containers are created with Docker's restart policy "no": restarts are
 * the agent's (CrashLoopBackOff, restart counts, the same rules as native processes), so an engine
 * that restarts a crashing container in a tight loop behind the agent's back cannot happen. After a
 * reboot the engine starts nothing by itself; the agent starts what the stored target wants.
 * Named volumes are `<app>_<name>` and are never removed by the agent (data outlives versions).
 */

export interface DockerRuntimeOptions {
  /** A dockerode client; by default one for `host`, else `DOCKER_HOST`, else the default socket. */
  docker?: Docker;
  /** The engine's address: `unix:///path/docker.sock` or `tcp://host:port`. */
  host?: string;
  /** Tells agents sharing an engine apart (a label); "default" unless told. */
  agentId?: string;
  clock: Clock;
  random: Random;
  logger: Logger;
  /** Seconds between SIGTERM and SIGKILL when stopping a container; 10 unless told. */
  stopTimeoutSeconds?: number;
  /** Limit of one API call (not pulls, not the event stream); 30 s unless told. */
  callTimeoutMs?: number;
  /** Limit of the availability ping; 3 s unless told. */
  pingTimeoutMs?: number;
  /** Re-subscription backoff of the event stream; 1 s to 30 s unless told. */
  watchBackoff?: { minMs: number; maxMs: number };
  /**
   * Cap of each container's own log (the engine's json-file driver rotates it): 10 MiB x 3 files
   * unless told; `false` leaves the engine's default log configuration alone.
   */
  containerLog?: { maxBytes: number; files: number } | false;
  /** Where file secrets are written before they are bind-mounted read-only; required for services that have file secrets. */
  secretsDir?: string;
}

interface DockerError {
  statusCode?: number;
  message: string;
}

function status(err: unknown): number | undefined {
  return (err as DockerError | undefined)?.statusCode;
}

const ZERO_TIME = '0001-01-01T00:00:00Z';

function time(s: string | undefined): number | null {
  if (!s || s.startsWith('0001-01-01')) return null;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

const STATES: readonly InstanceState[] = ['created', 'running', 'exited', 'restarting', 'paused', 'dead', 'removing'];

/** Docker's error messages wrap the useful part in "(HTTP code 500) server error - ...". */
function dockerMessage(err: unknown): string {
  const json = (err as { json?: { message?: string } } | undefined)?.json;
  if (json && typeof json.message === 'string') return json.message;
  return errorMessage(err)
    .replace(/^\(HTTP code \d+\) [\w ]+ - /, '')
    .trim();
}

/** dockerode's connection options for an engine address (`unix:///path` or `tcp://host:port`). */
export function dockerAddress(host: string): Docker.DockerOptions {
  if (host.startsWith('unix://')) return { socketPath: host.slice('unix://'.length) };
  if (host.startsWith('/')) return { socketPath: host };
  const m = /^tcp:\/\/([^:/]+|\[[^\]]+\]):(\d+)\/?$/.exec(host);
  if (!m) throw new AgentError('DOCKER_HOST_INVALID', `docker host: expected "unix:///path/to/docker.sock" or "tcp://HOST:PORT", got ${JSON.stringify(host)}`);
  return { host: m[1] as string, port: Number(m[2]), protocol: 'http' };
}

/**
 * The unix socket dockerode would dial for `address` (or, without one, for DOCKER_HOST or its
 * default), so its absence can be seen without loading dockerode; undefined for a TCP engine.
 */
async function socketPath(address: Docker.DockerOptions | undefined): Promise<string | undefined> {
  if (address) return address.socketPath;
  const env = process.env.DOCKER_HOST;
  if (env && !env.startsWith('unix://')) return undefined;
  if (env && env.length > 'unix://'.length) return env.slice('unix://'.length);
  // docker-modem's default: the user's Docker Desktop socket when it is there, else the system one.
  const user = join(homedir(), '.docker', 'run', 'docker.sock');
  return (await exists(user)) ? user : '/var/run/docker.sock';
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch (err) {
    // Only "not there" counts: anything else (a permission) is for the client to report.
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

export class DockerRuntime implements WorkloadRuntime {
  readonly kind = 'docker' as const;
  readonly events = new RuntimeEventEmitter();
  readonly agentId: string;
  private readonly address: Docker.DockerOptions | undefined;
  private client: Docker | undefined;
  private loading: Promise<Docker> | undefined;
  private readonly networks: AppNetworks;

  constructor(private readonly o: DockerRuntimeOptions) {
    // A bad address fails here, at the start, as before the client was loaded lazily.
    this.address = o.host ? dockerAddress(o.host) : undefined;
    this.client = o.docker;
    this.agentId = o.agentId ?? 'default';
    this.networks = new AppNetworks({ engine: () => this.engine(), agentId: this.agentId, logger: o.logger, callSignal: (s) => this.signal(s) });
  }

  /** The client, loaded at the first call; fails as dockerode would while the engine's socket is missing. */
  private async engine(): Promise<Docker> {
    if (this.client) return this.client;
    if (!this.loading) {
      const path = await socketPath(this.address);
      if (path !== undefined && !(await exists(path))) {
        throw Object.assign(new Error(`connect ENOENT ${path}`), { code: 'ENOENT', address: path });
      }
      this.loading ??= import('dockerode').then(({ default: Dockerode }) => (this.client = new Dockerode(this.address)));
    }
    return this.loading;
  }

  /** The engine's client, for what is not a runtime step (image import and listing). */
  engineClient(): Promise<Docker> {
    return this.engine();
  }

  /** Where the engine is expected, for messages. */
  get endpoint(): string {
    if (!this.client) {
      if (this.address?.socketPath) return `unix://${this.address.socketPath}`;
      if (this.address) return `${this.address.host}:${this.address.port}`;
      return process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
    }
    const m = this.client.modem as unknown as { socketPath?: unknown; host?: string; port?: string | number };
    if (typeof m.socketPath === 'string') return `unix://${m.socketPath}`;
    if (m.host) return `${m.host}${m.port ? `:${m.port}` : ''}`;
    return process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
  }

  private signal(signal: AbortSignal | undefined, ms = this.o.callTimeoutMs ?? 30_000): AbortSignal {
    const t = AbortSignal.timeout(ms);
    return signal ? AbortSignal.any([signal, t]) : t;
  }

  private ownLabels(): string[] {
    return [`${LABELS.managed}=true`, `${LABELS.agent}=${this.agentId}`];
  }

  async availability(signal?: AbortSignal): Promise<Availability> {
    try {
      // The typings lack ping's options; dockerode takes them.
      const docker = await this.engine();
      await (docker.ping as unknown as (o: object) => Promise<unknown>).call(docker, { abortSignal: this.signal(signal, this.o.pingTimeoutMs ?? 3_000) });
      return { ok: true };
    } catch (err) {
      signal?.throwIfAborted();
      return { ok: false, reason: `${this.endpoint}: ${dockerMessage(err)}` };
    }
  }

  async list(signal?: AbortSignal): Promise<Instance[]> {
    const found = await (await this.engine()).listContainers({ all: true, filters: { label: this.ownLabels() }, abortSignal: this.signal(signal) } as Docker.ContainerListOptions);
    const out: Instance[] = [];
    for (const c of found) {
      try {
        const info = await (await this.engine()).getContainer(c.Id).inspect({ abortSignal: this.signal(signal) } as object);
        const inst = this.toInstance(info);
        if (inst) out.push(inst);
      } catch (err) {
        // Removed between the list and the inspect.
        if (status(err) !== 404) throw err;
      }
    }
    return out;
  }

  private toInstance(info: Docker.ContainerInspectInfo): Instance | undefined {
    const labels = info.Config.Labels ?? {};
    const app = labels[LABELS.app];
    const service = labels[LABELS.service];
    const configHash = labels[LABELS.configHash];
    if (!app || !service || !configHash) return undefined;
    const st = info.State;
    const state = (STATES as readonly string[]).includes(st.Status) ? (st.Status as InstanceState) : 'dead';
    const startedAt = time(st.StartedAt);
    const finishedAt = time(st.FinishedAt);
    const neverRan = state === 'created' && startedAt === null && !st.Error;
    return {
      id: info.Id,
      runtime: 'docker',
      app,
      service,
      configHash,
      image: info.Config.Image ?? null,
      state,
      exitCode: neverRan || state === 'running' ? null : st.ExitCode,
      error: st.Error ? st.Error : st.OOMKilled ? 'killed: out of memory' : null,
      startedAt,
      finishedAt,
      exitKey: state === 'exited' || state === 'dead' ? `${info.Id}:${st.FinishedAt ?? ZERO_TIME}` : null,
      ...appFields(labels, state === 'running' ? st : undefined),
    };
  }

  async hasImage(image: string, signal?: AbortSignal): Promise<boolean> {
    return (await this.imageSize(image, signal)) !== undefined;
  }

  async imageSize(image: string, signal?: AbortSignal): Promise<number | undefined> {
    try {
      const info = (await (await this.engine()).getImage(image).inspect({ abortSignal: this.signal(signal) } as object)) as { Size?: number };
      return info.Size ?? 0;
    } catch (err) {
      if (status(err) === 404) return undefined;
      throw err;
    }
  }

  /**
   * Pulls an image; rejects with the registry's reason (unreachable, unknown, unauthorized). With
   * `auth`, dockerode sends it as the X-Registry-Auth header (base64 JSON) of this one request only.
   */
  async pull(image: string, signal?: AbortSignal, auth?: RegistryAuth): Promise<void> {
    const ref = parseImageReference(image);
    if ('error' in ref) throw new AgentError('IMAGE_REFERENCE_INVALID', `${image}: expected ${ref.error}`);
    const tag = ref.digest ?? ref.tag ?? 'latest';
    let stream: Readable;
    let docker: Docker;
    try {
      docker = await this.engine();
      const opts = { fromImage: ref.repository, tag, ...(signal ? { abortSignal: signal } : {}) };
      // dockerode's auth argument becomes the X-Registry-Auth header; never part of the URL (the engine may log URLs).
      stream = (await (auth ? docker.createImage({ ...auth }, opts) : docker.createImage(opts))) as Readable;
    } catch (err) {
      throw new Error(dockerMessage(err), { cause: err });
    }
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        stream.destroy();
        reject(signal?.reason instanceof Error ? signal.reason : new Error('pull aborted'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      docker.modem.followProgress(stream, (err: Error | null, output: { error?: string; errorDetail?: { message?: string } }[]) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) return reject(new Error(dockerMessage(err)));
        const failed = output.find((o) => o.error ?? o.errorDetail?.message);
        if (failed) return reject(new Error(failed.errorDetail?.message ?? failed.error));
        resolve();
      });
    });
  }

  async create(desired: DesiredService, signal?: AbortSignal): Promise<string> {
    const { spec, app, service } = desired;
    if (!desired.image) throw new AgentError('IMAGE_MISSING', `${app}/${service}: no image`);
    const binds: string[] = [];
    for (const v of spec.volumes) {
      const vol = parseVolume(v);
      if (!vol) throw new AgentError('VOLUME_INVALID', `${app}/${service}: bad volume ${JSON.stringify(v)}`);
      const source = vol.hostPath ? vol.source : await this.ensureVolume(app, vol.source, signal);
      binds.push(`${source}:${vol.target}${vol.readOnly ? ':ro' : ''}`);
    }
    binds.push(...this.secretBinds(desired));
    const network = spec.network_mode === undefined ? await this.networks.ensure(app, signal) : undefined;
    const options = createOptions(desired, { binds, network, agentId: this.agentId, stopTimeoutSeconds: this.o.stopTimeoutSeconds ?? 10, logConfig: this.logConfig() });
    try {
      const c = await (await this.engine()).createContainer({ ...options, abortSignal: this.signal(signal) } as Docker.ContainerCreateOptions);
      return c.id;
    } catch (err) {
      if (status(err) === 409) {
        // The name is taken by a container that is not ours (ours would have been listed): let the engine name it.
        this.o.logger.warn({ app, service, name: options.name }, 'container name taken by a container the agent does not manage; creating it unnamed');
        const { name: _name, ...unnamed } = options;
        const c = await (await this.engine()).createContainer({ ...unnamed, abortSignal: this.signal(signal) } as Docker.ContainerCreateOptions);
        return c.id;
      }
      throw new Error(dockerMessage(err), { cause: err });
    }
  }

  /** Removes the networks of apps that left the target (docker-apps.ts). */
  readonly pruneNetworks = (keep: ReadonlySet<string>, signal?: AbortSignal): Promise<void> => this.networks.prune(keep, signal);

  /** Where this runtime writes file secrets (pruned by the assembly when services go). */
  get secretsDir(): string | undefined {
    return this.o.secretsDir;
  }

  /**
   * File secrets are mounted one file each, read-only. Mode 0444: the container may run as any
   * user, and a bind-mounted file keeps the host's owner; the 0700 directory keeps the host's other users out.
   */
  private secretBinds(desired: DesiredService): string[] {
    if (!desired.spec.secrets.some((r) => r.file !== undefined)) return [];
    if (!this.o.secretsDir) throw new AgentError('SECRETS_DIR_MISSING', `${desired.app}/${desired.service}: file secrets need the runtime's secretsDir`);
    const paths = writeSecretFiles(this.o.secretsDir, desired, { mode: 0o444 });
    return desired.spec.secrets.flatMap((r) => {
      const path = paths.get(r.name);
      return r.file !== undefined && path !== undefined ? [`${path}:${r.file}:ro`] : [];
    });
  }

  /** The engine's json-file log is unbounded by default: months of output would fill a device's disk. */
  private logConfig(): Pick<Docker.HostConfig, 'LogConfig'> {
    const cap = this.o.containerLog ?? { maxBytes: 10 * 1_048_576, files: 3 };
    if (cap === false) return {};
    return { LogConfig: { Type: 'json-file', Config: { 'max-size': String(cap.maxBytes), 'max-file': String(cap.files) } } };
  }

  private async ensureVolume(app: string, name: string, signal?: AbortSignal): Promise<string> {
    const full = `${app}_${name}`;
    const inspect = async (): Promise<Docker.VolumeInspectInfo | undefined> => {
      try {
        return (await (await this.engine()).getVolume(full).inspect({ abortSignal: this.signal(signal) } as object)) as Docker.VolumeInspectInfo;
      } catch (err) {
        if (status(err) !== 404) throw err;
        return undefined;
      }
    };
    let existing = await inspect();
    if (!existing) {
      // The engine answers a create of an existing name with that volume: look at whose it is after.
      await (await this.engine()).createVolume({
        Name: full,
        Labels: { [LABELS.managed]: 'true', [LABELS.agent]: this.agentId, [LABELS.app]: app },
        abortSignal: this.signal(signal),
      } as Docker.VolumeCreateOptions);
      existing = await inspect();
    }
    // "a_b" + "c" and "a" + "b_c" name one volume: never hand one app's data to another.
    const owner = existing?.Labels?.[LABELS.app];
    if (existing?.Labels?.[LABELS.managed] === 'true' && owner !== undefined && owner !== app) {
      throw new AgentError('VOLUME_TAKEN', `${app}: volume "${name}" would be the engine's volume ${full}, which belongs to app "${owner}"; rename the volume or the app`);
    }
    return full;
  }

  /** Removes the named volumes of `app` this agent made (a purge); bind mounts are host paths and never touched. */
  async purgeAppData(app: string, signal?: AbortSignal): Promise<string[]> {
    return removeAppVolumes(await this.engine(), [...this.ownLabels(), `${LABELS.app}=${app}`], this.signal(signal));
  }

  async start(id: string, signal?: AbortSignal): Promise<void> {
    try {
      await (await this.engine()).getContainer(id).start({ abortSignal: this.signal(signal) } as object);
    } catch (err) {
      if (status(err) === 304) return; // already running
      throw new Error(dockerMessage(err), { cause: err });
    }
  }

  async stop(id: string, signal?: AbortSignal): Promise<void> {
    const t = this.o.stopTimeoutSeconds ?? 10;
    try {
      await (await this.engine()).getContainer(id).stop({ t, abortSignal: this.signal(signal, (t + 30) * 1000) } as object);
    } catch (err) {
      if (status(err) === 304 || status(err) === 404) return; // already stopped, or gone
      throw new Error(dockerMessage(err), { cause: err });
    }
  }

  async remove(id: string, signal?: AbortSignal): Promise<void> {
    try {
      // v: anonymous volumes go with the container; named volumes stay.
      await (await this.engine()).getContainer(id).remove({ force: true, v: true, abortSignal: this.signal(signal) } as object);
    } catch (err) {
      if (status(err) === 404) return;
      throw new Error(dockerMessage(err), { cause: err });
    }
  }

  /**
   * Follows the engine's event stream for this agent's containers and reports each event; when the
   * stream drops (engine restart, socket gone) it subscribes again after a backoff, and reports a
   * 'resubscribed' change so the reconciler looks at everything it may have missed.
   */
  async watch(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff({
      minMs: this.o.watchBackoff?.minMs ?? 1_000,
      maxMs: this.o.watchBackoff?.maxMs ?? 30_000,
      strategy: 'full',
      resetAfterMs: 30_000,
      clock: this.o.clock,
      random: this.o.random,
    });
    while (!signal.aborted) {
      let why: string;
      try {
        const stream = (await (await this.engine()).getEvents({
          filters: { type: ['container'], label: this.ownLabels() },
          abortSignal: signal,
        } as object)) as Readable;
        backoff.success();
        this.events.notify({ action: 'resubscribed' });
        why = await this.consume(stream, signal);
      } catch (err) {
        why = dockerMessage(err);
      }
      if (signal.aborted) return;
      const first = backoff.attempt === 0;
      const delay = backoff.failure();
      // Said once per outage: a device without an engine would otherwise log this forever.
      this.o.logger[first ? 'warn' : 'debug']({ err: why, retryInMs: Math.round(delay) }, 'docker event stream lost; subscribing again');
      this.events.notify({ action: 'stream-lost' });
      try {
        await this.o.clock.sleep(delay, signal);
      } catch {
        return;
      }
    }
  }

  private consume(stream: Readable, signal: AbortSignal): Promise<string> {
    return new Promise<string>((resolve) => {
      let buf = '';
      const onAbort = (): void => {
        stream.destroy();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      stream.on('data', (chunk: Buffer) => {
        buf += chunk.toString('utf8');
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          try {
            const ev = JSON.parse(line) as { id?: string; Action?: string; status?: string };
            this.events.notify({ ...(ev.id ? { id: ev.id } : {}), action: ev.Action ?? ev.status ?? 'unknown' });
          } catch {
            // A partial or foreign line: the next full pass sees the truth anyway.
          }
        }
      });
      const done = (why: string) => (): void => {
        signal.removeEventListener('abort', onAbort);
        resolve(why);
      };
      stream.once('end', done('event stream ended'));
      stream.once('close', done('event stream closed'));
      stream.once('error', (err: Error) => done(errorMessage(err))());
    });
  }

  /**
   * A container's log as the engine streams it (`GET /containers/{id}/logs`: stdout and stderr in
   * frames, each entry with its time), from `since` (Docker's `seconds.nanoseconds`) or the start,
   * followed while the container runs; it ends when the container stops (log/docker-frames.ts reads it).
   */
  async logStream(id: string, since: string | undefined, signal: AbortSignal): Promise<Readable> {
    const container = (await this.engine()).getContainer(id);
    const opts = { follow: true, stdout: true, stderr: true, timestamps: true, ...(since ? { since } : {}), abortSignal: signal };
    return (await container.logs(opts as unknown as Docker.ContainerLogsOptions & { follow: true })) as unknown as Readable;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
