import { hash, timingSafeEqual } from 'node:crypto';

const digest = (s: string): Buffer => hash('sha256', s, 'buffer');

/**
 * A check of presented bearer tokens against `key`, in constant time: both sides are hashed first,
 * which equalises their lengths. The key's digest is computed once, here; each request hashes only
 * the token it presents (one-shot `crypto.hash`: no hash object per request).
 */
export function bearerMatcher(key: string): (header: string | undefined) => boolean {
  const expected = digest(key);
  return (header) => {
    if (!header) return false;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m?.[1]) return false;
    return timingSafeEqual(digest(m[1]), expected);
  };
}
