import { readJsonCopy, writeFileAtomic } from '../util/atomic-file.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

/**
 * A copy of the target in force, outside the database (`<dataDir>/target.json`, 0600, replaced
 * atomically). The target is small and the one thing a device needs to keep its workloads as they
 * should be: when a corrupt database loses it (its page overwritten), the salvaged start takes it
 * from here instead of running with none until the cloud answers, which offline may be days.
 */

/** The copy's name in the data dir. */
export const TARGET_MIRROR_FILE = 'target.json';

export interface MirroredTarget {
  etag: string | null;
  version: number | null;
  document: unknown;
  source: 'cloud' | 'local';
  receivedAt: number;
}

/** Writes the copy; a failure (a full disk) is logged, never thrown: the database holds the target. */
export function writeTargetMirror(path: string, target: MirroredTarget, logger: Logger | undefined): void {
  try {
    writeFileAtomic(path, JSON.stringify({ format: 1, ...target }));
  } catch (err) {
    logger?.warn({ file: path, err: errorMessage(err) }, `could not write the copy of the target to ${path}: ${errorMessage(err)}`);
  }
}

/** The copy, or why there is none usable (missing, not JSON, not the shape written). */
export function readTargetMirror(path: string): { ok: true; target: MirroredTarget } | { ok: false; why: string } {
  const read = readJsonCopy(path);
  if (!read.ok) return read;
  const v = read.value;
  const o = v as Record<string, unknown>;
  const shaped =
    typeof v === 'object' && v !== null && o['format'] === 1 && 'document' in o &&
    (o['source'] === 'cloud' || o['source'] === 'local') &&
    (o['etag'] === null || typeof o['etag'] === 'string') &&
    (o['version'] === null || Number.isSafeInteger(o['version'])) &&
    Number.isFinite(o['receivedAt']);
  if (!shaped) return { ok: false, why: 'the copy does not have the expected fields (format 1: etag, version, document, source, receivedAt)' };
  return { ok: true, target: { etag: o['etag'] as string | null, version: o['version'] as number | null, document: o['document'], source: o['source'] as 'cloud' | 'local', receivedAt: o['receivedAt'] as number } };
}
