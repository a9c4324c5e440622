/**
 * Errors and hand-written validators for the devcloud. Every message names the field, the value
 * received and what was expected, e.g. `messages[3].id: expected a non-empty string of at most 128
 * characters, got 42`.
 */

/** An error the HTTP layer answers with `statusCode`; `code` is stable for callers to branch on. */
export class DevCloudError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'DevCloudError';
  }
}

export function badRequest(message: string): DevCloudError {
  return new DevCloudError(400, 'BAD_REQUEST', message);
}

export function notFound(message: string): DevCloudError {
  return new DevCloudError(404, 'NOT_FOUND', message);
}

/** A short, readable rendering of a value for error messages. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'string') {
    const shown = value.length > 40 ? `${value.slice(0, 40)}…` : value;
    return `${JSON.stringify(shown)}${value.length > 40 ? ` (${value.length} characters)` : ''}`;
  }
  return `${typeof value} ${String(value)}`;
}

export function fail(field: string, expected: string, value: unknown): never {
  throw badRequest(`${field}: expected ${expected}, got ${describeValue(value)}`);
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function requireObject(value: unknown, field: string): Record<string, unknown> {
  if (!isObject(value)) fail(field, 'a JSON object', value);
  return value;
}

export function requireId(value: unknown, field: string, max = 128): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    fail(field, `a non-empty string of at most ${max} characters`, value);
  }
  return value;
}

export function requireString(value: unknown, field: string): string {
  if (typeof value !== 'string') fail(field, 'a string', value);
  return value;
}

export function requireFiniteNumber(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) fail(field, 'a finite number', value);
  return value;
}

export function requireInt(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(field, `an integer from ${min} to ${max}`, value);
  }
  return value;
}

export function optionalInt(value: unknown, field: string, min: number, max: number, fallback: number): number {
  return value === undefined ? fallback : requireInt(value, field, min, max);
}

/** Rejects keys the caller did not expect, so a typo (`fails` for `fail`) is an error, not a no-op. */
export function rejectUnknownKeys(obj: Record<string, unknown>, field: string, allowed: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      throw badRequest(`${field === '' ? key : `${field}.${key}`}: unknown field; expected one of ${allowed.join(', ')}`);
    }
  }
}

/** Parses a query-string integer (`?limit=10`); absent means `fallback`. */
export function queryInt(value: unknown, field: string, min: number, max: number, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const n = typeof value === 'string' && /^-?\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) fail(field, `an integer from ${min} to ${max}`, value);
  return n;
}

export const DEVICE_UUID = /^[A-Za-z0-9._-]{1,128}$/;

export function requireUuid(value: unknown, field = 'uuid'): string {
  if (typeof value !== 'string' || !DEVICE_UUID.test(value)) {
    fail(field, '1-128 letters, digits, ".", "_" or "-"', value);
  }
  return value;
}
