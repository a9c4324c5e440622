import { applyMergePatch, mergePatch, withoutNulls, type Json } from '../util/json-diff.js';

/** A JSON object: every shadow document (desired, reported, overrides, delta) is one. */
export type JsonObject = { [k: string]: Json };

export function isJsonObject(v: Json | undefined): v is JsonObject {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Structural equality of JSON values: object key order does not matter, arrays compare element by element. */
export function deepEqual(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined || a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((v, i) => deepEqual(v, b[i]));
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
}

/** The value at `path`, or undefined when a member on the way is missing or not an object. */
export function getPath(doc: Json | undefined, path: readonly string[]): Json | undefined {
  let cur: Json | undefined = doc;
  for (const key of path) {
    if (!isJsonObject(cur) || !Object.hasOwn(cur, key)) return undefined;
    cur = cur[key];
  }
  return cur;
}

/**
 * A copy of `doc` without the member at `path`; objects left empty by the removal are removed in
 * turn (an empty object in a merge patch is not a no-op everywhere, so none is left behind).
 */
export function removePath(doc: JsonObject, path: readonly string[]): JsonObject {
  const [key, ...rest] = path;
  if (key === undefined || !Object.hasOwn(doc, key)) return doc;
  const out = { ...doc };
  const child = out[key];
  if (rest.length === 0) {
    delete out[key];
  } else if (isJsonObject(child)) {
    const sub = removePath(child, rest);
    if (Object.keys(sub).length === 0) delete out[key];
    else out[key] = sub;
  }
  return out;
}

export interface Leaf {
  path: string[];
  value: Json;
}

/**
 * The leaves of a merge patch: its non-object values, null included (a local deletion). An empty
 * object is a leaf too: it sets a member that is not an object to `{}`, so it is an edit of its own.
 */
export function leaves(patch: JsonObject, prefix: string[] = []): Leaf[] {
  const out: Leaf[] = [];
  for (const [k, v] of Object.entries(patch)) {
    const path = [...prefix, k];
    if (isJsonObject(v) && Object.keys(v).length > 0) out.push(...leaves(v, path));
    else out.push({ path, value: v });
  }
  return out;
}

/**
 * Combines two merge patches into one: applying the result to `doc` gives what applying `earlier`
 * then `later` gives. Explicit nulls are kept (in the overrides they mean "deleted locally").
 *
 * RFC 7396 cannot say "replace this object with that object", which is what `earlier` setting a
 * member to a non-object (or deleting it) and `later` setting it to an object amounts to. For that
 * case the combined member is the patch from `doc`'s value to the result (its other keys nulled),
 * so the combination is exact for `doc`, the cloud desired the overrides apply to. Everywhere else
 * it does not depend on `doc`.
 */
export function mergeOverrides(earlier: JsonObject | null, later: JsonObject, doc: Json | undefined): JsonObject {
  return combine(earlier ?? {}, later, doc) as JsonObject;
}

function combine(earlier: Json | undefined, later: Json, doc: Json | undefined): Json {
  if (!isJsonObject(later)) return later;
  if (earlier === undefined || isJsonObject(earlier)) {
    // Both merge into what is there: member by member.
    const out: JsonObject = { ...earlier };
    const docObj = isJsonObject(doc) ? doc : undefined;
    for (const [k, v] of Object.entries(later)) out[k] = combine(out[k], v, docObj?.[k]);
    return out;
  }
  // `earlier` replaced the value (or deleted it); `later` then builds an object from nothing.
  const result = applyMergePatch(undefined, later);
  if (!isJsonObject(doc)) return result;
  return mergePatch(doc, result) ?? {};
}

/** The effective desired state: the cloud's, with the local overrides applied. */
export function effectiveDesired(cloudDesired: JsonObject, overrides: JsonObject | null): JsonObject {
  if (!overrides) return cloudDesired;
  return withoutNulls(applyMergePatch(cloudDesired, overrides)) as JsonObject;
}

/**
 * What `reported` does not match in `desired`: objects on both sides are compared member by member
 * (a sub-delta only when not empty); anything else, arrays included, is compared whole.
 */
export function computeDelta(desired: JsonObject, reported: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const [k, d] of Object.entries(desired)) {
    const r = Object.hasOwn(reported, k) ? reported[k] : undefined;
    if (isJsonObject(d) && isJsonObject(r)) {
      const sub = computeDelta(d, r);
      if (Object.keys(sub).length > 0) out[k] = sub;
    } else if (!deepEqual(d, r)) {
      out[k] = d;
    }
  }
  return out;
}

export interface DroppedOverride {
  path: string[];
  local: Json;
  cloud: Json | null;
}

export interface ThreeWayResult {
  overrides: JsonObject | null;
  /** Overrides the cloud changed from under: dropped, the cloud's value wins. */
  conflicts: DroppedOverride[];
  /** Overrides the cloud now agrees with: dropped quietly, the cloud owns the value again. */
  converged: string[][];
}

/**
 * Rebases the local overrides from `base` (the cloud desired they were made against) onto `next`
 * (a newer cloud desired). Per leaf of the overrides: if the cloud did not touch what the leaf
 * overrides, the leaf is kept (the operator's edit and the cloud's other changes both stand). If it
 * did, the cloud wins: the cloud is the authority for desired state, and a stale local edit must not
 * silently mask a newer cloud decision. The dropped edit is returned to be recorded as a conflict,
 * so the operator sees what was undone. When the cloud changed the value to exactly what the
 * operator set, both agree: the override is dropped without a conflict.
 */
export function threeWayMerge(base: JsonObject, next: JsonObject, overrides: JsonObject | null): ThreeWayResult {
  const result: ThreeWayResult = { overrides, conflicts: [], converged: [] };
  if (!overrides) return result;
  let kept: JsonObject = overrides;
  for (const leaf of leaves(overrides)) {
    if (!cloudChanged(base, next, leaf.path)) continue;
    kept = removePath(kept, leaf.path);
    const cloud = getPath(next, leaf.path);
    if (sameEffect(leaf.value, cloud)) result.converged.push(leaf.path);
    else result.conflicts.push({ path: leaf.path, local: leaf.value, cloud: cloud ?? null });
  }
  result.overrides = Object.keys(kept).length > 0 ? kept : null;
  return result;
}

/**
 * Whether the cloud changed what an override at `path` covers: the value at `path`, or a member on
 * the way that is not an object in `base` or `next` (a scalar parent the override turned into an
 * object, or a parent the cloud turned into a scalar). A parent that goes from absent to an object,
 * or back, does not count: the override merges into it either way.
 */
function cloudChanged(base: JsonObject, next: JsonObject, path: readonly string[]): boolean {
  for (let i = 1; i < path.length; i++) {
    const b = getPath(base, path.slice(0, i));
    const n = getPath(next, path.slice(0, i));
    const bObjectLike = b === undefined || isJsonObject(b);
    const nObjectLike = n === undefined || isJsonObject(n);
    if (!(bObjectLike && nObjectLike)) return !deepEqual(b, n);
  }
  return !deepEqual(getPath(base, path), getPath(next, path));
}

/** Whether the cloud's value at a path is what the override leaf would make it. */
function sameEffect(local: Json, cloud: Json | undefined): boolean {
  if (local === null) return cloud === undefined;
  // An empty object leaves an object as it is and turns anything else into {}.
  if (isJsonObject(local)) return isJsonObject(cloud);
  return deepEqual(local, cloud);
}
