import type Docker from 'dockerode';

/**
 * Removes the volumes carrying every one of `labels` (the agent's own, and the app's): the purge of
 * an app's data. The engine refuses a volume a container still uses, so the app's containers go first.
 */
export async function removeAppVolumes(engine: Docker, labels: string[], signal: AbortSignal): Promise<string[]> {
  const found = await engine.listVolumes({ filters: { label: labels }, abortSignal: signal } as object);
  const removed: string[] = [];
  for (const v of found.Volumes ?? []) {
    await engine.getVolume(v.Name).remove({ abortSignal: signal } as object);
    removed.push(v.Name);
  }
  return removed;
}
