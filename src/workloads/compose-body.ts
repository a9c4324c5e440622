import { z } from 'zod';
import type { ConfigIssue } from '../config/issues.js';
import { fromZodIssues, formatIssue } from '../config/issues.js';
import { convertCompose } from './compose.js';

/**
 * The local API's Compose body (`POST /v2/local/target-state` with `{ "compose": "<YAML>", "app", "version" }`):
 * a target document never has a `compose` key, so the two kinds of body cannot be mistaken.
 */
const composeBody = z.strictObject({
  compose: z.string().min(1),
  app: z.string().optional(),
  version: z.number().int().min(0).optional(),
});

export function isComposeBody(body: unknown): boolean {
  return body !== null && typeof body === 'object' && !Array.isArray(body) && 'compose' in body;
}

/** The target a Compose body converts to, or the reasons (each with its path in the body or the Compose file). */
export function targetOfComposeBody(body: unknown): { ok: true; doc: unknown } | { ok: false; issues: ConfigIssue[]; message: string } {
  const parsed = composeBody.safeParse(body);
  if (!parsed.success) {
    const issues = fromZodIssues(parsed.error.issues, body, () => 'body', () => false);
    return { ok: false, issues, message: issues.map((i) => formatIssue(i)).join('; ') };
  }
  const { compose, app, version } = parsed.data;
  const r = convertCompose(compose, { ...(app !== undefined ? { app } : {}), ...(version !== undefined ? { version } : {}) });
  if (r.ok) return { ok: true, doc: r.target };
  const issues = r.issues.map((i) => ({ path: i.path === '(document)' ? 'compose' : `compose.${i.path}`, source: 'compose', expected: i.message }));
  return { ok: false, issues, message: r.issues.map((i) => `compose: ${i.path}: ${i.message}`).join('; ') };
}
