import { systemClock } from '../../src/util/clock.js';
import { Reconciler } from '../../src/workloads/reconciler.js';
import { DockerRuntime } from '../../src/workloads/runtimes/docker.js';
import { ProcessRuntime } from '../../src/workloads/runtimes/process.js';
import type { TargetState } from '../../src/workloads/target-schema.js';
import { MemoryTargetSource } from '../../src/workloads/target-source.js';
import type { CurrentState, ServiceState } from '../../src/workloads/types.js';
import type { TestEngine } from './docker.js';
import { silentLogger } from './logger.js';
import { PlanApplyCheck } from './plan-check.js';

/**
 * The reconciler of one agent on a test engine and real processes, as the workload tests run it: its
 * loop running from the start on `target`, its states recorded, and every target it applies checked
 * against its plan preview (PlanApplyCheck). `stop()` ends the loop, stops its processes and checks
 * plan == apply; containers are left running, as an agent that stops leaves them.
 */

export interface WorkloadRigOptions {
  /** The agent id its containers are labelled with. */
  agentId: string;
  dataDir: string;
  intervalMs: number;
  crashBackoff: { minMs: number; maxMs: number };
  pullBackoff?: { minMs: number; maxMs: number };
  /** Re-subscribe to the engine's events quickly (a test that restarts the engine). */
  fastWatch?: boolean;
  /** "app/service" keys of the first target that retry by design (see PlanApplyCheck). */
  retries?: string[];
}

export interface WorkloadRig {
  id: string;
  rec: Reconciler;
  source: MemoryTargetSource;
  /** Every state the reconciler published, with when. */
  states: { at: number; state: CurrentState }[];
  service(app: string, name: string): ServiceState | undefined;
  /** The apply of `version` is done and nothing failed. */
  applied(version: number): boolean;
  /** Sets the next target, its plan taken first; `retries`: "app/service" keys that retry by design. */
  apply(t: TargetState, retries?: string[]): Promise<void>;
  stop(): Promise<void>;
}

export function workloadRig(eng: TestEngine, target: TargetState, o: WorkloadRigOptions): WorkloadRig {
  const logger = silentLogger();
  const docker = new DockerRuntime({
    docker: eng.docker,
    agentId: o.agentId,
    clock: systemClock,
    random: Math.random,
    logger,
    stopTimeoutSeconds: 1,
    ...(o.fastWatch ? { watchBackoff: { minMs: 200, maxMs: 1_000 } } : {}),
  });
  const proc = new ProcessRuntime({ dataDir: o.dataDir, clock: systemClock, logger, stopTimeoutMs: 1_000 });
  const source = new MemoryTargetSource(target);
  const check = new PlanApplyCheck({ docker, process: proc });
  const rec = new Reconciler({
    source,
    docker: check.docker,
    process: check.process,
    clock: systemClock,
    random: Math.random,
    logger,
    reconciliationIntervalMs: o.intervalMs,
    crashBackoff: o.crashBackoff,
    ...(o.pullBackoff ? { pullBackoff: o.pullBackoff } : {}),
  });
  const states: WorkloadRig['states'] = [];
  rec.on('changed', (state) => states.push({ at: Date.now(), state }));
  const ctl = new AbortController();
  const done = check.run(rec, source, ctl.signal, o.retries);
  let stopped = false;
  return {
    id: o.agentId,
    rec,
    source,
    states,
    service: (app, name) => rec.currentState().apps[app]?.services[name],
    applied: (version) => {
      const s = rec.currentState();
      return s.targetVersion === version && s.status === 'applied';
    },
    apply: (next, retries) => check.apply(next, retries),
    async stop() {
      if (stopped) return;
      stopped = true;
      ctl.abort();
      await done;
      await proc.close();
      check.verify();
    },
  };
}
