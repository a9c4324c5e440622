import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { trustedFile } from './data-dir.js';

export const IDENTITY_FILE = 'identity.json';
/** Where agents before identity.json kept the local API key; read once, at the upgrade. */
export const LEGACY_KEY_FILE = 'local-api.key';

/** Who this device is. Kept apart from the queue database, so a corrupt database never changes it. */
export interface Identity {
  uuid: string;
  localApiKey: string;
}

const UUID_RE = /^[0-9a-f]{32}$/;
const KEY_RE = /^[\x21-\x7e]{16,}$/;

function parseIdentity(text: string): Partial<Identity> {
  const doc = JSON.parse(text) as Record<string, unknown>;
  return {
    ...(typeof doc.uuid === 'string' && UUID_RE.test(doc.uuid) ? { uuid: doc.uuid } : {}),
    ...(typeof doc.localApiKey === 'string' && KEY_RE.test(doc.localApiKey) ? { localApiKey: doc.localApiKey } : {}),
  };
}

function readTrusted(path: string, logger: Logger, now: number): string | undefined {
  if (!trustedFile(path, logger, now)) return undefined;
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** The local API key a running agent uses, for `status`: read only, never moved or written. */
export function readLocalApiKey(dataDir: string): string | undefined {
  for (const [file, pick] of [
    [IDENTITY_FILE, (t: string) => parseIdentity(t).localApiKey],
    [LEGACY_KEY_FILE, (t: string) => t.trim()],
  ] as const) {
    try {
      const key = pick(readFileSync(join(dataDir, file), 'utf8'));
      if (key) return key;
    } catch {
      // missing or unreadable: try the next
    }
  }
  return undefined;
}

export interface LoadIdentityOptions {
  dataDir: string;
  logger: Logger;
  now: number;
  /** The uuid an agent before identity.json kept in its database, if any. */
  legacyUuid: () => string | undefined;
  random?: (bytes: number) => Buffer;
}

/**
 * Reads `identity.json` (no write when it is whole). What is missing comes from where older agents
 * kept it (the database's uuid, `local-api.key`) or is generated, and the file is written atomically.
 * A file not owned by the agent or writable by others is moved aside first (see `trustedFile`). A
 * write that fails (a full disk) is logged and retried at the next start; this run uses what it has.
 */
export function loadIdentity(opts: LoadIdentityOptions): Identity {
  const { dataDir, logger, now } = opts;
  const random = opts.random ?? randomBytes;
  const path = join(dataDir, IDENTITY_FILE);
  const text = readTrusted(path, logger, now);
  let found: Partial<Identity> = {};
  if (text !== undefined) {
    try {
      found = parseIdentity(text);
    } catch (err) {
      logger.error({ file: path, err: errorMessage(err) }, `${path} is not valid JSON; keeping what can be recovered from elsewhere`);
    }
  }
  if (found.uuid && found.localApiKey) return { uuid: found.uuid, localApiKey: found.localApiKey };

  const legacyUuid = opts.legacyUuid();
  const legacyKey = readTrusted(join(dataDir, LEGACY_KEY_FILE), logger, now)?.trim();
  const identity: Identity = {
    uuid: found.uuid ?? (legacyUuid && UUID_RE.test(legacyUuid) ? legacyUuid : random(16).toString('hex')),
    localApiKey: found.localApiKey ?? (legacyKey && KEY_RE.test(legacyKey) ? legacyKey : random(24).toString('base64url')),
  };
  try {
    writeFileAtomic(path, `${JSON.stringify(identity, null, 2)}\n`);
    logger.info({ file: path, uuid: identity.uuid }, `device identity kept in ${path}`);
  } catch (err) {
    logger.error({ file: path, err: errorMessage(err) }, `could not write ${path} (${errorMessage(err)}); this run uses the identity in memory and the next start writes it`);
  }
  return identity;
}
