import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { ResolvedService } from './planner.js';
import { credentialFingerprint, pullErrorMessage, registryOfImage, type RegistryCredential, type RegistryCredentials } from './registry-auth.js';
import type { RetryTracker } from './retry.js';
import type { WorkloadRuntime } from './types.js';

export interface ImagePullsOptions {
  /** The Docker runtime; without one nothing is pulled and no image is present. */
  docker?: WorkloadRuntime;
  /** The pull backoff, keyed by image. */
  backoff: RetryTracker;
  clock: Clock;
  logger: Logger;
  /** Aborts every pull (the agent stops). */
  lifetime: AbortSignal;
  /** A pull that has not finished in this time is aborted and backs off. */
  timeoutMs: number;
  /** A pull ended (done, failed or aborted): the reconciler looks again. */
  settled: () => void;
}

interface Pull {
  ctl: AbortController;
  done: Promise<void>;
}

/**
 * The image downloads of the reconciler, in the background: a slow registry holds up only the
 * services that wait for the image. One download per image at a time; a failed one backs off
 * (the pull retry tracker) and one that no service wants any more is aborted.
 */
export class ImagePulls {
  private readonly pulls = new Map<string, Pull>();
  /** The credentials (their fingerprint) each failed pull used: new ones end its backoff at once. */
  private readonly failedWith = new Map<string, string>();

  constructor(private readonly o: ImagePullsOptions) {}

  /** Downloads under way. */
  get size(): number {
    return this.pulls.size;
  }

  pulling(image: string): boolean {
    return this.pulls.has(image);
  }

  /** Which of the images the resolved services want are on the device (an inspect that fails counts as absent). */
  async present(resolved: ResolvedService[], signal: AbortSignal): Promise<Map<string, boolean>> {
    const out = new Map<string, boolean>();
    const docker = this.o.docker;
    if (!docker) return out;
    const wanted = new Set(resolved.filter((r) => !r.blocked && r.desired.image !== undefined).map((r) => r.desired.image as string));
    await Promise.all(
      [...wanted].map(async (image) => {
        try {
          out.set(image, await docker.hasImage(image, signal));
        } catch (err) {
          signal.throwIfAborted();
          this.o.logger.warn({ image, err: errorMessage(err) }, 'could not inspect image');
          out.set(image, false);
        }
      }),
    );
    return out;
  }

  /** Aborts the downloads of images no resolved service wants. */
  abortUnwanted(resolved: ResolvedService[]): void {
    const wanted = new Set(resolved.map((r) => r.desired.image));
    for (const [image, pull] of this.pulls) {
      if (!wanted.has(image)) {
        this.o.logger.info({ image }, 'no service wants this image any more: aborting its download');
        pull.ctl.abort();
      }
    }
  }

  /**
   * Ends the backoff of every failed pull whose registry's credentials changed since (a corrected
   * password is tried at once, not after the backoff of the wrong one). Call before planning.
   */
  retryChangedCredentials(credentials: RegistryCredentials | undefined): void {
    for (const [image, used] of this.failedWith) {
      if (!this.o.backoff.waiting(image)) {
        this.failedWith.delete(image);
        continue;
      }
      if (fingerprintFor(image, credentials) === used) continue;
      this.o.logger.info({ image }, `the credentials for ${registryOfImage(image)} changed: pulling ${image} again now`);
      this.o.backoff.forget(image);
      this.failedWith.delete(image);
    }
  }

  /** Starts downloading `image` unless it is under way or backing off; logs in with the credentials of its registry. */
  start(image: string, credentials?: RegistryCredentials): void {
    const docker = this.o.docker;
    // A pull step planned before a failure that happened meanwhile must not skip the backoff.
    if (!docker || this.pulls.has(image) || this.o.backoff.waiting(image)) return;
    const registry = registryOfImage(image);
    let login: RegistryCredential | undefined;
    try {
      login = credentials?.for(registry);
    } catch (err) {
      this.failed(image, fingerprintFor(image, credentials), `pull of ${image} failed: ${errorMessage(err)}`, errorMessage(err));
      this.o.settled();
      return;
    }
    const auth = login ? { username: login.username, password: login.password, serveraddress: registry } : undefined;
    const ctl = new AbortController();
    const signal = AbortSignal.any([ctl.signal, this.o.lifetime, AbortSignal.timeout(this.o.timeoutMs)]);
    this.o.logger.info({ image, ...(login ? { registry, user: login.username, credentials: login.source } : {}) }, `pulling ${image}`);
    const started = this.o.clock.monotonic();
    const done = (async () => {
      try {
        await docker.pull(image, signal, auth);
        this.o.backoff.forget(image);
        this.failedWith.delete(image);
        this.o.logger.info({ image, ms: Math.round(this.o.clock.monotonic() - started) }, `pulled ${image}`);
      } catch (err) {
        if (ctl.signal.aborted || this.o.lifetime.aborted) return;
        this.failed(image, credentialFingerprint(login), pullErrorMessage(image, registry, login, errorMessage(err)), errorMessage(err));
      } finally {
        this.pulls.delete(image);
        this.o.settled();
      }
    })();
    this.pulls.set(image, { ctl, done });
  }

  private failed(image: string, fingerprint: string, why: string, err: string): void {
    const delay = this.o.backoff.fail(image, why);
    this.failedWith.set(image, fingerprint);
    this.o.logger.warn({ image, err, retryInMs: delay === undefined ? undefined : Math.round(delay) }, why);
  }

  /** Aborts every download and waits for them to end. */
  async close(): Promise<void> {
    for (const p of this.pulls.values()) p.ctl.abort();
    await Promise.allSettled([...this.pulls.values()].map((p) => p.done));
  }
}

/** The fingerprint of the credentials a pull of `image` would use now ("missing" when the lookup fails). */
function fingerprintFor(image: string, credentials: RegistryCredentials | undefined): string {
  try {
    return credentialFingerprint(credentials?.for(registryOfImage(image)));
  } catch {
    return 'missing';
  }
}
