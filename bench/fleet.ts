import {
  agentDefaults,
  DEFAULT_STRATEGY,
  outageScenario,
  OUTAGE_CAPACITY_HEADROOM,
  REBOOT_CAPACITY_FRACTION,
  rebootScenario,
  simulate,
  steadyStateRps,
  STRATEGIES,
  type Channel,
  type ChannelResult,
  type FleetSettings,
  type OutageChannels,
  type RunResult,
  type Scenario,
} from './fleet-sim.js';
import { benchArgs, cell, jsonLine, machine, ratio, round, table, target, type BenchReport, type BenchResult, type BenchTarget } from './report.js';

/**
 * npm run bench:fleet [-- --devices N --seed S --json]
 *
 * A fleet of simulated devices runs the agent's poll loop and MQTT session with each backoff strategy
 * side by side: the cloud's endpoints go away for 60 s and 600 s (the refused cloud also 3600 s) in
 * each outage kind (refused, black-holed, hung behind a proxy, 503 behind a balancer, and the broker or
 * the API alone), and
 * every device starts at once against a cloud that serves a twentieth of the fleet per second. Every
 * scenario compares the default with every strategy. See bench/fleet-sim.ts and fleet-network.ts.
 */

/** The p99 time back online every scenario must meet, and the bar a strategy must meet to be a baseline. */
const P99_LIMIT_S = 40;
/**
 * The peak request rate at the API after a return, over the steady rate; where no strategy at the p99
 * limit (the default among them) reaches it in the same run, the lowest peak among the others (within
 * the noise) is the limit instead (`peakLimit`).
 */
const PEAK_LIMIT = 3.5;
/**
 * A strategy beats the default on a measure only by more than this fraction: the noise of the model
 * between runs of the same behaviour with other random draws. A peak is the fullest 1-s bucket, and
 * moves by several percent (in the 503 outages the API of `full` and `default+probe` behaves alike, the
 * probe only drawing from the same random source, and their peaks differ by up to ~10% at 2,000 devices).
 */
const NOISE = { requests: 0.02, peak: 0.1 } as const;

interface NamedScenario {
  key: string;
  title: string;
  scenario: Scenario;
}

function scenarios(devices: number, settings: FleetSettings): NamedScenario[] {
  const out: NamedScenario[] = [{ key: 'reboot', title: 'fleet reboot: every device starts at t=0 (first poll at once)', scenario: rebootScenario(devices) }];
  const outage = (key: string, title: string, outageS: number, channels: OutageChannels): void => {
    out.push({ key: `${key}_${outageS}s`, title: `${title}, ${outageS} s`, scenario: outageScenario(outageS * 1000, devices, settings, channels) });
  };
  for (const s of [60, 600, 3600]) outage('refused', 'cloud refused (API and broker: connection refused)', s, { api: 'refused', mqtt: 'refused' });
  for (const s of [60, 600]) outage('blackhole', 'cloud black-holed (API and broker: SYNs dropped)', s, { api: 'blackhole', mqtt: 'blackhole' });
  for (const s of [60, 600]) outage('hang', 'cloud hung behind a proxy (API and broker: accepted, never answered)', s, { api: 'hang', mqtt: 'hang' });
  for (const s of [60, 600]) outage('503', 'backend down behind a balancer (API: 503 at once; broker: closed before CONNACK)', s, { api: '503', mqtt: '503' });
  for (const s of [60, 600]) outage('broker_only', 'broker refused, API up', s, { api: null, mqtt: 'refused' });
  for (const s of [60, 600]) outage('api_only', 'API refused, broker up', s, { api: 'refused', mqtt: null });
  return out;
}

const USAGE = 'usage: node dist/bench/fleet.js [--devices N (default 10000)] [--seed S (default 1)] [--json]';

const seconds = (ms: number | undefined): number | null => (ms === undefined ? null : ms / 1000);
const p99s = (c: ChannelResult | null | undefined): number | null => seconds(c?.timeToOnlineMs?.p99) ?? null;

function channelOf(r: RunResult, channel: Channel): ChannelResult | null {
  return channel === 'api' ? r.api : r.mqtt;
}

/** The channels a scenario measures: those whose endpoint went away (the reboot: the API). */
function measured(s: Scenario): Channel[] {
  if (s.kind === 'reboot') return ['api'];
  return (['api', 'mqtt'] as const).filter((c) => s.channels[c] !== null);
}

/** The peak a scenario is judged on: after the return; for the reboot, after its first second (every device's first poll). */
function peakOf(s: Scenario, c: ChannelResult): number {
  return s.kind === 'reboot' ? c.peakRpsAfterFirstSecond : c.peakRps;
}

function main(): void {
  let args: { devices: number; seed: number; json: boolean };
  try {
    args = benchArgs(process.argv.slice(2), USAGE, { devices: { default: 10_000, min: 1 }, seed: { default: 1, min: 0, max: 0xffffffff } });
  } catch (err) {
    console.error(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
    process.exit(2);
  }
  const { devices, seed } = args;
  const settings = agentDefaults();
  const started = performance.now();
  const runs = scenarios(devices, settings).map((named) => ({
    ...named,
    runs: STRATEGIES.map((strategy) => {
      process.stderr.write(`${named.key}: ${strategy}...\n`);
      return simulate({ devices, seed, strategy, scenario: named.scenario, settings });
    }),
  }));
  const wallS = (performance.now() - started) / 1000;

  const out: string[] = [header(devices, seed, settings)];
  for (const r of runs) out.push(scenarioTable(r.title, r.scenario, r.runs), '');

  const report = measures(runs);
  report.results.push({ name: 'simulation_wall_time', value: round(wallS), unit: 's' });
  const entries = Object.entries(report.targets);
  out.push(`targets (${entries.filter(([, t]) => t.met).length} of ${entries.length} met):`);
  out.push(
    table(
      ['target', 'want', 'measured', 'met'],
      entries.map(([name, t]) => [name, t.want, t.value === null ? '-' : String(t.value), t.met ? 'yes' : 'NO']),
    ),
  );
  out.push('', `simulation wall time: ${wallS.toFixed(1)} s for ${runs.length * STRATEGIES.length} runs of ${devices} devices`);
  console.log(out.join('\n'));

  if (args.json) {
    const off = settings.offline;
    const full: BenchReport = {
      benchmark: 'fleet',
      machine: machine(),
      config: {
        devices,
        seed,
        strategies: [...STRATEGIES],
        steadyStateRps: round(steadyStateRps(devices, settings)),
        agent: {
          pollIntervalMs: settings.pollIntervalMs,
          jitter: off.enableJitter ? off.jitter : 'none',
          minBackoffSeconds: off.minBackoffSeconds,
          maxBackoffSeconds: off.maxBackoffSeconds,
          backoffResetAfterSeconds: off.backoffResetAfterSeconds,
          offlineAfterFailures: off.offlineAfterFailures,
          offlineRetryIntervalSeconds: off.offlineRetryIntervalSeconds,
          probeInitialMs: settings.probeInitialMs,
          probeMaxIntervalSeconds: off.probeMaxIntervalSeconds,
          probeConnectTimeoutMs: settings.probeConnectTimeoutMs,
          requestTimeoutMs: settings.requestTimeoutMs,
          connectTimeoutMs: settings.connectTimeoutMs,
          mqttConnectTimeoutMs: settings.mqttConnectTimeoutMs,
          keepAliveMs: settings.keepAliveMs,
          wakeSpreadMs: off.wakeSpreadSeconds * 1000,
        },
        scenarios: runs.map((r) => ({ key: r.key, ...r.scenario })),
        outageCapacityVsSteady: OUTAGE_CAPACITY_HEADROOM,
        rebootCapacityFractionOfFleet: REBOOT_CAPACITY_FRACTION,
        model:
          'discrete-event; a reached endpoint answers at once; black-holed attempts last until a SYN resend after the return or the timeout; hung attempts until the timeout or the return (reset); 503s carry no Retry-After; the broker has no capacity limit; one poll loop and one MQTT session per device',
      },
      results: report.results,
      ratios: report.ratios,
      targets: report.targets,
    };
    console.log(jsonLine(full));
  }
}

function header(devices: number, seed: number, settings: FleetSettings): string {
  const off = settings.offline;
  return [
    `fleet benchmark: ${devices} devices, seed ${seed}, ${machine().cpus} cpus, node ${process.version}`,
    `agent defaults: pollIntervalMs ${settings.pollIntervalMs} (+0-10% jitter), backoff ${off.enableJitter ? off.jitter : 'none'} ${off.minBackoffSeconds}-${off.maxBackoffSeconds} s, ` +
      `reset after ${off.backoffResetAfterSeconds} s stable, offline after ${off.offlineAfterFailures} failures, offline floor ${off.offlineRetryIntervalSeconds} s (API), ` +
      `probe ${settings.probeInitialMs / 1000}-${off.probeMaxIntervalSeconds} s (spread jitter from the start of one handshake to the next, ${settings.probeConnectTimeoutMs / 1000} s connect timeout), wake stagger 0 to what is left of ${off.wakeSpreadSeconds} s since the way was last seen closed (at least 1 s), ` +
      `request timeout ${settings.requestTimeoutMs / 1000} s (connect ${settings.connectTimeoutMs / 1000} s), MQTT connect timeout ${settings.mqttConnectTimeoutMs / 1000} s, keep-alive ${settings.keepAliveMs / 1000} s`,
    `steady state: ${cell(steadyStateRps(devices, settings), 1)} req/s (devices / poll interval); peaks of both channels are given over it`,
    'strategies: none/seed/equal/full/decorrelated retry with that backoff and no probe; default+probe is the agent as configured, with its probes, offline floor and wake stagger.',
    '',
  ].join('\n');
}

function scenarioTable(title: string, s: Scenario, runs: readonly RunResult[]): string {
  const reboot = s.kind === 'reboot';
  const capacity = `API capacity ${s.capacityRps} req/s, beyond it 503`;
  const lines = [reboot ? `${title}; ${capacity}; online = first successful poll` : `${title} from t=${s.outageStartMs / 1000} s; ${capacity}; measured over the devices the outage touched`];
  const rows: string[][] = [];
  for (const ch of measured(s)) {
    const v = (f: (c: ChannelResult, r: RunResult) => string): string[] => runs.map((r) => {
      const c = channelOf(r, ch);
      return c ? f(c, r) : '-';
    });
    const what = ch === 'api' ? 'requests' : 'connects';
    rows.push([`${ch}: devices measured`, ...v((c) => cell(c.affected))]);
    if (!reboot) rows.push([`${ch}: ${what}/device during outage`, ...v((c, r) => cell(c.requestsDuringOutage / r.devices, 2))]);
    rows.push([`${ch}: ${what}/device until online`, ...v((c) => cell(c.requestsToOnlinePerDevice, 2))]);
    rows.push([`${ch}: peak ${what}/s${reboot ? ' after the first second' : ' after return'}`, ...v((c) => cell(peakOf(s, c)))]);
    rows.push(['  ÷ steady state', ...v((c, r) => cell(peakOf(s, c) / r.steadyRps, 2))]);
    rows.push([`${ch}: time to online p50 (s)`, ...v((c) => cell(seconds(c.timeToOnlineMs?.p50), 1))]);
    rows.push([`${ch}: time to online p99 (s)`, ...v((c) => cell(seconds(c.timeToOnlineMs?.p99), 1))]);
    rows.push([`${ch}: time to online max (s)`, ...v((c) => cell(seconds(c.timeToOnlineMs?.max), 1))]);
    rows.push([`${ch}: not online by end of run`, ...v((c) => cell(c.affected - c.recovered))]);
    if (ch === 'api') rows.push([`${ch}: 503s for capacity${reboot ? '' : ' after return'}`, ...v((c) => cell(c.rejected))]);
    rows.push([`${ch}: probe wake-ups`, ...v((c) => cell(c.wakes))]);
  }
  rows.push(['simulation wall time (ms)', ...runs.map((r) => cell(r.wallMs))]);
  lines.push(table(['', ...STRATEGIES], rows));
  lines.push(bestLine(s, runs));
  return lines.join('\n');
}

/** The best other strategy on a measure among those that meet the p99 limit, and the best of all. */
function best(s: Scenario, runs: readonly RunResult[], ch: Channel, measure: 'requests' | 'peak'): { fast: RunResult | null; any: RunResult | null } {
  const value = (r: RunResult): number => {
    const c = channelOf(r, ch);
    if (!c) return Infinity;
    return measure === 'requests' ? c.requestsToOnlinePerDevice : peakOf(s, c);
  };
  const others = runs.filter((r) => r.strategy !== DEFAULT_STRATEGY);
  const pick = (rs: RunResult[]): RunResult | null => rs.reduce<RunResult | null>((b, r) => (b === null || value(r) < value(b) ? r : b), null);
  return { fast: pick(others.filter((r) => (p99s(channelOf(r, ch)) ?? Infinity) <= P99_LIMIT_S)), any: pick(others) };
}

/**
 * The API's peak limit over the steady rate: PEAK_LIMIT, where any strategy at the p99 limit (the
 * default among them) meets it in this run; where none does, the lowest peak among the others within
 * the noise. After a short black hole the connects in flight at the return come through at the
 * kernel's SYN resends within seconds whatever the backoff (docs/connectivity.md, "The black hole's
 * peak"): the default must then do as well as the best strategy that can, not better than all.
 */
function peakLimit(s: Scenario, runs: readonly RunResult[]): number {
  const peakOver = (r: RunResult): number => {
    const c = channelOf(r, 'api');
    return c && (p99s(c) ?? Infinity) <= P99_LIMIT_S ? peakOf(s, c) / r.steadyRps : Infinity;
  };
  if (runs.some((r) => peakOver(r) <= PEAK_LIMIT)) return PEAK_LIMIT;
  const b = best(s, runs, 'api', 'peak').fast;
  if (!b) return PEAK_LIMIT;
  // Two decimals, rounded up: the limit is printed in the `want` of the target.
  return Math.ceil((peakOver(b) / (1 - NOISE.peak)) * 100) / 100;
}

function bestLine(s: Scenario, runs: readonly RunResult[]): string {
  const parts: string[] = [];
  for (const ch of measured(s)) {
    for (const m of ['requests', 'peak'] as const) {
      const b = best(s, runs, ch, m);
      parts.push(`${ch} ${m}: ${b.fast ? b.fast.strategy : 'none'} (of all: ${b.any?.strategy ?? '-'})`);
    }
  }
  return `best other strategy at p99 <= ${P99_LIMIT_S} s — ${parts.join('; ')}`;
}

function measures(all: readonly { key: string; scenario: Scenario; runs: RunResult[] }[]): Pick<BenchReport, 'results' | 'ratios' | 'targets'> {
  const results: BenchResult[] = [];
  const ratios: Record<string, number | null> = {};
  const targets: Record<string, BenchTarget> = {};
  const add = (name: string, value: number | null, unit: string): void => {
    results.push({ name, value: value === null || !Number.isFinite(value) ? null : round(value), unit });
  };
  for (const { key, scenario, runs } of all) {
    for (const ch of measured(scenario)) {
      for (const r of runs) {
        const c = channelOf(r, ch);
        if (!c) continue;
        const k = `${key}.${ch}.${r.strategy}`;
        add(`${k}.requests_per_device_to_online`, c.requestsToOnlinePerDevice, 'requests/device');
        add(`${k}.peak_rps`, peakOf(scenario, c), 'req/s');
        add(`${k}.peak_vs_steady`, peakOf(scenario, c) / r.steadyRps, 'x');
        add(`${k}.p50_to_online`, seconds(c.timeToOnlineMs?.p50), 's');
        add(`${k}.p99_to_online`, p99s(c), 's');
        add(`${k}.max_to_online`, seconds(c.timeToOnlineMs?.max), 's');
      }
      const def = runs.find((r) => r.strategy === DEFAULT_STRATEGY);
      const dc = def ? channelOf(def, ch) : null;
      if (!def || !dc) continue;
      const k = `${key}.${ch}.${DEFAULT_STRATEGY}`;
      targets[`${k}.p99_to_online_s`] = target('<=', P99_LIMIT_S, p99s(dc));
      if (ch === 'api') targets[`${k}.peak_vs_steady`] = target('<=', peakLimit(scenario, runs), peakOf(scenario, dc) / def.steadyRps);
      for (const m of ['requests', 'peak'] as const) {
        const v = (r: RunResult): number => {
          const c = channelOf(r, ch) as ChannelResult;
          return m === 'requests' ? c.requestsToOnlinePerDevice : peakOf(scenario, c);
        };
        const b = best(scenario, runs, ch, m);
        ratios[`${key}.${ch}.${m}.default_vs_best_at_p99_limit`] = b.fast ? ratio(v(def), v(b.fast)) : null;
        ratios[`${key}.${ch}.${m}.default_vs_best_of_all`] = b.any ? ratio(v(def), v(b.any)) : null;
        // Every strategy that makes fewer requests (or has a lower peak) by more than the noise, at a p99 within the limit.
        const better = runs.filter((r) => r !== def && (p99s(channelOf(r, ch)) ?? Infinity) <= P99_LIMIT_S && v(r) < v(def) * (1 - NOISE[m]));
        targets[`${k}.strategies_better_on_${m === 'requests' ? 'requests_per_device' : 'peak'}`] = target('<=', 0, better.length);
      }
    }
  }
  return { results, ratios, targets };
}

main();
