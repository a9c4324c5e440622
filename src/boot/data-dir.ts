import { chmodSync, lstatSync, mkdirSync, renameSync, type Stats } from 'node:fs';
import { basename } from 'node:path';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

/** Group or other may write: anyone in them could plant or swap files the agent trusts. */
const LOOSE_BITS = 0o022;

function myUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

function mode(st: Stats): string {
  return (st.mode & 0o777).toString(8).padStart(4, '0');
}

/**
 * Creates the data dir (0700) or checks the one that is there. One that group or others can write is
 * repaired when it is ours (chmod 0700, with a warning) and refused when it is not: its owner could
 * swap any file in it, and we cannot take that right away.
 */
export function prepareDataDir(dir: string, logger: Logger): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new AgentError('DATA_DIR_UNSAFE', `the data dir ${dir} is not a directory`);
  const uid = myUid();
  if (uid !== undefined && st.uid !== uid) {
    if (st.mode & LOOSE_BITS) {
      throw new AgentError(
        'DATA_DIR_UNSAFE',
        `the data dir ${dir} has mode ${mode(st)} and belongs to uid ${st.uid}, not to this agent's uid ${uid}: others could plant files the agent trusts; chown it to uid ${uid} or remove the group/other write bits (chmod 0700)`,
      );
    }
    return;
  }
  if (st.mode & LOOSE_BITS) {
    chmodSync(dir, 0o700);
    logger.warn({ dir, was: mode(st) }, `the data dir ${dir} had mode ${mode(st)} (group/other could write): changed it to 0700`);
  }
}

/**
 * Whether a file the agent will trust (a key, its identity, its lock) is safe to read: a regular file
 * owned by the agent's user that neither group nor others may write. An unsafe one is moved aside to
 * `<name>.untrusted-<time>` and logged, and false returned, so the caller makes a fresh one. A missing
 * file is false too.
 */
export function trustedFile(path: string, logger: Logger, now: number): boolean {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch {
    return false;
  }
  const uid = myUid();
  const why = !st.isFile()
    ? 'it is not a regular file'
    : uid !== undefined && st.uid !== uid
      ? `it belongs to uid ${st.uid}, not to this agent's uid ${uid}`
      : st.mode & LOOSE_BITS
        ? `its mode ${mode(st)} lets group/other write it`
        : undefined;
  if (!why) return true;
  const aside = `${path}.untrusted-${new Date(now).toISOString().replace(/[:.]/g, '-')}`;
  try {
    renameSync(path, aside);
  } catch (err) {
    throw new AgentError('DATA_DIR_UNSAFE', `${path} is not trusted (${why}) and cannot be moved aside: ${errorMessage(err)}`, { cause: err });
  }
  logger.error({ file: path, movedTo: aside, reason: why }, `not trusting ${basename(path)}: ${why}; moved it to ${aside}`);
  return false;
}
