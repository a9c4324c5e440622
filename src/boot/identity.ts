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
  /** What the cloud issued at registration (docs/lifecycle.md, "Provisioning"); absent before it. */
  issued?: IssuedCredentials;
}

/** A device key the cloud issued to `uuid`, and MQTT credentials when the answer had them. */
export interface IssuedCredentials {
  uuid: string;
  deviceApiKey: string;
  mqtt?: { username: string; password: string };
}

const UUID_RE = /^[0-9a-f]{32}$/;
const KEY_RE = /^[\x21-\x7e]{16,}$/;

function parseIdentity(text: string): Partial<Identity> {
  const doc = JSON.parse(text) as Record<string, unknown>;
  const issued = parseIssued(doc.issued);
  return {
    ...(typeof doc.uuid === 'string' && UUID_RE.test(doc.uuid) ? { uuid: doc.uuid } : {}),
    ...(typeof doc.localApiKey === 'string' && KEY_RE.test(doc.localApiKey) ? { localApiKey: doc.localApiKey } : {}),
    ...(issued ? { issued } : {}),
  };
}

const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0;

/** A damaged `issued` entry is dropped (the device registers again), never trusted in part. */
function parseIssued(v: unknown): IssuedCredentials | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (!isText(o.uuid) || typeof o.deviceApiKey !== 'string' || !/^[\x21-\x7e]+$/.test(o.deviceApiKey)) return undefined;
  const m = o.mqtt as Record<string, unknown> | undefined;
  const mqtt = m && isText(m.username) && isText(m.password) ? { username: m.username, password: m.password } : undefined;
  return { uuid: o.uuid, deviceApiKey: o.deviceApiKey, ...(mqtt ? { mqtt } : {}) };
}

/**
 * Keeps (or, with undefined, forgets) the credentials the cloud issued, in `identity.json` beside the
 * rest of the identity: one atomic write, mode 0600. Throws when the write fails; the caller says so.
 */
export function saveIssuedCredentials(dataDir: string, identity: Identity, issued: IssuedCredentials | undefined): Identity {
  const next: Identity = { uuid: identity.uuid, localApiKey: identity.localApiKey, ...(issued ? { issued } : {}) };
  writeFileAtomic(join(dataDir, IDENTITY_FILE), `${JSON.stringify(next, null, 2)}\n`);
  return next;
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
  if (found.uuid && found.localApiKey) return { uuid: found.uuid, localApiKey: found.localApiKey, ...(found.issued ? { issued: found.issued } : {}) };

  const legacyUuid = opts.legacyUuid();
  const legacyKey = readTrusted(join(dataDir, LEGACY_KEY_FILE), logger, now)?.trim();
  const identity: Identity = {
    uuid: found.uuid ?? (legacyUuid && UUID_RE.test(legacyUuid) ? legacyUuid : random(16).toString('hex')),
    localApiKey: found.localApiKey ?? (legacyKey && KEY_RE.test(legacyKey) ? legacyKey : random(24).toString('base64url')),
    ...(found.issued ? { issued: found.issued } : {}),
  };
  try {
    writeFileAtomic(path, `${JSON.stringify(identity, null, 2)}\n`);
    logger.info({ file: path, uuid: identity.uuid }, `device identity kept in ${path}`);
  } catch (err) {
    logger.error({ file: path, err: errorMessage(err) }, `could not write ${path} (${errorMessage(err)}); this run uses the identity in memory and the next start writes it`);
  }
  return identity;
}
