import { lookup } from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import { LinkBudget } from '../resilience/link-budget.js';
import { SqliteBudgetStore } from '../resilience/link-budget-store.js';
import { LinkGate } from '../resilience/link-gate.js';
import type { Core } from './core.js';
import { mqttBrokerUrls } from '../config/schema.js';

/**
 * The metered-link gate (`settings.network`): built when the agent has a cloud to send to. The route
 * to the cloud's host decides the link; a change of it wakes every flusher (`wake`).
 */
export function buildLink(core: Core, wake: () => void): LinkGate | undefined {
  const { config, store, clock, logger } = core;
  const endpoint = config.cloud.apiUrl ?? mqttBrokerUrls(config.mqtt)[0];
  if (!endpoint) return undefined;
  const n = config.settings.network;
  const gate = new LinkGate({
    read: (path) => readFileSync(path, 'utf8'),
    patterns: n.meteredInterfaces,
    meteredChannels: n.meteredChannels,
    budget: new LinkBudget({ store: new SqliteBudgetStore(store.db), clock, kind: n.meteredBudgetPeriod, limitBytes: n.meteredBudgetBytes }),
    cloudHost: new URL(endpoint).hostname.replace(/^\[(.*)\]$/, '$1'),
    resolve: async (host) => (await lookup(host)).address,
    clock,
    logger: logger.child({ part: 'link' }),
    intervalMs: n.routeCheckIntervalMs,
    onChange: wake,
  });
  gate.check();
  return gate;
}
