import {
  agentDefaults,
  outageScenario,
  OUTAGE_CAPACITY_HEADROOM,
  REBOOT_CAPACITY_FRACTION,
  rebootScenario,
  simulate,
  steadyStateRps,
  STRATEGIES,
  type RunResult,
  type StrategyName,
} from './fleet-sim.js';
import { benchArgs, cell, jsonLine, machine, ratio, round, table, target, type BenchReport, type BenchResult, type BenchTarget } from './report.js';

/**
 * npm run bench:fleet [-- --devices N --seed S --json]
 *
 * A fleet of simulated devices runs the agent's poll loop with each backoff strategy side by side:
 * scenario 1 takes the cloud away for 60 s, 600 s and 3600 s; scenario 2 starts every device at
 * once against a cloud that serves a twentieth of the fleet per second. See bench/fleet-sim.ts.
 */

const OUTAGES_S = [60, 600, 3600] as const;
const PROBED: StrategyName = 'default+probe';

const USAGE = 'usage: node dist/bench/fleet.js [--devices N (default 10000)] [--seed S (default 1)] [--json]';

interface Args {
  devices: number;
  seed: number;
  json: boolean;
}

function parse(argv: string[]): Args {
  const a = benchArgs(argv, USAGE, { devices: { default: 10_000, min: 1 }, seed: { default: 1, min: 0, max: 0xffffffff } });
  return { devices: a.devices, seed: a.seed, json: a.json };
}

function fail(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

const seconds = (ms: number | undefined): number | null => (ms === undefined ? null : ms / 1000);

function main(): void {
  let args: Args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    fail(err instanceof Error ? err.message : String(err));
  }
  const { devices, seed } = args;
  const settings = agentDefaults();
  const steady = steadyStateRps(devices, settings);
  const started = performance.now();

  const outages = OUTAGES_S.map((outageS) => {
    const scenario = outageScenario(outageS * 1000, devices, settings);
    const runs = STRATEGIES.map((strategy) => {
      process.stderr.write(`outage ${outageS} s: ${strategy}...\n`);
      return simulate({ devices, seed, strategy, scenario, settings });
    });
    return { outageS, scenario, runs };
  });
  const reboot = rebootScenario(devices);
  const reboots = STRATEGIES.map((strategy) => {
    process.stderr.write(`reboot: ${strategy}...\n`);
    return simulate({ devices, seed, strategy, scenario: reboot, settings });
  });
  const wallS = (performance.now() - started) / 1000;

  const off = settings.offline;
  const outageCapacity = outages[0]?.scenario.capacityRps ?? 0;
  const outageStartS = outages[0]?.scenario.kind === 'outage' ? outages[0].scenario.outageStartMs / 1000 : 0;
  const out: string[] = [];
  out.push(`fleet benchmark: ${devices} devices, seed ${seed}, ${machine().cpus} cpus, node ${process.version}`);
  out.push(
    `agent defaults: pollIntervalMs ${settings.pollIntervalMs} (+0-10% jitter), backoff ${off.jitter} ${off.minBackoffSeconds}-${off.maxBackoffSeconds} s, ` +
      `reset after ${off.backoffResetAfterSeconds} s stable, offline after ${off.offlineAfterFailures} failures, ` +
      `probe ${settings.probeInitialMs / 1000}-${off.probeMaxIntervalSeconds} s (equal jitter), wake stagger 0-${settings.staggerMaxMs / 1000} s`,
  );
  out.push(`steady state: ${cell(steady, 1)} req/s (devices / poll interval)`);
  out.push('strategies: none/seed/equal/full/decorrelated poll with that backoff and no probe; default+probe is the agent as configured (full) with its probe.');
  out.push('');

  for (const { outageS, scenario, runs } of outages) {
    out.push(
      `Scenario 1 "cloud outage": down ${outageS} s from t=${outageStartS} s; capacity ${scenario.capacityRps} req/s ` +
        `(${OUTAGE_CAPACITY_HEADROOM}x steady state; beyond it 503); measured over the devices not online when the cloud returns`,
    );
    out.push(
      table(
        ['', ...STRATEGIES],
        [
          row('devices not online at return', runs, (r) => cell(r.affected)),
          row('requests during outage', runs, (r) => cell(r.requestsDuringOutage)),
          row('  per device', runs, (r) => cell(r.requestsDuringOutage / devices, 2)),
          row('requests/device return→online', runs, (r) => cell(r.requestsToOnlinePerDevice, 2)),
          row('peak req/s after return', runs, (r) => cell(r.peakRps)),
          row('  ÷ steady state', runs, (r) => cell(r.peakVsSteady, 2)),
          row('time to online p50 (s)', runs, (r) => cell(seconds(r.timeToOnlineMs?.p50), 1)),
          row('time to online p99 (s)', runs, (r) => cell(seconds(r.timeToOnlineMs?.p99), 1)),
          row('time to online max (s)', runs, (r) => cell(seconds(r.timeToOnlineMs?.max), 1)),
          row('not online by end of run', runs, (r) => cell(r.affected - r.recovered)),
          row('503s after return', runs, (r) => cell(r.rejected)),
          row('probe wake-ups', runs, (r) => cell(r.wakes)),
          row('simulation wall time (ms)', runs, (r) => cell(r.wallMs)),
        ],
      ),
    );
    out.push('');
  }

  out.push(
    `Scenario 2 "fleet reboot": every device starts at t=0 (first poll at once); capacity ${reboot.capacityRps} req/s ` +
      `(devices/${Math.round(1 / REBOOT_CAPACITY_FRACTION)}; beyond it 503); online = first successful poll`,
  );
  out.push(
    table(
      ['', ...STRATEGIES],
      [
        row('requests/device until online', reboots, (r) => cell(r.requestsToOnlinePerDevice, 2)),
        row('peak req/s (t=0 included)', reboots, (r) => cell(r.peakRps)),
        row('  ÷ steady state', reboots, (r) => cell(r.peakVsSteady, 2)),
        row('peak req/s after the first second', reboots, (r) => cell(r.peakRpsAfterFirstSecond)),
        row('  ÷ steady state', reboots, (r) => cell(r.peakRpsAfterFirstSecond / r.steadyRps, 2)),
        row('time to online p50 (s)', reboots, (r) => cell(seconds(r.timeToOnlineMs?.p50), 1)),
        row('time to online p99 (s)', reboots, (r) => cell(seconds(r.timeToOnlineMs?.p99), 1)),
        row('time to online max (s)', reboots, (r) => cell(seconds(r.timeToOnlineMs?.max), 1)),
        row('not online by end of run', reboots, (r) => cell(r.affected - r.recovered)),
        row('503s', reboots, (r) => cell(r.rejected)),
        row('probe wake-ups', reboots, (r) => cell(r.wakes)),
        row('simulation wall time (ms)', reboots, (r) => cell(r.wallMs)),
      ],
    ),
  );
  out.push('');

  // Results, ratios and targets.
  const results: BenchResult[] = [];
  const ratios: Record<string, number | null> = {};
  const targets: Record<string, BenchTarget> = {};
  const add = (name: string, value: number | null, unit: string): void => {
    results.push({ name, value: value === null || !Number.isFinite(value) ? null : round(value), unit });
  };
  const p99s = (r: RunResult | undefined): number | null => seconds(r?.timeToOnlineMs?.p99) ?? null;

  for (const { outageS, runs } of outages) {
    const key = `outage_${outageS}s`;
    for (const r of runs) {
      const k = `${key}.${r.strategy}`;
      add(`${k}.requests_during_outage`, r.requestsDuringOutage, 'requests');
      add(`${k}.requests_per_device_to_online`, r.requestsToOnlinePerDevice, 'requests/device');
      add(`${k}.peak_rps_after_return`, r.peakRps, 'req/s');
      add(`${k}.peak_vs_steady`, r.peakVsSteady, 'x');
      add(`${k}.p50_to_online`, seconds(r.timeToOnlineMs?.p50), 's');
      add(`${k}.p99_to_online`, seconds(r.timeToOnlineMs?.p99), 's');
      add(`${k}.max_to_online`, seconds(r.timeToOnlineMs?.max), 's');
      add(`${k}.rejected_503_after_return`, r.rejected, 'requests');
      ratios[`${k}.peak_vs_steady`] = round(r.peakVsSteady);
    }
    const probed = runs.find((r) => r.strategy === PROBED);
    const full = runs.find((r) => r.strategy === 'full');
    ratios[`${key}.${PROBED}_vs_full.p99_to_online`] = ratio(p99s(probed), p99s(full));
    targets[`${key}.${PROBED}.p99_to_online_s`] = target('<=', 40, p99s(probed));
    targets[`${key}.${PROBED}.peak_vs_steady`] = target('<=', 3.5, probed ? probed.peakVsSteady : null);
  }

  for (const r of reboots) {
    const k = `reboot.${r.strategy}`;
    add(`${k}.requests_per_device_to_online`, r.requestsToOnlinePerDevice, 'requests/device');
    add(`${k}.peak_rps`, r.peakRps, 'req/s');
    add(`${k}.peak_vs_steady`, r.peakVsSteady, 'x');
    add(`${k}.peak_after_first_second_vs_steady`, r.peakRpsAfterFirstSecond / r.steadyRps, 'x');
    add(`${k}.p50_to_online`, seconds(r.timeToOnlineMs?.p50), 's');
    add(`${k}.p99_to_online`, seconds(r.timeToOnlineMs?.p99), 's');
    add(`${k}.max_to_online`, seconds(r.timeToOnlineMs?.max), 's');
    add(`${k}.rejected_503`, r.rejected, 'requests');
  }
  const none = reboots.find((r) => r.strategy === 'none');
  for (const r of reboots) {
    if (r.strategy === 'none') continue;
    ratios[`reboot.${r.strategy}_vs_none.requests_per_device`] = ratio(r.requestsToOnlinePerDevice, none?.requestsToOnlinePerDevice ?? null);
    ratios[`reboot.${r.strategy}_vs_none.p99_to_online`] = ratio(p99s(r), p99s(none));
  }
  targets[`reboot.${PROBED}_vs_none.requests_per_device`] = target('<=', 0.5, ratios[`reboot.${PROBED}_vs_none.requests_per_device`] ?? null);
  targets[`reboot.${PROBED}_vs_none.p99_to_online`] = target('<=', 0.1, ratios[`reboot.${PROBED}_vs_none.p99_to_online`] ?? null);
  add('simulation_wall_time', wallS, 's');

  const entries = Object.entries(targets);
  out.push(`targets (${entries.filter(([, t]) => t.met).length} of ${entries.length} met):`);
  out.push(
    table(
      ['target', 'want', 'measured', 'met'],
      entries.map(([name, t]) => [name, t.want, t.value === null ? '-' : String(t.value), t.met ? 'yes' : 'NO']),
    ),
  );
  out.push('');
  out.push(`simulation wall time: ${wallS.toFixed(1)} s for ${outages.length * STRATEGIES.length + reboots.length} runs of ${devices} devices`);
  console.log(out.join('\n'));

  if (args.json) {
    const report: BenchReport = {
      benchmark: 'fleet',
      machine: machine(),
      config: {
        devices,
        seed,
        strategies: [...STRATEGIES],
        steadyStateRps: round(steady),
        agent: {
          pollIntervalMs: settings.pollIntervalMs,
          jitter: off.enableJitter ? off.jitter : 'none',
          minBackoffSeconds: off.minBackoffSeconds,
          maxBackoffSeconds: off.maxBackoffSeconds,
          backoffResetAfterSeconds: off.backoffResetAfterSeconds,
          offlineAfterFailures: off.offlineAfterFailures,
          probeInitialMs: settings.probeInitialMs,
          probeMaxIntervalSeconds: off.probeMaxIntervalSeconds,
          wakeStaggerMaxMs: settings.staggerMaxMs,
        },
        outage: { outagesS: [...OUTAGES_S], startS: outageStartS, capacityRps: outageCapacity, capacityVsSteady: OUTAGE_CAPACITY_HEADROOM },
        reboot: { capacityRps: reboot.capacityRps, capacityFractionOfFleet: REBOOT_CAPACITY_FRACTION },
        model: 'discrete-event; requests and probes take no time; 503s carry no Retry-After; one poll loop per device',
      },
      results,
      ratios,
      targets,
    };
    console.log(jsonLine(report));
  }
}

function row(label: string, runs: readonly RunResult[], value: (r: RunResult) => string): string[] {
  return [label, ...runs.map(value)];
}

main();
