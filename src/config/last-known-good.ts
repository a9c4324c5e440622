import type { Store } from '../store/store.js';
import { agentConfigSchema, type AgentConfig } from './schema.js';
import type { ConfigResult } from './load.js';
import type { ConfigIssue } from './issues.js';

const LKG_KEY = 'config.lastKnownGood';

interface StoredLkg {
  config: unknown;
  savedAt: number;
  file: string | null;
}

export type ResolvedConfig =
  | { source: 'file'; config: AgentConfig; warnings: string[] }
  | { source: 'last-known-good'; config: AgentConfig; warnings: string[]; issues: ConfigIssue[]; savedAt: number }
  | { source: 'none'; issues: ConfigIssue[]; warnings: string[] };

/**
 * Keeps the last config that loaded well in the store. A later bad file does not take the device
 * down: the agent says why and runs on what worked before. Without a good copy there is nothing safe
 * to run on, and the caller exits with the reasons.
 */
export function resolveWithLastKnownGood(
  result: ConfigResult,
  store: Store,
  file: string | undefined,
  now: number,
  onSaveFailed: (err: unknown) => void = () => undefined,
): ResolvedConfig {
  const stored = store.getKv<StoredLkg>(LKG_KEY);
  if (result.ok) {
    // Written only when it changed, and a failed write (a full disk) is no reason not to start:
    // a start needs no write.
    if (!stored || JSON.stringify(stored.config) !== JSON.stringify(result.config) || stored.file !== (file ?? null)) {
      try {
        store.setKv(LKG_KEY, { config: result.config, savedAt: now, file: file ?? null } satisfies StoredLkg);
      } catch (err) {
        onSaveFailed(err);
      }
    }
    return { source: 'file', config: result.config, warnings: result.warnings };
  }
  if (stored) {
    // Re-validate: the schema may have changed since it was saved (an agent upgrade).
    const parsed = agentConfigSchema.safeParse(stored.config);
    if (parsed.success) {
      return { source: 'last-known-good', config: parsed.data, warnings: result.warnings, issues: result.issues, savedAt: stored.savedAt };
    }
  }
  return { source: 'none', issues: result.issues, warnings: result.warnings };
}
