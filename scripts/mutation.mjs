#!/usr/bin/env node
// npm run test:mutation -- [--area <name>]... [--json] [--summary-only] [--concurrency <n>] [--ignore-static]
// --ignore-static: skip mutants in module-level code (schemas, constants), which Stryker can only test by
// running every test of the area; much faster, but those mutants are reported as Ignored, not tested.
// Runs Stryker on each area in turn (all of them without --area), then prints per area what
// Stryker's JSON report says: killed, survived, no coverage, timeout, score. `--summary-only`
// reads the last reports without running Stryker.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { AREAS } from './mutation-areas.mjs';

function parseArgs(argv) {
  const areas = [];
  let json = false;
  let summaryOnly = false;
  let concurrency;
  let ignoreStatic = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') json = true;
    else if (a === '--summary-only') summaryOnly = true;
    else if (a === '--ignore-static') ignoreStatic = true;
    else if (a === '--concurrency') concurrency = argv[++i];
    else if (a === '--area') areas.push(...(argv[++i] ?? '').split(',').filter(Boolean));
    else if (a.startsWith('--area=')) areas.push(...a.slice('--area='.length).split(',').filter(Boolean));
    else throw new Error(`unknown argument "${a}"; expected --area <name>, --json, --summary-only, --concurrency <n> or --ignore-static`);
  }
  for (const a of areas) {
    if (!(a in AREAS)) throw new Error(`--area "${a}" is not an area; expected one of ${Object.keys(AREAS).join(', ')}`);
  }
  if (concurrency !== undefined && !/^[1-9]\d*$/.test(concurrency)) throw new Error(`--concurrency "${concurrency}": expected a whole number of workers (1 or 2 on this 2-core machine)`);
  // Every area by default; a part of a composite area (outbox-queue) runs once, as part of its whole.
  const partsOfWholes = new Set(Object.values(AREAS).flatMap((a) => a.parts ?? []));
  const all = Object.keys(AREAS).filter((a) => !partsOfWholes.has(a));
  return { areas: areas.length ? areas : all, json, summaryOnly, concurrency, ignoreStatic };
}

/** Counts from a mutation-testing-report-schema JSON report. Ignored mutants (equivalent, marked) are left out. */
export function summarise(report) {
  const counts = { mutants: 0, killed: 0, survived: 0, noCoverage: 0, timeout: 0, compileErrors: 0, ignored: 0 };
  for (const file of Object.values(report.files)) {
    for (const m of file.mutants) {
      counts.mutants++;
      if (m.status === 'Killed') counts.killed++;
      else if (m.status === 'Survived') counts.survived++;
      else if (m.status === 'NoCoverage') counts.noCoverage++;
      else if (m.status === 'Timeout') counts.timeout++;
      else if (m.status === 'CompileError') counts.compileErrors++;
      else if (m.status === 'Ignored') counts.ignored++;
    }
  }
  // Stryker's score: detected (killed + timeout) over valid mutants (detected + survived + no coverage).
  const detected = counts.killed + counts.timeout;
  const valid = detected + counts.survived + counts.noCoverage;
  return { ...counts, score: valid === 0 ? null : Math.round((detected / valid) * 10_000) / 100 };
}

function runArea(name, concurrency, ignoreStatic) {
  const area = AREAS[name];
  const started = Date.now();
  const r = spawnSync('npx', ['stryker', 'run', ...(concurrency ? ['--concurrency', concurrency] : []), ...(ignoreStatic ? ['--ignoreStatic'] : [])], {
    stdio: 'inherit',
    env: { ...process.env, MUTATION_AREA: name, MUTATION_TESTS: area.tests.join(',') },
  });
  return { status: r.status ?? 1, wallSeconds: Math.round((Date.now() - started) / 1000) };
}

function main() {
  const { areas, json, summaryOnly, concurrency, ignoreStatic } = parseArgs(process.argv.slice(2));
  const results = {};
  let failed = false;
  for (const name of areas) {
    // An area made of parts (the outbox) runs each part and adds up their reports.
    const parts = AREAS[name].parts ?? [name];
    let wallSeconds = 0;
    for (const part of parts) {
      if (summaryOnly) continue;
      const run = runArea(part, concurrency, ignoreStatic);
      if (run.status !== 0) failed = true;
      wallSeconds += run.wallSeconds;
    }
    const files = parts.map((part) => `reports/mutation/${part}.json`);
    const missing = files.filter((f) => !existsSync(f));
    if (missing.length > 0) {
      results[name] = { error: `no report at ${missing.join(', ')}` };
      continue;
    }
    const merged = { files: Object.assign({}, ...files.map((f) => JSON.parse(readFileSync(f, 'utf8')).files)) };
    results[name] = { ...summarise(merged), ...(parts.length > 1 ? { parts } : {}), ...(summaryOnly ? {} : { wallSeconds }) };
  }
  if (json) console.log(JSON.stringify(results, null, 2));
  else {
    for (const [name, r] of Object.entries(results)) {
      if ('error' in r) console.log(`${name}: ${r.error}`);
      else console.log(`${name}: score ${r.score}% (killed ${r.killed}, survived ${r.survived}, no coverage ${r.noCoverage}, timeout ${r.timeout}, ignored ${r.ignored})`);
    }
  }
  process.exitCode = failed ? 1 : 0;
}

try {
  main();
} catch (err) {
  console.error(`test:mutation: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 2;
}
