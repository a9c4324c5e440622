import { createHash, timingSafeEqual } from 'node:crypto';

/** Compares a presented bearer token with the key in constant time (hashing first equalises lengths). */
export function bearerMatches(header: string | undefined, key: string): boolean {
  if (!header) return false;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m?.[1]) return false;
  const a = createHash('sha256').update(m[1]).digest();
  const b = createHash('sha256').update(key).digest();
  return timingSafeEqual(a, b);
}
