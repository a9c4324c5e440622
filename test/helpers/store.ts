import { MIGRATIONS } from '../../src/database-schema.js';
import { latestVersion as latestOf, type Migration } from '../../src/store/migrations.js';
import { Store as AgentStore } from '../../src/store/store.js';

export { MIGRATIONS };

type OpenOptions = Omit<Parameters<typeof AgentStore.open>[0], 'migrations'> & { migrations?: readonly Migration[] };

/**
 * `Store.open` with the agent's schema unless a test brings its own: the store runs only the list it
 * is given, and most tests want the agent's database as the agent opens it.
 */
export const Store = {
  open: (opts: OpenOptions): AgentStore => AgentStore.open({ ...opts, migrations: opts.migrations ?? MIGRATIONS }),
};
export type Store = AgentStore;

/** The agent's schema version, or that of `migrations`. */
export function latestVersion(migrations: readonly Migration[] = MIGRATIONS): number {
  return latestOf(migrations);
}
