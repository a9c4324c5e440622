/** JSON values as they travel in reports. */
export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function isObject(v: unknown): v is Record<string, Json> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * A merge patch (RFC 7396 shape) that turns `from` into `to`: changed keys carry their new value,
 * removed keys carry null, arrays are replaced whole. Undefined when nothing changed.
 */
export function mergePatch(from: Json | undefined, to: Json): Json | undefined {
  if (!isObject(from) || !isObject(to)) return JSON.stringify(from) === JSON.stringify(to) ? undefined : to;
  const patch: Record<string, Json> = {};
  for (const [k, v] of Object.entries(to)) {
    const sub = mergePatch(from[k], v);
    if (sub !== undefined) patch[k] = sub;
  }
  // hasOwn, not `in`: a key named "constructor" is "in" every object.
  for (const k of Object.keys(from)) if (!Object.hasOwn(to, k)) patch[k] = null;
  return Object.keys(patch).length > 0 ? patch : undefined;
}

/** Applies a merge patch (RFC 7396) and returns the result; the inputs are not modified. */
export function applyMergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return patch;
  const out: Record<string, Json> = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = applyMergePatch(out[k], v);
  }
  return out;
}

/**
 * Drops null members of objects, recursively. In a merge patch null means "remove", so a state that
 * holds nulls could never be acknowledged (every diff would carry them again): absent is the same as null.
 */
export function withoutNulls(value: Json): Json {
  if (Array.isArray(value)) return value.map(withoutNulls);
  if (!isObject(value)) return value;
  const out: Record<string, Json> = {};
  for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = withoutNulls(v);
  return out;
}
