import { LogCollector } from '../logs/collector.js';
import { LogStore } from '../logs/log-store.js';
import type { AgentLogTap } from '../logs/agent-tap.js';
import type { Core } from './core.js';
import type { Queueing } from './outbox.js';
import type { Workloads } from './workloads.js';

/** The log collector (docs/logs.md): the workloads' output and the agent's own records, into the outbox's `logs` channel. */
export function buildLogs(core: Core, workloads: Workloads, queueing: Queueing, tap: AgentLogTap | undefined): LogCollector {
  const { config, store, clock, logger } = core;
  return new LogCollector({
    config: config.logs,
    outbox: queueing.outbox,
    store: new LogStore(store.db, config.logs.tailLines),
    clock,
    logger: logger.child({ part: 'logs' }),
    docker: workloads.runtimes.docker,
    process: workloads.runtimes.process.output,
    ...(tap ? { tap } : {}),
    ...(config.secrets.maskLogs ? { mask: workloads.secrets.masker() } : {}),
  });
}
