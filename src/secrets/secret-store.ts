import { createCipheriv, createDecipheriv, createHmac, randomBytes as systemRandomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import { trustedFile } from '../boot/data-dir.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { NAME_EXPECTED, NAME_PATTERN } from '../workloads/target-schema.js';
import type { SecretSource } from '../workloads/types.js';

/**
 * The device's secrets: named UTF-8 values from the cloud or set locally, kept in one file encrypted
 * with AES-256-GCM (a fresh 96-bit nonce per write) under a 32-byte key held in its own file. A key
 * beside the data protects copies of the data dir made without the key file (a backup, a database
 * sent for support), not against root on the device; `secrets.keyFile` may point at a tmpfs a TPM
 * unseals at boot. Values are never logged and never leave this class except through `get`.
 */

export const SECRET_LIMITS = Object.freeze({ maxValueBytes: 65_536, maxNames: 256 });
/** Values shorter than this are not masked in log lines. */
export const MASK_MIN_CHARS = 6;
export type SecretOrigin = 'cloud' | 'local';

interface Entry {
  value: string;
  updatedAt: number;
}

interface Contents {
  cloudVersion: string | null;
  cloud: Record<string, Entry>;
  local: Record<string, Entry>;
}

/** What may be shown of a secret: never its value. */
export interface SecretInfo {
  name: string;
  source: SecretOrigin;
  updatedAt: number;
  /** A cloud value exists under a local override (it comes back when the local one is removed). */
  overridesCloud: boolean;
}

export interface SecretStoreOptions {
  file: string;
  keyFile: string;
  clock: Clock;
  logger: Logger;
  randomBytes?: (n: number) => Buffer;
}

const FORMAT = 1;
// Binds the ciphertext to its purpose: a blob from another file of the agent never decrypts here.
const AAD = Buffer.from('iotistic-secrets-v1');
const empty = (): Contents => ({ cloudVersion: null, cloud: {}, local: {} });

/** Why a name or value cannot be stored, or undefined. Names follow the target's names; values are bounded. */
export function secretIssue(name: string, value?: string): string | undefined {
  if (!NAME_PATTERN.test(name)) return `secret name ${JSON.stringify(name)}: expected ${NAME_EXPECTED}`;
  if (value === undefined) return undefined;
  if (typeof value !== 'string') return `secret ${name}: the value must be a string`;
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes > SECRET_LIMITS.maxValueBytes) return `secret ${name}: value of ${bytes} bytes, expected at most ${SECRET_LIMITS.maxValueBytes}`;
  return undefined;
}

export class SecretStore implements SecretSource {
  private key: Buffer = Buffer.alloc(0);
  private data: Contents = empty();
  private readonly listeners = new Set<() => void>();
  private readonly random: (n: number) => Buffer;

  constructor(private readonly o: SecretStoreOptions) {
    this.random = o.randomBytes ?? systemRandomBytes;
  }

  /** Loads the key (made on first use) and the file. A file that cannot be read is moved aside: the cloud's values come again. */
  open(): void {
    this.key = this.loadKey();
    this.data = this.load();
  }

  get cloudVersion(): string | null {
    return this.data.cloudVersion;
  }

  get(name: string): string | undefined {
    return (Object.hasOwn(this.data.local, name) ? this.data.local[name] : Object.hasOwn(this.data.cloud, name) ? this.data.cloud[name] : undefined)?.value;
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  list(): SecretInfo[] {
    const names = new Set([...Object.keys(this.data.cloud), ...Object.keys(this.data.local)]);
    return [...names].sort().map((name) => {
      const local = Object.hasOwn(this.data.local, name) ? this.data.local[name] : undefined;
      const entry = local ?? (this.data.cloud[name] as Entry);
      return { name, source: local ? 'local' : 'cloud', updatedAt: entry.updatedAt, overridesCloud: local !== undefined && Object.hasOwn(this.data.cloud, name) };
    });
  }

  /** A local value, overriding the cloud's of the same name until removed. */
  setLocal(name: string, value: string): void {
    const issue = secretIssue(name, value);
    if (issue) throw new AgentError('SECRET_INVALID', issue);
    if (!Object.hasOwn(this.data.local, name) && Object.keys(this.data.local).length >= SECRET_LIMITS.maxNames) {
      throw new AgentError('SECRET_INVALID', `secret ${name}: ${SECRET_LIMITS.maxNames} local secrets already, expected at most that many`);
    }
    if (this.data.local[name]?.value === value) return;
    this.commit({ ...this.data, local: { ...this.data.local, [name]: { value, updatedAt: this.o.clock.now() } } });
  }

  /** Removes a local value; whether there was one. */
  removeLocal(name: string): boolean {
    if (!Object.hasOwn(this.data.local, name)) return false;
    const { [name]: _gone, ...local } = this.data.local;
    this.commit({ ...this.data, local });
    return true;
  }

  /** The cloud's whole set, replacing the previous one (a name it no longer sends is gone). */
  replaceCloud(version: string, values: Record<string, string>): void {
    const cloud: Record<string, Entry> = {};
    for (const [name, value] of Object.entries(values)) {
      const prev = Object.hasOwn(this.data.cloud, name) ? this.data.cloud[name] : undefined;
      cloud[name] = prev?.value === value ? prev : { value, updatedAt: this.o.clock.now() };
    }
    this.commit({ ...this.data, cloudVersion: version, cloud });
  }

  /** Keyed with the secrets key: a plain hash of a short password could be reversed by guessing. */
  digest(values: readonly (readonly [string, string])[]): string {
    const h = createHmac('sha256', this.key);
    for (const [name, value] of values) h.update(`${JSON.stringify(name)}=${JSON.stringify(value)};`);
    return h.digest('hex');
  }

  /**
   * A function that replaces every value held (of MASK_MIN_CHARS or more: shorter ones would mask
   * ordinary words) with "[secret]", for the workloads' log lines. Longest first, so a value that
   * contains another is masked whole. Kept current as values change.
   */
  masker(): (text: string) => string {
    let values: string[] = [];
    const refresh = (): void => {
      const all = new Set([...Object.values(this.data.cloud), ...Object.values(this.data.local)].map((e) => e.value).filter((v) => v.length >= MASK_MIN_CHARS));
      values = [...all].sort((a, b) => b.length - a.length);
    };
    refresh();
    this.onChange(refresh);
    return (text) => {
      let out = text;
      for (const v of values) if (out.includes(v)) out = out.split(v).join('[secret]');
      return out;
    };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private commit(next: Contents): void {
    const changed = JSON.stringify(next) !== JSON.stringify(this.data);
    this.write(next);
    this.data = next;
    if (!changed) return;
    for (const l of this.listeners) {
      try {
        l();
      } catch (err) {
        this.o.logger.error({ err: errorMessage(err) }, 'a secrets listener failed');
      }
    }
  }

  private write(contents: Contents): void {
    const nonce = this.random(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce);
    cipher.setAAD(AAD);
    const data = Buffer.concat([cipher.update(JSON.stringify(contents), 'utf8'), cipher.final()]);
    const doc = { format: FORMAT, nonce: nonce.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64') };
    mkdirSync(dirname(this.o.file), { recursive: true, mode: 0o700 });
    writeFileAtomic(this.o.file, JSON.stringify(doc));
  }

  private loadKey(): Buffer {
    const path = this.o.keyFile;
    if (trustedFile(path, this.o.logger, this.o.clock.now())) {
      const hex = readFileSync(path, 'utf8').trim();
      if (/^[0-9a-f]{64}$/.test(hex)) return Buffer.from(hex, 'hex');
      this.moveAside(path, 'it does not hold 64 hex digits');
    }
    const key = this.random(32);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileAtomic(path, `${key.toString('hex')}\n`);
    this.o.logger.info({ file: path }, 'made a new secrets key');
    return key;
  }

  private load(): Contents {
    const path = this.o.file;
    if (!existsSync(path)) return empty();
    try {
      const doc = JSON.parse(readFileSync(path, 'utf8')) as { format?: unknown; nonce?: unknown; tag?: unknown; data?: unknown };
      if (doc.format !== FORMAT || typeof doc.nonce !== 'string' || typeof doc.tag !== 'string' || typeof doc.data !== 'string') throw new Error('not a secrets file of format 1');
      const decipher = createDecipheriv('aes-256-gcm', this.key, Buffer.from(doc.nonce, 'base64'));
      decipher.setAAD(AAD);
      decipher.setAuthTag(Buffer.from(doc.tag, 'base64'));
      const plain = Buffer.concat([decipher.update(Buffer.from(doc.data, 'base64')), decipher.final()]).toString('utf8');
      const c = JSON.parse(plain) as Contents;
      return { cloudVersion: typeof c.cloudVersion === 'string' ? c.cloudVersion : null, cloud: c.cloud ?? {}, local: c.local ?? {} };
    } catch (err) {
      // Node's GCM failure says only "Unsupported state or unable to authenticate data": say what it means.
      const why = /authenticate/.test(errorMessage(err)) ? 'it does not decrypt with the secrets key (another key, or the file was altered)' : errorMessage(err);
      this.moveAside(path, why);
      return empty();
    }
  }

  private moveAside(path: string, why: string): void {
    const aside = `${path}.corrupt-${new Date(this.o.clock.now()).toISOString().replace(/[:.]/g, '-')}`;
    try {
      renameSync(path, aside);
    } catch (err) {
      throw new AgentError('SECRETS_UNREADABLE', `${path} cannot be used (${why}) nor moved aside: ${errorMessage(err)}`, { cause: err });
    }
    this.o.logger.error({ file: path, movedTo: aside, reason: why }, `cannot use ${path}: ${why}; moved it to ${aside} (the cloud's secrets are fetched again, local ones must be set again)`);
  }
}
