import type { ResolvedService } from './planner.js';
import type { RetryTracker } from './retry.js';

/** An image the target in force needs that the engine lacks and could not pull (`/v2/state`'s `missingImages`). */
export interface MissingImage {
  image: string;
  /** The services waiting for it, as `app/service`. */
  services: string[];
  /** Why the last pull failed (no registry reachable, unknown image...). */
  lastError: string | null;
  /** Epoch ms of the next pull attempt, if one is pending. */
  nextRetryAt: number | null;
}

/** The list as of the reconciler's last pass, and what an import that brings images does. */
export class MissingImages {
  private list: MissingImage[] = [];

  constructor(
    private readonly pulls: Pick<RetryTracker, 'view' | 'forget'>,
    private readonly kick: () => void,
  ) {}

  update(resolved: readonly ResolvedService[], present: ReadonlyMap<string, boolean>): void {
    this.list = missingImages(resolved, present, this.pulls);
  }

  current(): MissingImage[] {
    return structuredClone(this.list);
  }

  /** Images were loaded into the engine: the missing ones are looked at now, not after their pull backoff. */
  arrived(): void {
    for (const m of this.list) this.pulls.forget(m.image);
    this.kick();
  }
}

/**
 * The images absent from the engine whose pull failed: on an air-gapped device these are the ones
 * to bring by `images import` (docs/workloads.md, "Air-gapped updates"). An image still being pulled
 * for the first time is not listed: it may yet come.
 */
export function missingImages(resolved: readonly ResolvedService[], present: ReadonlyMap<string, boolean>, pulls: Pick<RetryTracker, 'view'>): MissingImage[] {
  const byImage = new Map<string, string[]>();
  for (const r of resolved) {
    const image = r.desired.image;
    if (r.blocked || image === undefined || present.get(image) !== false) continue;
    byImage.set(image, [...(byImage.get(image) ?? []), `${r.desired.app}/${r.desired.service}`]);
  }
  const out: MissingImage[] = [];
  for (const [image, services] of byImage) {
    const v = pulls.view(image);
    if (v.failures === 0 && v.lastError === null) continue;
    out.push({ image, services: services.sort(), lastError: v.lastError, nextRetryAt: v.nextRetryAt });
  }
  return out.sort((a, b) => a.image.localeCompare(b.image));
}
