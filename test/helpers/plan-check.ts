import { appendFileSync } from 'node:fs';
import { expect } from 'vitest';
import { PlanPreview, type PlanStep, type TargetPlan } from '../../src/workloads/plan-preview.js';
import type { Reconciler } from '../../src/workloads/reconciler.js';
import { DEFAULT_WORKLOAD_POLICY, type TargetState, type WorkloadPolicy } from '../../src/workloads/target-schema.js';
import type { MemoryTargetSource } from '../../src/workloads/target-source.js';
import type { CurrentState, DesiredService, Instance, SecretSource, WorkloadRuntime } from '../../src/workloads/types.js';
import { waitFor } from './agent-process.js';

/**
 * plan == apply, for every target a workload test applies. The check wraps the runtimes the
 * reconciler is given and records, per service, each call it makes (create, start, stop, remove)
 * and each image it pulls; before a target is set it asks the plan preview, on the same runtimes
 * and between two passes of the loop, what applying it will do. At the end each target's recorded
 * calls must be its plan's steps:
 * - a target whose apply is over (see `over`): every service
 *   made exactly the plan's steps, in order, and exactly the plan's images were pulled;
 * - a service that retries by design (a crash loop, an unreachable registry, an unhealthy update),
 *   named by the test: its first pass that acted made the steps of the plan's first pass, or a
 *   prefix of them ending at the call that failed.
 * A recording ends when its target settles, when the test sets the next target or at `verify()`.
 * Nothing here changes what the runtimes do: the reconciler runs on the real engine and processes.
 */

interface Call {
  step: PlanStep;
  pass: number;
  failed: boolean;
}

interface Recording {
  target: TargetState;
  plan: TargetPlan;
  /** "app/service" keys that retry by design: compared on their first pass. */
  retries: Set<string>;
  calls: Map<string, Call[]>;
  pulls: Set<string>;
  /** Instances created during this recording: the plan has no id for them. */
  made: Set<string>;
  settled: boolean;
}

export interface PlanCheckOptions {
  docker?: WorkloadRuntime | undefined;
  process: WorkloadRuntime;
  /** The reconciler's policy (`workloads.allow*`). */
  policy?: Partial<WorkloadPolicy> | undefined;
  secrets?: SecretSource | undefined;
}

type Recorded = 'create' | 'start' | 'stop' | 'remove';

function keyOf(i: Pick<Instance, 'app' | 'service'>): string {
  return `${i.app}/${i.service}`;
}

function show(steps: readonly PlanStep[]): string {
  return `[${steps.map((s) => [s.kind, s.instance?.slice(0, 12)].filter(Boolean).join(' ')).join(', ')}]`;
}

/** A step as compared: what `after` says is the plan's commentary, not a call. */
function bare(s: PlanStep): PlanStep {
  return s.instance === undefined ? { kind: s.kind } : { kind: s.kind, instance: s.instance };
}

function same(a: readonly PlanStep[], b: readonly PlanStep[]): boolean {
  return JSON.stringify(a.map(bare)) === JSON.stringify(b.map(bare));
}

/** The plan's steps of one service split into its passes (a new pass where `after` changes), pulls left out. */
function planPasses(steps: readonly PlanStep[]): PlanStep[][] {
  const passes: PlanStep[][] = [];
  let last: string | undefined = '';
  for (const s of steps) {
    if (s.after !== last || passes.length === 0) passes.push([]);
    last = s.after;
    if (s.kind !== 'pull') passes.at(-1)?.push(s);
  }
  return passes.filter((p) => p.length > 0);
}

/**
 * The apply is over when a pass ends with nothing under way (not `applying`: a removal that waits its
 * turn keeps it so) and nothing waiting to retry (no service in `backoff`); `failed` with services that
 * cannot run (no engine, refused) is over too.
 */
function over(state: CurrentState): boolean {
  if (state.status === 'applying') return false;
  return Object.values(state.apps).every((a) => Object.values(a.services).every((s) => s.status !== 'backoff'));
}

export class PlanApplyCheck {
  /** The runtimes to give the reconciler: the real ones, recorded. */
  readonly docker: WorkloadRuntime | undefined;
  readonly process: WorkloadRuntime;
  private readonly preview: PlanPreview;
  private readonly keys = new Map<string, string>();
  private recording: Recording | undefined;
  private readonly done: Recording[] = [];
  private pass = 0;
  private attached: { rec: Reconciler; source: MemoryTargetSource } | undefined;

  constructor(o: PlanCheckOptions) {
    this.docker = o.docker && this.wrap(o.docker);
    this.process = this.wrap(o.process);
    // The preview reads the runtimes unrecorded: its lists are not the reconciler's.
    this.preview = new PlanPreview({ docker: o.docker, process: o.process, policy: { ...DEFAULT_WORKLOAD_POLICY, ...o.policy }, secrets: o.secrets, stopTimeoutSeconds: 1 });
  }

  /** Counts the passes of `rec` and sees when a target settles; `rec` must run on this check's runtimes. */
  attach(rec: Reconciler, source: MemoryTargetSource): void {
    this.attached = { rec, source };
    const once = rec.reconcileOnce.bind(rec);
    rec.reconcileOnce = async (signal?: AbortSignal) => {
      this.pass++;
      const target = source.current();
      const result = await once(signal);
      const r = this.recording;
      const state = rec.currentState();
      if (r && target === r.target && state.targetVersion === r.target.version && over(state)) {
        r.settled = true;
        this.end();
      }
      return result;
    };
  }

  /** Plans the target in force, then runs the loop; `retries` as for `apply`. */
  async run(rec: Reconciler, source: MemoryTargetSource, signal: AbortSignal, retries: string[] = []): Promise<void> {
    this.attach(rec, source);
    const t = source.current();
    if (t) await this.expect(t, retries);
    await rec.run(signal);
  }

  /**
   * Sets the next target as the test means it: once the one in force has settled (unless some of
   * its services retry by design), planned between two passes of the loop, so no pass runs between
   * the plan and the apply. `retries`: "app/service" keys that retry by design.
   */
  async apply(t: TargetState, retries: string[] = []): Promise<void> {
    const { rec, source } = this.need();
    const prev = this.recording;
    if (prev && prev.retries.size === 0) {
      await waitFor(`target ${prev.target.version} to be applied (or failed for good) before target ${t.version} is set`, () => prev.settled, 60_000);
    }
    await rec.exclusive(async () => {
      await this.expect(t, retries);
      source.set(t);
    });
  }

  /** Plans `t` now and records what follows as its apply (for a test that drives the passes itself). */
  async expect(t: TargetState, retries: string[] = []): Promise<void> {
    this.end();
    const plan = await this.preview.planTarget(t);
    this.recording = { target: t, plan, retries: new Set(retries), calls: new Map(), pulls: new Set(), made: new Set(), settled: false };
  }

  /** Ends the recording and checks every target recorded; throws naming each difference. Returns what was compared. */
  verify(): { targets: number; services: number } {
    this.end();
    const problems: string[] = [];
    let services = 0;
    const all = this.done.splice(0);
    for (const r of all) {
      const found = this.compare(r);
      services += found.services;
      problems.push(...found.problems);
    }
    const report = process.env.IOTISTIC_PLAN_REPORT;
    // IOTISTIC_PLAN_REPORT=FILE: a line per check, to count what the workload tests compare.
    if (report) {
      const { testPath, currentTestName } = expect.getState();
      const targets = all.map((r) => ({ version: r.target.version, over: r.settled, retries: [...r.retries] }));
      appendFileSync(report, `${JSON.stringify({ file: testPath, test: currentTestName, targets, services, problems: problems.length })}\n`);
    }
    if (problems.length > 0) throw new Error(`plan != apply:\n${problems.join('\n')}`);
    return { targets: all.length, services };
  }

  private compare(r: Recording): { services: number; problems: string[] } {
    const problems: string[] = [];
    const v = `target ${r.target.version}`;
    const planned = new Map<string, PlanStep[]>(r.plan.services.map((s) => [`${s.app}/${s.service}`, s.steps]));
    const keys = new Set([...[...planned].filter(([, s]) => s.some((x) => x.kind !== 'pull')).map(([k]) => k), ...r.calls.keys()]);
    for (const key of keys) {
      const plan = planned.get(key) ?? [];
      const calls = r.calls.get(key) ?? [];
      if (r.retries.has(key)) {
        const first = planPasses(plan)[0] ?? [];
        const pass = calls.filter((c) => c.pass === calls[0]?.pass);
        const made = pass.map((c) => c.step);
        const ok = pass.at(-1)?.failed ? same(made, first.slice(0, made.length)) : same(made, first);
        if (!ok) problems.push(`${v}, ${key} (retries by design): its first pass planned ${show(first)}, made ${show(made)}`);
      } else {
        // A target with services that retry may never be applied; the others must have taken all their steps.
        if (!r.settled && r.retries.size === 0) problems.push(`${v} never ended (a pass with nothing under way and nothing to retry); name the services that retry by design`);
        const made = calls.map((c) => c.step);
        if (!same(made, plan.filter((s) => s.kind !== 'pull'))) problems.push(`${v}, ${key}: planned ${show(plan.filter((s) => s.kind !== 'pull'))}, made ${show(made)}`);
      }
    }
    const pulls = [...r.pulls].sort();
    const toPull = r.plan.images.pull.map((i) => i.image).sort();
    if (JSON.stringify(pulls) !== JSON.stringify(toPull)) problems.push(`${v}: planned pulls [${toPull.join(', ')}], pulled [${pulls.join(', ')}]`);
    return { services: keys.size, problems: [...new Set(problems)] };
  }

  private end(): void {
    if (this.recording) this.done.push(this.recording);
    this.recording = undefined;
  }

  private need(): { rec: Reconciler; source: MemoryTargetSource } {
    if (!this.attached) throw new Error('PlanApplyCheck: attach (or run) the reconciler first');
    return this.attached;
  }

  private log(r: Recording | undefined, key: string | undefined, kind: Recorded, id: string | undefined): Call | undefined {
    if (!r) return undefined;
    const step: PlanStep = id === undefined || r.made.has(id) ? { kind } : { kind, instance: id };
    const call: Call = { step, pass: this.pass, failed: false };
    const k = key ?? `(unknown instance ${id ?? '?'})`;
    r.calls.set(k, [...(r.calls.get(k) ?? []), call]);
    return call;
  }

  /** The runtime, with the reconciler's calls recorded; everything else passes through. */
  private wrap(rt: WorkloadRuntime): WorkloadRuntime {
    const calls = {
      list: async (signal?: AbortSignal): Promise<Instance[]> => {
        const found = await rt.list(signal);
        for (const i of found) this.keys.set(i.id, keyOf(i));
        return found;
      },
      pull: (image: string, ...rest: unknown[]): Promise<void> => {
        this.recording?.pulls.add(image);
        return (rt.pull as (image: string, ...a: unknown[]) => Promise<void>)(image, ...rest);
      },
      create: async (d: DesiredService, signal?: AbortSignal): Promise<string> => {
        const r = this.recording;
        try {
          const id = await rt.create(d, signal);
          this.keys.set(id, keyOf(d));
          r?.made.add(id);
          this.log(r, keyOf(d), 'create', undefined);
          return id;
        } catch (err) {
          const call = this.log(r, keyOf(d), 'create', undefined);
          if (call) call.failed = true;
          throw err;
        }
      },
      ...Object.fromEntries(
        (['start', 'stop', 'remove'] as const).map((kind) => [
          kind,
          async (id: string, signal?: AbortSignal): Promise<void> => {
            const call = this.log(this.recording, this.keys.get(id), kind, id);
            try {
              await rt[kind](id, signal);
            } catch (err) {
              if (call) call.failed = true;
              throw err;
            }
          },
        ]),
      ),
    } as Record<string, unknown>;
    return new Proxy(rt, {
      get(target, prop) {
        if (typeof prop === 'string' && Object.hasOwn(calls, prop)) return calls[prop];
        const value: unknown = Reflect.get(target, prop);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
  }
}
