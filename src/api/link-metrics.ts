import { Gauge, type Registry } from 'prom-client';

/** What the link metrics read (views/link-view.ts `LinkView`); null without a cloud. */
export interface LinkMetricsSource {
  link?(): {
    interface: string | null;
    metered: boolean;
    budget: { limitBytes: number; usedBytes: number };
    held: Record<string, number>;
  } | null;
}

/** The link to the cloud: metered or not, the budget's use, and what waits for another link or budget. */
export function linkMetrics(registry: Registry, source: LinkMetricsSource): void {
  new Gauge({
    name: 'iotistic_link_metered',
    help: '1 while the route to the cloud leaves on a metered interface (settings.network.meteredInterfaces)',
    labelNames: ['interface'],
    registers: [registry],
    collect() {
      this.reset();
      const l = source.link?.();
      if (l) this.set({ interface: l.interface ?? '' }, l.metered ? 1 : 0);
    },
  });
  new Gauge({
    name: 'iotistic_link_budget_used_bytes',
    help: 'Bytes the metered interfaces carried (received + sent) in the current budget period',
    registers: [registry],
    collect() {
      const l = source.link?.();
      if (l) this.set(l.budget.usedBytes);
    },
  });
  new Gauge({
    name: 'iotistic_link_budget_limit_bytes',
    help: 'The metered budget per period (settings.network.meteredBudgetBytes; 0: no cap)',
    registers: [registry],
    collect() {
      const l = source.link?.();
      if (l) this.set(l.budget.limitBytes);
    },
  });
  new Gauge({
    name: 'iotistic_link_held_messages',
    help: 'Queued messages held back by the metered link: their channel is not sent on it, or its budget is spent',
    labelNames: ['channel'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [channel, n] of Object.entries(source.link?.()?.held ?? {})) this.set({ channel }, n);
    },
  });
}
