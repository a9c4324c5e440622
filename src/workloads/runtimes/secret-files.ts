import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic-file.js';
import type { TargetState } from '../target-schema.js';
import type { DesiredService } from '../types.js';

/**
 * The files of a service's file secrets: `<root>/<app>/<service>/<name>`, in a 0700 directory.
 * Each is replaced by a rename, so an instance still running keeps the value it started with
 * while its successor gets the new one. Names the service no longer uses are removed. With an
 * owner (a process run as another user), the directory and files are that user's and the two
 * levels above it are 0711: it can pass through them to its own directory, list nothing.
 */
export function writeSecretFiles(root: string, desired: DesiredService, opts: { mode: number; owner?: { uid: number; gid: number } }): Map<string, string> {
  const dir = join(root, desired.app, desired.service);
  const paths = new Map<string, string>();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  if (opts.owner) {
    chmodSync(root, 0o711);
    chmodSync(join(root, desired.app), 0o711);
    chownSync(dir, opts.owner.uid, opts.owner.gid);
  }
  for (const ref of desired.spec.secrets) {
    const value = desired.secretValues.get(ref.name);
    if (ref.file === undefined || value === undefined) continue;
    const path = join(dir, ref.name);
    writeFileAtomic(path, value);
    if (opts.owner) chownSync(path, opts.owner.uid, opts.owner.gid);
    chmodSync(path, opts.mode);
    paths.set(ref.name, path);
  }
  for (const name of readdirSync(dir)) if (!paths.has(name)) rmSync(join(dir, name), { force: true });
  return paths;
}

/** The environment variables of a service's env secrets (and, for processes, of its file secrets' paths). */
export function secretEnv(desired: DesiredService, files?: ReadonlyMap<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const ref of desired.spec.secrets) {
    const value = desired.secretValues.get(ref.name);
    if (value === undefined) continue;
    if (ref.env !== undefined) env[ref.env] = value;
    const path = files?.get(ref.name);
    if (ref.file !== undefined && path !== undefined) env[ref.file] = path;
  }
  return env;
}

/**
 * Removes the secret files of services that no longer have file secrets in `target` (removed from
 * it, or their references changed). A container still running keeps its mounted file (the inode
 * lives until it is removed); nothing of a service gone stays on the device's disk.
 */
export function pruneSecretDirs(root: string, target: TargetState | undefined): void {
  if (!target || !existsSync(root)) return;
  const keep = new Set<string>();
  for (const [app, a] of Object.entries(target.apps)) {
    for (const [service, s] of Object.entries(a.services)) if (s.secrets.some((r) => r.file !== undefined)) keep.add(`${app}/${service}`);
  }
  for (const app of readdirSync(root)) {
    const appDir = join(root, app);
    for (const service of readdirSync(appDir)) if (!keep.has(`${app}/${service}`)) rmSync(join(appDir, service), { recursive: true, force: true });
    if (readdirSync(appDir).length === 0) rmSync(appDir, { recursive: true, force: true });
  }
}
