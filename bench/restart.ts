import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultConfig } from '../src/config/schema.js';
import { encodePayload } from '../src/outbox/codec.js';
import { MIGRATIONS } from '../src/database-schema.js';
import { Store } from '../src/store/store.js';
import { IdGenerator } from '../src/util/ids.js';
import { createLogger } from '../src/util/logger.js';
import { benchArgs, cell, jsonLine, machine, median, ratio, table, target } from './report.js';

/**
 * Restart to ready after a kill -9, with a backlog (issue 21, fault 11). Fills a database with
 * `--messages` queued rows (direct inserts matching the outbox schema, large transactions), then
 * `--runs` times: start the built agent (`run`), time from spawn to `GET /v1/healthy` 200, produce a
 * little so the WAL is live, kill -9. Baseline: the same start on an empty database, in the same run.
 */

const USAGE = 'usage: node dist/bench/restart.js [--messages N] [--runs R] [--cold 0|1] [--json]\n  --cold 1: drop the database from the page cache before each start (as after a power cut)';
const CLI = fileURLToPath(new URL('../src/cli.js', import.meta.url));

function fill(path: string, rows: number): void {
  const store = Store.open({ path, logger: createLogger({ level: 'silent', format: 'json' }), clock: { now: Date.now }, migrations: MIGRATIONS });
  const ids = new IdGenerator();
  const insert = store.db.prepare(
    'INSERT INTO outbox (id, channel, priority, created_at, expires_at, coalesce_key, encoding, bytes, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  const chunk = 50_000;
  for (let start = 0; start < rows; start += chunk) {
    const now = Date.now();
    store.db.transaction(() => {
      for (let i = start; i < Math.min(rows, start + chunk); i++) {
        const enc = encodePayload({ stream: 'bench', payload: { i, t: now, v: Math.sin(i), tag: 'sensor-0001' } }, 1024);
        insert.run(ids.next(), 'telemetry', 20, now, null, null, enc.encoding, enc.bytes, enc.data);
      }
    })();
  }
  store.close();
}


async function healthyAt(url: string, child: ChildProcess, deadline: number): Promise<void> {
  for (;;) {
    if (child.exitCode !== null) throw new Error(`agent exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error('agent did not become healthy in time');
    try {
      const r = await fetch(`${url}/v1/healthy`);
      if (r.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Asks the kernel to drop the file's cached pages (GNU dd's documented idiom for that). */
function dropCache(file: string): void {
  try {
    execFileSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  } catch {
    // No such file (no WAL) or no GNU dd: the start is measured warm.
  }
}

/** One start: ms from spawn to /v1/healthy, then kill -9. */
async function startOnce(dataDir: string, port: number, cold: boolean): Promise<number> {
  if (cold) for (const s of ['', '-wal']) dropCache(join(dataDir, `agent.db${s}`));
  const configFile = join(dataDir, 'config.json');
  writeFileSync(configFile, JSON.stringify({ api: { port }, logging: { level: 'warn', format: 'json' }, features: { metrics: false } }));
  const t0 = performance.now();
  const child = spawn(process.execPath, [CLI, 'run', '--config', configFile, '--data-dir', dataDir], { stdio: 'ignore' });
  const exited = new Promise((r) => child.once('exit', r));
  try {
    await healthyAt(`http://127.0.0.1:${port}`, child, Date.now() + 120_000);
    return performance.now() - t0;
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}

async function main(): Promise<void> {
  const a = benchArgs(process.argv.slice(2), USAGE, { messages: { default: 1_000_000, min: 0 }, runs: { default: 3, min: 1, max: 50 }, cold: { default: 0, min: 0, max: 1 }, port: { default: 48_999, min: 1024, max: 65535 } });
  const log = a.json ? (s: string) => console.error(s) : (s: string) => console.log(s);
  const root = mkdtempSync(join(tmpdir(), 'bench-restart-'));
  try {
    const empty = join(root, 'empty');
    const full = join(root, 'full');
    const t0 = performance.now();
    fill(join(empty, 'agent.db'), 0);
    fill(join(full, 'agent.db'), a.messages);
    log(`filled ${a.messages} messages in ${Math.round(performance.now() - t0)} ms; file ${cell(statSync(join(full, 'agent.db')).size / 1_048_576, 0)} MiB`);
    const times: Record<'empty' | 'full', number[]> = { empty: [], full: [] };
    // A first start with no clean marker and a kill -9, so every timed start follows a kill -9.
    await startOnce(empty, a.port, false);
    await startOnce(full, a.port, false);
    for (let i = 0; i < a.runs; i++) {
      times.empty.push(await startOnce(empty, a.port, a.cold === 1));
      times.full.push(await startOnce(full, a.port, a.cold === 1));
      log(`run ${i + 1}: empty ${Math.round(times.empty.at(-1)!)} ms, ${a.messages} queued ${Math.round(times.full.at(-1)!)} ms`);
    }
    const range = (xs: number[]): string => `${Math.round(Math.min(...xs))}-${Math.round(Math.max(...xs))} ms`;
    const mEmpty = median(times.empty);
    const mFull = median(times.full);
    log(
      table(
        ['case', 'median ms', 'range'],
        [
          [`kill -9, restart to /v1/healthy, empty queue${a.cold ? ' (cold cache)' : ''}`, cell(mEmpty), range(times.empty)],
          [`kill -9, restart to /v1/healthy, ${cell(a.messages)} queued${a.cold ? ' (cold cache)' : ''}`, cell(mFull), range(times.full)],
        ],
      ),
    );
    if (a.json) {
      const backlogVsEmpty = ratio(mFull, mEmpty);
      console.log(
        jsonLine({
          benchmark: 'restart',
          machine: machine(),
          config: { messages: a.messages, runs: a.runs, cold: a.cold === 1, store: defaultConfig().store },
          results: [
            { name: 'restart_empty_ms', value: mEmpty, unit: 'ms' },
            { name: 'restart_backlog_ms', value: mFull, unit: 'ms' },
          ],
          ratios: { backlog_vs_empty: backlogVsEmpty },
          targets: { backlog_vs_empty: target('<=', 2, backlogVsEmpty) },
        }),
      );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
