import { copyFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deadline } from './drain.js';
import { benchFlusher, benchOutbox, item, openStore, type Arrivals } from './freshness-parts.js';
import { RemoteReceiver } from './freshness-receiver.js';
import { benchArgs, cell, jsonLine, machine, median, ratio, round, table, target, type BenchReport } from './report.js';

/**
 * npm run bench:drain [-- --items N --streams S --rounds R --json]
 *
 * Issue 14, part 2: N items over S telemetry streams are queued while the cloud is away, then the
 * cloud returns. Measured at the receiver, from the moment it answers again: (a) until it holds the
 * newest item of every stream, (b) until it holds every item; first-in first-out (telemetry's
 * `freshFirst` off) against freshness first (the default), in the same run.
 *
 * The backlog is queued once, through the outbox, into a template database that is copied for
 * each drain. A drain: the real Outbox, Flusher, HttpSink and CloudHttpClient with the agent's
 * defaults (but a 50 ms backoff), against a minimal HTTP receiver in a child process (freshness-parts.ts,
 * freshness-receiver.ts) that answers 503 until the return, while the flusher retries. Rounds alternate which mode goes
 * first; medians and ranges, and the backfill ratio paired per round.
 */

const USAGE = 'usage: node dist/bench/freshness.js [--items N] [--streams S] [--rounds R] [--json]';

type Mode = 'fifo' | 'fresh';

async function fill(path: string, items: number, streams: number): Promise<number> {
  const store = openStore(path, 'normal');
  const outbox = benchOutbox(store, true);
  const t0 = performance.now();
  try {
    for (let start = 0; start < items; start += 1000) {
      const k = Math.min(1000, items - start);
      await outbox.enqueueMany(Array.from({ length: k }, (_, j) => item(start + j, streams)));
    }
    return performance.now() - t0;
  } finally {
    await outbox.close();
    store.close();
  }
}

async function drain(template: string, path: string, mode: Mode, receiver: RemoteReceiver, url: string, items: number, streams: number): Promise<Arrivals> {
  copyFileSync(template, path);
  const store = openStore(path, 'full');
  const flushers: { kick(): void }[] = [];
  const outbox = benchOutbox(store, mode === 'fresh', () => flushers.forEach((f) => f.kick()));
  const { flusher, http } = benchFlusher(outbox, url);
  flushers.push(flusher);
  const stop = new AbortController();
  const { arrived } = await receiver.expect(items, streams);
  const running = flusher.run(stop.signal);
  try {
    // Away: the first batches are refused and the flusher retries every 50 ms. Then the cloud returns.
    while (flusher.stats().lastError === null) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 200));
    receiver.comeBack();
    const got = await deadline(arrived, 300_000, `the ${mode} drain`);
    while (outbox.stats().depth > 0) await new Promise((r) => setTimeout(r, 5));
    return got;
  } finally {
    stop.abort();
    await running;
    await http.close();
    await outbox.close();
    store.close();
    rmSync(path, { force: true });
    rmSync(`${path}-wal`, { force: true });
    rmSync(`${path}-shm`, { force: true });
  }
}

const rounded = (x: number | null): number | null => (x === null ? null : round(x));
const fmt = (xs: number[], digits = 0): string => `${cell(median(xs), digits)} (${cell(Math.min(...xs), digits)}-${cell(Math.max(...xs), digits)})`;

async function main(): Promise<void> {
  const a = benchArgs(process.argv.slice(2), USAGE, {
    items: { default: 1_000_000, min: 1_000 },
    streams: { default: 100, min: 1 },
    rounds: { default: 5, min: 1 },
  });
  const log = (line: string): void => void (a.json ? process.stderr : process.stdout).write(`${line}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'iotistic-bench-drain-'));
  const receiver = new RemoteReceiver();
  try {
    const template = join(dir, 'template.db');
    log(`queueing ${a.items.toLocaleString('en-US')} items over ${a.streams} streams in ${dir} ...`);
    const fillMs = await fill(template, a.items, a.streams);
    log(`queued in ${(fillMs / 1000).toFixed(1)} s; database ${(statSync(template).size / 2 ** 20).toFixed(0)} MiB`);
    const url = await receiver.start();
    const runs: Record<Mode, Arrivals[]> = { fifo: [], fresh: [] };
    for (let r = 0; r < a.rounds; r++) {
      const order: Mode[] = r % 2 === 0 ? ['fifo', 'fresh'] : ['fresh', 'fifo'];
      for (const mode of order) {
        const got = await drain(template, join(dir, `${mode}-${r}.db`), mode, receiver, url, a.items, a.streams);
        runs[mode].push(got);
        log(`round ${r + 1} ${mode}: newest of every stream ${cell(got.freshMs)} ms, everything ${cell(got.allMs)} ms, ${cell(got.backfill)} marked backfill, ${got.duplicates} duplicates`);
      }
    }
    report(a, runs, fillMs, log);
  } finally {
    await receiver.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(a: { items: number; streams: number; rounds: number; json: boolean }, runs: Record<Mode, Arrivals[]>, fillMs: number, log: (line: string) => void): void {
  const col = (mode: Mode, k: keyof Arrivals): number[] => runs[mode].map((x) => x[k]);
  // The backfill ratio per round (paired), then its median: load on the machine hits both sides alike.
  const perRound = runs.fresh.map((f, i) => (f.allMs / (runs.fifo[i] as Arrivals).allMs));
  const freshest = median(col('fresh', 'freshMs'));
  const backfillRatio = median(perRound);
  const rows = [
    ['fresh-first: newest of every stream held', fmt(col('fresh', 'freshMs')), 'ms', `median (range) of ${a.rounds}`],
    ['fresh-first: everything held', fmt(col('fresh', 'allMs')), 'ms', `${cell(median(col('fresh', 'backfill')))} marked backfill (median)`],
    ['FIFO: newest of every stream held', fmt(col('fifo', 'freshMs')), 'ms', 'the newest items are the last queued'],
    ['FIFO: everything held', fmt(col('fifo', 'allMs')), 'ms', 'baseline for the backfill'],
    ['backfill time, fresh-first / FIFO', fmt(perRound, 3), '', 'per round, paired'],
  ];
  log('');
  log(table(['case', 'value', 'unit', 'notes'], rows));
  const targets = {
    freshest_ms: target('<=', 5000, freshest),
    backfill_vs_fifo: target('<=', 1.1, backfillRatio),
  };
  log('');
  log(table(['target', 'want', 'value', 'met'], Object.entries(targets).map(([k, t]) => [k, t.want, String(t.value), t.met ? 'yes' : 'NO'])));
  if (!a.json) return;
  const out: BenchReport = {
    benchmark: 'drain',
    machine: machine(),
    config: { items: a.items, streams: a.streams, rounds: a.rounds, fillMs: Math.round(fillMs) },
    results: [
      { name: 'fresh_newest_every_stream', value: rounded(freshest), unit: 'ms' },
      { name: 'fresh_all_delivered', value: rounded(median(col('fresh', 'allMs'))), unit: 'ms' },
      { name: 'fifo_newest_every_stream', value: rounded(median(col('fifo', 'freshMs'))), unit: 'ms' },
      { name: 'fifo_all_delivered', value: rounded(median(col('fifo', 'allMs'))), unit: 'ms' },
      { name: 'fresh_marked_backfill', value: median(col('fresh', 'backfill')), unit: 'items' },
    ],
    ratios: { backfill_vs_fifo: rounded(backfillRatio), freshest_vs_fifo: ratio(freshest, median(col('fifo', 'freshMs'))) },
    targets,
  };
  console.log(jsonLine(out));
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
