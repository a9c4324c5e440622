import type { ConfigIssue } from './issues.js';
import { redactConfig } from './load.js';
import type { ConfigFailure } from './load.js';
import type { AgentConfig } from './schema.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

/** Why a config file could not be used; a bounded set, so it can be a metric label. */
export type FallbackReason = ConfigFailure;

/** Issues carried in reports that leave the API (events, health): a file can hold thousands. */
const REPORTED_ISSUES = 20;

/** Where the config in force came from, and, when it is not the file, why. */
export type ConfigSource =
  | { source: 'file'; file: string | null }
  | {
      source: 'last-known-good';
      file: string | null;
      reason: FallbackReason;
      issues: ConfigIssue[];
      /** When the last-known-good copy was saved (epoch ms). */
      lastKnownGoodSavedAt: number;
      /** When this run fell back (epoch ms). */
      since: number;
    };

/** The summary in `/v2/state`, the health report and `status`: small, and the same everywhere. */
export interface ConfigStatus {
  source: 'file' | 'last-known-good';
  file: string | null;
  fallback: {
    reason: FallbackReason;
    message: string;
    issues: ConfigIssue[];
    issueCount: number;
    lastKnownGoodSavedAt: number;
    lastKnownGoodAgeMs: number;
    since: number;
  } | null;
}

export function configStatus(src: ConfigSource, now: number, maxIssues = REPORTED_ISSUES): ConfigStatus {
  if (src.source === 'file') return { source: 'file', file: src.file, fallback: null };
  return {
    source: src.source,
    file: src.file,
    fallback: {
      reason: src.reason,
      message: fallbackMessage(src),
      issues: src.issues.slice(0, maxIssues),
      issueCount: src.issues.length,
      lastKnownGoodSavedAt: src.lastKnownGoodSavedAt,
      lastKnownGoodAgeMs: Math.max(0, now - src.lastKnownGoodSavedAt),
      since: src.since,
    },
  };
}

/** `GET /v2/config`: the effective config (secrets redacted), where it came from and every issue. */
export function configView(config: AgentConfig, src: ConfigSource, now: number): ConfigStatus & { config: AgentConfig } {
  return { ...configStatus(src, now, Infinity), config: redactConfig(config) };
}

export function fallbackMessage(src: Extract<ConfigSource, { source: 'last-known-good' }>): string {
  const n = src.issues.length;
  return `the config ${src.file ?? '(environment)'} is ${REASON_WORDS[src.reason]} (${n} issue${n === 1 ? '' : 's'}); running on the last-known-good config saved ${new Date(src.lastKnownGoodSavedAt).toISOString()}`;
}

const REASON_WORDS: Record<FallbackReason, string> = {
  unreadable: 'unreadable',
  'not-json': 'not valid JSON',
  'not-an-object': 'not a JSON object',
  invalid: 'invalid',
};

export interface AnnounceOptions {
  status: ConfigStatus;
  /** Whether the previous run told the cloud of a fallback (kept in the store). */
  announced: { get(): boolean; set(value: boolean): void };
  event(type: 'config-fallback' | 'config-restored', data: Record<string, unknown>): void;
  /** Sends a health report (it carries `config`) now rather than at the next return from offline. */
  healthReport(): void;
  logger: Logger;
}

/**
 * At start: a run on the last-known-good config is told to the cloud (an event, a health report), and
 * so is the first run on the file again, or the cloud would keep showing the fallback after the fix.
 * Remembering it is a write; one that fails (a full disk) costs only the restored notice.
 */
export function announceConfigSource(o: AnnounceOptions): void {
  const { fallback, file } = o.status;
  let before = false;
  try {
    before = o.announced.get();
  } catch (err) {
    o.logger.warn({ err: errorMessage(err) }, 'could not read whether a config fallback was reported');
  }
  if (!fallback && !before) return;
  o.event(fallback ? 'config-fallback' : 'config-restored', { file, ...fallback });
  o.healthReport();
  try {
    if (before !== Boolean(fallback)) o.announced.set(Boolean(fallback));
  } catch (err) {
    o.logger.warn({ err: errorMessage(err) }, 'could not remember that a config fallback was reported');
  }
}
