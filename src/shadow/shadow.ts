import type { Database, Statement } from 'better-sqlite3';
import type { Clock } from '../util/clock.js';
import { AgentError, errorMessage } from '../util/errors.js';
import { applyMergePatch, withoutNulls, type Json } from '../util/json-diff.js';
import type { Logger } from '../util/logger.js';
import { TypedEmitter } from '../util/typed-emitter.js';
import { computeDelta, deepEqual, effectiveDesired, mergeOverrides, threeWayMerge, type JsonObject } from './three-way.js';

export type { JsonObject } from './three-way.js';

/** A local override the cloud overruled: what the operator had set, and what the cloud set instead. */
export interface ShadowConflict {
  path: string[];
  local: Json;
  /** The cloud's value at `path`; null when the cloud's desired state has nothing there. */
  cloud: Json | null;
  desiredVersion: number;
  at: number;
}

export interface ShadowDocument {
  /** The effective desired state: the cloud's with the local overrides applied. */
  desired: JsonObject;
  cloudDesired: JsonObject;
  desiredVersion: number | null;
  /** Local desired edits, a JSON merge patch over `cloudDesired` (null members: deleted locally). */
  overrides: JsonObject | null;
  reported: JsonObject;
  reportedVersion: number;
  /** What `reported` does not match in `desired`. */
  delta: JsonObject;
  /** The most recent last, at most 20. */
  conflicts: ShadowConflict[];
  /** clock.now() of the last change; null before the first. */
  updatedAt: number | null;
}

export interface ShadowChange {
  document: ShadowDocument;
  reportedChanged: boolean;
  /** Whether the effective desired state changed. */
  desiredChanged: boolean;
  source: 'local' | 'cloud' | 'operator';
}

export interface ShadowPatchResult {
  document: ShadowDocument;
  reportedChanged: boolean;
  desiredChanged: boolean;
}

export interface CloudDesiredResult {
  applied: boolean;
  /** Why the message was not applied. */
  reason?: string;
  /** Local overrides this message overruled (recorded in the document's `conflicts`). */
  conflicts: ShadowConflict[];
}

export type ShadowErrorCode = 'SHADOW_INVALID' | 'SHADOW_TOO_LARGE';

export class ShadowError extends AgentError {
  constructor(code: ShadowErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ShadowError';
  }
}

/** The outbox channel of reported-state messages (`{ version, state }`; MQTT `shadow/reported`). */
export const SHADOW_CHANNEL = 'shadow';

export const DEFAULT_SHADOW_MAX_BYTES = 65_536;
export const MAX_SHADOW_CONFLICTS = 20;
/** Deeper input is refused: a shadow has no use for it, and the merge code recurses. */
export const MAX_SHADOW_DEPTH = 32;

export interface ShadowDeps {
  db: Database;
  clock: Pick<Clock, 'now'>;
  logger: Logger;
  /** Limit for each stored document (reported, overrides, cloud desired), as JSON text bytes. */
  maxBytes?: number;
}

/** What is stored; `desired` and `delta` are derived from it. */
interface Stored {
  cloudDesired: JsonObject;
  base: JsonObject;
  desiredVersion: number | null;
  overrides: JsonObject | null;
  reported: JsonObject;
  reportedVersion: number;
  conflicts: ShadowConflict[];
  updatedAt: number | null;
}

interface State extends Stored {
  desired: JsonObject;
  delta: JsonObject;
}

interface Row {
  cloud_desired: string;
  base: string;
  desired_version: number | null;
  overrides: string | null;
  reported: string;
  reported_version: number;
  conflicts: string;
  updated_at: number | null;
}

/**
 * The local device shadow: the cloud's desired state, local desired overrides on top of it, and the
 * device's reported state, persisted in the `shadow` table (SHADOW_MIGRATION). All reads come from
 * memory; every change is written in one transaction first and reaches memory and listeners only
 * once committed, so what listeners see is always what a restart would load.
 */
export class Shadow extends TypedEmitter<{ changed: ShadowChange }> {
  private readonly db: Database;
  private readonly clock: Pick<Clock, 'now'>;
  private readonly logger: Logger;
  private readonly maxBytes: number;
  private readonly upsert: Statement;
  private state: State;

  constructor(deps: ShadowDeps) {
    super();
    this.db = deps.db;
    this.clock = deps.clock;
    this.logger = deps.logger;
    this.maxBytes = deps.maxBytes ?? DEFAULT_SHADOW_MAX_BYTES;
    this.upsert = this.db.prepare(
      `INSERT INTO shadow (id, cloud_desired, base, desired_version, overrides, reported, reported_version, conflicts, updated_at)
       VALUES (1, @cloud_desired, @base, @desired_version, @overrides, @reported, @reported_version, @conflicts, @updated_at)
       ON CONFLICT(id) DO UPDATE SET cloud_desired = excluded.cloud_desired, base = excluded.base,
         desired_version = excluded.desired_version, overrides = excluded.overrides, reported = excluded.reported,
         reported_version = excluded.reported_version, conflicts = excluded.conflicts, updated_at = excluded.updated_at`,
    );
    this.state = derive(this.load());
  }

  /** The document, a copy the caller may keep or change. */
  get(): ShadowDocument {
    return toDocument(this.state);
  }

  /**
   * Applies a local change: `{ reported?, desired? }`, each a JSON merge patch. `reported` merges
   * into the reported state; `desired` is kept as a local override over the cloud's desired state.
   * Throws SHADOW_INVALID or SHADOW_TOO_LARGE, changing nothing.
   */
  patch(input: unknown): ShadowPatchResult {
    const patch = parsePatch(input);
    const cur = this.state;
    let { reported, reportedVersion, overrides } = cur;
    if (patch.reported) {
      const next = withoutNulls(applyMergePatch(cur.reported, patch.reported)) as JsonObject;
      if (!deepEqual(next, cur.reported)) {
        this.checkSize('reported', next);
        reported = next;
        reportedVersion += 1;
      }
    }
    if (patch.desired) {
      const merged = mergeOverrides(cur.overrides, patch.desired, cur.cloudDesired);
      const next = Object.keys(merged).length > 0 ? merged : null;
      if (!deepEqual(next, cur.overrides)) {
        this.checkSize('overrides', next);
        overrides = next;
      }
    }
    const reportedChanged = reported !== cur.reported;
    if (!reportedChanged && overrides === cur.overrides) return { document: this.get(), reportedChanged: false, desiredChanged: false };

    // The overrides are always made against the current cloud desired: that is their merge base.
    const next = derive({ ...cur, reported, reportedVersion, overrides, base: cur.cloudDesired, updatedAt: this.now() });
    this.commit(next);
    const desiredChanged = !deepEqual(next.desired, cur.desired);
    this.emitChanged({ reportedChanged, desiredChanged, source: 'local' });
    return { document: this.get(), reportedChanged, desiredChanged };
  }

  /**
   * Applies the cloud's desired state `{ version, state }` (the retained `iot/{uuid}/shadow/desired`
   * message). Never throws: a message that cannot be applied is logged and reported in the result.
   */
  applyCloudDesired(message: unknown): CloudDesiredResult {
    const parsed = parseCloudDesired(message);
    if ('reason' in parsed) return this.notApplied(parsed.reason);
    const { version } = parsed;
    const cur = this.state;
    // The desired topic is retained, so the broker delivers the same message again on every
    // (re)connect, and an old one may arrive after a newer one. Only a newer version is applied: a
    // re-delivery must not undo the conflict resolution or local overrides made since.
    if (cur.desiredVersion !== null && version <= cur.desiredVersion) {
      const reason = `stale: version ${version} <= ${cur.desiredVersion}`;
      this.logger.debug({ version, desiredVersion: cur.desiredVersion }, `shadow: ignored the cloud's desired state (${reason})`);
      return { applied: false, reason, conflicts: [] };
    }
    // A null in a desired state means absent (see withoutNulls).
    const state = withoutNulls(parsed.state) as JsonObject;
    const bytes = jsonBytes(state);
    if (bytes > this.maxBytes) return this.notApplied(`state: ${bytes} bytes as JSON, over the ${this.maxBytes}-byte limit`);

    const merge = threeWayMerge(cur.base, state, cur.overrides);
    const at = this.now();
    const conflicts: ShadowConflict[] = merge.conflicts.map((c) => ({ ...c, desiredVersion: version, at }));
    const next = derive({
      ...cur,
      cloudDesired: state,
      base: state,
      desiredVersion: version,
      overrides: merge.overrides,
      conflicts: [...cur.conflicts, ...conflicts].slice(-MAX_SHADOW_CONFLICTS),
      updatedAt: at,
    });
    try {
      this.commit(next);
    } catch (err) {
      // Not applied, so the next delivery of this version (the retained message, on reconnect) retries.
      const reason = `not stored: ${errorMessage(err)}`;
      this.logger.error({ err: errorMessage(err), version }, `shadow: could not store the cloud's desired state version ${version}`);
      return { applied: false, reason, conflicts: [] };
    }
    for (const c of conflicts) {
      this.logger.warn(
        { path: c.path.join('.'), local: shortJson(c.local), cloud: shortJson(c.cloud), desiredVersion: version },
        `shadow: the cloud's desired version ${version} changed ${c.path.join('.')}, which was overridden locally; the cloud's value wins and the local override is dropped`,
      );
    }
    for (const path of merge.converged) {
      this.logger.info({ path: path.join('.'), desiredVersion: version }, `shadow: the cloud's desired version ${version} now sets ${path.join('.')} as overridden locally; the override is dropped`);
    }
    this.emitChanged({ reportedChanged: false, desiredChanged: !deepEqual(next.desired, cur.desired), source: 'cloud' });
    return { applied: true, conflicts: structuredClone(conflicts) };
  }

  /** Drops every local override (an operator's action): the cloud's desired state applies as is. */
  clearOverrides(): ShadowDocument {
    const cur = this.state;
    if (cur.overrides === null) return this.get();
    const next = derive({ ...cur, overrides: null, updatedAt: this.now() });
    this.commit(next);
    this.emitChanged({ reportedChanged: false, desiredChanged: !deepEqual(next.desired, cur.desired), source: 'operator' });
    return this.get();
  }

  protected override listenerFailed(err: unknown, event: string): void {
    this.logger.error({ err: errorMessage(err), event }, `a listener of the shadow's "${event}" event failed: ${errorMessage(err)}`);
  }

  private now(): number {
    return Math.round(this.clock.now());
  }

  private notApplied(reason: string): CloudDesiredResult {
    this.logger.warn({ reason }, `shadow: ignored an invalid cloud desired state: ${reason}`);
    return { applied: false, reason, conflicts: [] };
  }

  private checkSize(document: 'reported' | 'overrides', value: JsonObject | null): void {
    const bytes = value === null ? 0 : jsonBytes(value);
    if (bytes > this.maxBytes) {
      throw new ShadowError('SHADOW_TOO_LARGE', `${document}: would be ${bytes} bytes as JSON, over the ${this.maxBytes}-byte limit; nothing was changed`);
    }
  }

  /** Writes `next` in one transaction, then makes it current. Throws (and keeps the current state) if the write fails. */
  private commit(next: State): void {
    this.db.transaction(() => {
      this.upsert.run({
        cloud_desired: JSON.stringify(next.cloudDesired),
        base: JSON.stringify(next.base),
        desired_version: next.desiredVersion,
        overrides: next.overrides === null ? null : JSON.stringify(next.overrides),
        reported: JSON.stringify(next.reported),
        reported_version: next.reportedVersion,
        conflicts: JSON.stringify(next.conflicts),
        updated_at: next.updatedAt,
      });
    })();
    this.state = next;
  }

  private emitChanged(change: Omit<ShadowChange, 'document'>): void {
    if (this.listenerCount('changed') === 0) return;
    this.emit('changed', { document: this.get(), ...change });
  }

  /** The stored row, or defaults. A column that does not parse is logged and replaced by its default. */
  private load(): Stored {
    const row = this.db
      .prepare('SELECT cloud_desired, base, desired_version, overrides, reported, reported_version, conflicts, updated_at FROM shadow WHERE id = 1')
      .get() as Row | undefined;
    if (!row) return { cloudDesired: {}, base: {}, desiredVersion: null, overrides: null, reported: {}, reportedVersion: 0, conflicts: [], updatedAt: null };
    const cloudDesired = this.column(row, 'cloud_desired', isStoredObject) ?? {};
    const overrides = row.overrides === null ? null : (this.column(row, 'overrides', isStoredObject) ?? null);
    const conflicts = this.column(row, 'conflicts', isConflictList) ?? [];
    return {
      cloudDesired,
      // Without its base the 3-way merge compares against the cloud desired, which it equals after every apply.
      base: this.column(row, 'base', isStoredObject) ?? cloudDesired,
      desiredVersion: row.desired_version,
      overrides: overrides && Object.keys(overrides).length > 0 ? overrides : null,
      reported: this.column(row, 'reported', isStoredObject) ?? {},
      reportedVersion: row.reported_version,
      conflicts: conflicts.slice(-MAX_SHADOW_CONFLICTS),
      updatedAt: row.updated_at,
    };
  }

  private column<T>(row: Row, name: 'cloud_desired' | 'base' | 'overrides' | 'reported' | 'conflicts', valid: (v: unknown) => v is T): T | undefined {
    const text = row[name];
    let problem: string;
    try {
      const value: unknown = JSON.parse(text ?? '');
      if (valid(value)) return value;
      problem = `not the expected shape: ${describeValue(value)}`;
    } catch (err) {
      problem = `not JSON: ${errorMessage(err)}`;
    }
    this.logger.error({ column: name, problem }, `shadow: the stored ${name} is corrupt (${problem}); starting from its default`);
    return undefined;
  }
}

function derive(s: Stored): State {
  const desired = effectiveDesired(s.cloudDesired, s.overrides);
  return { ...s, desired, delta: computeDelta(desired, s.reported) };
}

function toDocument(s: State): ShadowDocument {
  return structuredClone({
    desired: s.desired,
    cloudDesired: s.cloudDesired,
    desiredVersion: s.desiredVersion,
    overrides: s.overrides,
    reported: s.reported,
    reportedVersion: s.reportedVersion,
    delta: s.delta,
    conflicts: s.conflicts,
    updatedAt: s.updatedAt,
  });
}

function jsonBytes(value: Json): number {
  return Buffer.byteLength(JSON.stringify(value), 'utf8');
}

// ---- validation ----

/** An object literal or JSON.parse result (not an array, a Date, a Buffer, a class instance). */
function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function isStoredObject(v: unknown): v is JsonObject {
  return isPlainObject(v);
}

function isConflictList(v: unknown): v is ShadowConflict[] {
  return (
    Array.isArray(v) &&
    v.every(
      (c: unknown) =>
        isPlainObject(c) &&
        Array.isArray(c.path) &&
        c.path.every((k) => typeof k === 'string') &&
        typeof c.desiredVersion === 'number' &&
        typeof c.at === 'number',
    )
  );
}

function kindOf(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object' && v !== null) {
    if (isPlainObject(v)) return 'an object';
    const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
    return typeof name === 'string' && name !== '' ? `a ${name}` : 'an object that is not plain';
  }
  return `a ${typeof v}`;
}

function truncate(text: string, max = 80): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

function shortJson(v: Json): string {
  return truncate(JSON.stringify(v));
}

/** A value as error messages show it: short JSON and what kind of value it is. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (v === null) return 'null';
  if (typeof v === 'number' && !Number.isFinite(v)) return `${v} (a number that is not finite)`;
  if (typeof v === 'bigint') return `${v}n (a bigint)`;
  if (typeof v === 'function' || typeof v === 'symbol') return kindOf(v);
  let text: string;
  try {
    text = JSON.stringify(v) ?? String(v);
  } catch {
    text = '(not serializable)';
  }
  return `${truncate(text)} (${kindOf(v)})`;
}

function invalid(field: string, expected: string, got: unknown): ShadowError {
  return new ShadowError('SHADOW_INVALID', `${field}: expected ${expected}, got ${describeValue(got)}`);
}

/** Why `v` is not a JSON value the shadow can hold, naming where; undefined when it is one. */
function jsonProblem(v: unknown, where: string, depth: number): string | undefined {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return undefined;
  if (typeof v === 'number') return Number.isFinite(v) ? undefined : `${where}: expected a JSON value, got ${describeValue(v)}`;
  if (depth > MAX_SHADOW_DEPTH) return `${where}: nested deeper than ${MAX_SHADOW_DEPTH} levels`;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const p = jsonProblem(v[i], `${where}[${i}]`, depth + 1);
      if (p) return p;
    }
    return undefined;
  }
  if (!isPlainObject(v)) return `${where}: expected a JSON value, got ${describeValue(v)}`;
  for (const [k, member] of Object.entries(v)) {
    // An own "__proto__" member (JSON.parse makes one) would set a prototype when merged.
    if (k === '__proto__') return `${where}: the member name "__proto__" is not allowed`;
    const p = jsonProblem(member, `${where}.${k}`, depth + 1);
    if (p) return p;
  }
  return undefined;
}

function parsePatch(input: unknown): { reported?: JsonObject; desired?: JsonObject } {
  if (!isPlainObject(input)) throw invalid('patch', 'an object with "reported" and/or "desired"', input);
  const unknownKeys = Object.keys(input).filter((k) => k !== 'reported' && k !== 'desired');
  if (unknownKeys.length > 0) {
    const names = unknownKeys.map((k) => truncate(JSON.stringify(k), 40)).join(', ');
    throw new ShadowError('SHADOW_INVALID', `patch: unknown field ${names}; expected only "reported" and/or "desired"`);
  }
  const out: { reported?: JsonObject; desired?: JsonObject } = {};
  for (const field of ['reported', 'desired'] as const) {
    const value = input[field];
    if (value === undefined) continue;
    if (!isPlainObject(value)) throw invalid(field, 'an object (a JSON merge patch)', value);
    const problem = jsonProblem(value, field, 1);
    if (problem) throw new ShadowError('SHADOW_INVALID', problem);
    out[field] = value as JsonObject;
  }
  if (!out.reported && !out.desired) throw invalid('patch', 'an object with "reported" and/or "desired"', input);
  return out;
}

function parseCloudDesired(message: unknown): { version: number; state: JsonObject } | { reason: string } {
  if (!isPlainObject(message)) return { reason: `message: expected an object {"version": <integer >= 0>, "state": <object>}, got ${describeValue(message)}` };
  const { version, state } = message;
  if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 0) {
    return { reason: `version: expected an integer >= 0, got ${describeValue(version)}` };
  }
  if (!isPlainObject(state)) return { reason: `state: expected an object (the desired state), got ${describeValue(state)}` };
  const problem = jsonProblem(state, 'state', 1);
  if (problem) return { reason: problem };
  return { version, state: state as JsonObject };
}

