import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const LOCAL_KEY_FILE = 'local-api.key';

export function localKeyPath(dataDir: string): string {
  return join(dataDir, LOCAL_KEY_FILE);
}

/** Reads the local API key from the data dir, if the agent has made one. */
export function readLocalKey(dataDir: string): string | undefined {
  const path = localKeyPath(dataDir);
  if (!existsSync(path)) return undefined;
  const key = readFileSync(path, 'utf8').trim();
  return key === '' ? undefined : key;
}

/**
 * The key that guards the local API: the configured one, else the one kept in the data dir, else a
 * new random one written there with mode 0600 (atomically, so a crash never leaves an empty key).
 */
export function ensureLocalKey(dataDir: string, configured?: string): string {
  if (configured) return configured;
  const existing = readLocalKey(dataDir);
  if (existing) return existing;
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const key = randomBytes(24).toString('base64url');
  const path = localKeyPath(dataDir);
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, `${key}\n`, { mode: 0o600, flush: true });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return key;
}
