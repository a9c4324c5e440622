import type { BudgetView } from '../resilience/link-budget.js';
import type { LinkGate } from '../resilience/link-gate.js';
import type { Outbox } from '../outbox/outbox.js';

/** `link` of `GET /v2/connection`: the link to the cloud, its budget, and what waits for another link or budget. */
export interface LinkView {
  interface: string | null;
  metered: boolean;
  /** The channels sent while metered (settings.network.meteredChannels). */
  meteredChannels: readonly string[];
  budget: BudgetView & { exhausted: boolean };
  /** Queued messages per channel that may not go now: not allowed on this link, or no budget left. */
  held: Record<string, number>;
}

export function linkView(gate: Pick<LinkGate, 'state'>, outbox: Pick<Outbox, 'stats'>): LinkView {
  const s = gate.state();
  const held: Record<string, number> = {};
  if (s.metered) {
    for (const [channel, c] of Object.entries(outbox.stats().channels)) {
      if (c.depth > 0 && (s.budgetExhausted || !s.allowedChannels.includes(channel))) held[channel] = c.depth;
    }
  }
  return { interface: s.iface, metered: s.metered, meteredChannels: s.allowedChannels, budget: { ...s.budget, exhausted: s.budgetExhausted }, held };
}
