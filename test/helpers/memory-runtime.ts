import { createdInstance } from '../../src/workloads/planner.js';
import { RuntimeEventEmitter } from '../../src/workloads/runtimes/events.js';
import type { Availability, DesiredService, HealthState, Instance, RegistryAuth, RuntimeKind, WorkloadRuntime } from '../../src/workloads/types.js';
import type { FakeClock } from './fake-clock.js';

/** An in-memory runtime for unit tests of the loop on fake time (the integration tests use real engines). */
export class MemoryRuntime implements WorkloadRuntime {
  readonly events = new RuntimeEventEmitter();
  readonly instances = new Map<string, Instance>();
  readonly starts: { service: string; at: number }[] = [];
  readonly pulls: { image: string; at: number; auth?: RegistryAuth }[] = [];
  images = new Set<string>();
  /** Services whose every run exits after this many ms. */
  crashAfterMs = new Map<string, number>();
  pullBehaviour: (image: string, signal?: AbortSignal, auth?: RegistryAuth) => Promise<void> = () => Promise.reject(new Error('registry unreachable'));
  createBehaviour: (d: DesiredService, signal?: AbortSignal) => Promise<void> = () => Promise.resolve();
  /** The verdict a service's health check reaches: an instance with one is `starting` when started and, once listed so, this verdict. */
  healthVerdict: (service: string) => HealthState = () => 'healthy';
  private readonly checked = new Set<string>();
  private seq = 0;

  constructor(
    readonly kind: RuntimeKind,
    private readonly clock: FakeClock,
  ) {}

  availability(): Promise<Availability> {
    return Promise.resolve({ ok: true });
  }
  list(): Promise<Instance[]> {
    const seen = [...this.instances.values()].map((i) => ({ ...i }));
    for (const i of this.instances.values()) if (i.health === 'starting') i.health = this.healthVerdict(i.service);
    return Promise.resolve(seen);
  }
  hasImage(image: string): Promise<boolean> {
    return Promise.resolve(this.kind === 'process' || this.images.has(image));
  }
  async pull(image: string, signal?: AbortSignal, auth?: RegistryAuth): Promise<void> {
    this.pulls.push({ image, at: this.clock.monotonic(), ...(auth ? { auth } : {}) });
    await this.pullBehaviour(image, signal, auth);
    this.images.add(image);
  }
  async create(d: DesiredService, signal?: AbortSignal): Promise<string> {
    await this.createBehaviour(d, signal);
    const id = `${d.service}-${++this.seq}`;
    if (d.spec?.healthcheck) this.checked.add(id);
    this.instances.set(id, { ...createdInstance(d, id), runtime: this.kind });
    return id;
  }
  start(id: string): Promise<void> {
    const i = this.instances.get(id);
    if (!i) return Promise.reject(new Error('no such instance'));
    Object.assign(i, { state: 'running', startedAt: this.clock.now(), exitCode: null, ...(this.checked.has(id) ? { health: 'starting' } : {}) });
    this.starts.push({ service: i.service, at: this.clock.monotonic() });
    const after = this.crashAfterMs.get(i.service);
    if (after !== undefined) {
      void this.clock.sleep(after).then(() => {
        Object.assign(i, { state: 'exited', exitCode: 1, finishedAt: this.clock.now(), exitKey: `${id}:${this.clock.monotonic()}` });
        this.events.notify({ id, action: 'die' });
      });
    }
    return Promise.resolve();
  }
  stop(id: string): Promise<void> {
    const i = this.instances.get(id);
    if (i && i.state === 'running') Object.assign(i, { state: 'exited', exitCode: 143, finishedAt: this.clock.now(), exitKey: `${id}:stop`, ...(this.checked.has(id) ? { health: null } : {}) });
    return Promise.resolve();
  }
  remove(id: string): Promise<void> {
    this.instances.delete(id);
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

