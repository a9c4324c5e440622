import BetterSqlite3 from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Outbox } from '../../src/outbox/outbox.js';
import { Store } from '../helpers/store.js';
import { systemClock } from '../../src/util/clock.js';
import { IdGenerator } from '../../src/util/ids.js';
import { seededRandom } from '../../src/util/random.js';
import { ROOT } from '../helpers/agent-process.js';
import { silentLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/**
 * Zero loss under SIGKILL: a child process enqueues as fast as it can (32 producers, a flusher
 * acking as it goes) and writes each id to a claims file once its enqueue resolved (and each id it is
 * about to ack); it is killed with SIGKILL at a
 * random moment, over and over against the same database file. After every round, each id the
 * child was told was durable must still be queued, or have been (possibly) acked by the child.
 */

const HELPER = join(ROOT, 'test/helpers/outbox-producer.ts');
const ROUNDS = 24;
const dirs = tempDirs();
afterAll(() => dirs.cleanup());

interface Round {
  durable: string[];
  acked: string[];
  signal: NodeJS.Signals | null;
  code: number | null;
  stderr: string;
}

/** Runs one child; kills it `killAfterMs` after it is ready (or after spawn when `early`). */
function runRound(dbPath: string, seed: number, killAfterMs: number, early: boolean): Promise<Round> {
  const claimsPath = `${dbPath}.claims-${seed}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', HELPER, dbPath, '32', String(seed), claimsPath], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const durable: string[] = [];
    const acked: string[] = [];
    let partial = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      timer ??= setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    };
    if (early) arm();
    child.stdout.on('data', (chunk: Buffer) => {
      partial += chunk.toString('utf8');
      if (partial.includes('ready\n')) arm();
    });
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    // A child that dies on its own (an exception) fails the round below; a hang is caught by the test timeout.
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(guard);
      const lines = existsSync(claimsPath) ? readFileSync(claimsPath, 'utf8').split('\n') : [];
      lines.pop(); // a line cut by the kill is not a claim
      for (const line of lines) {
        if (line.startsWith('D ')) durable.push(line.slice(2));
        else if (line.startsWith('A ')) acked.push(line.slice(2));
      }
      rmSync(claimsPath, { force: true });
      resolve({ durable, acked, signal, code, stderr });
    });
  });
}

describe('outbox crash safety', () => {
  it(`loses no acknowledged enqueue across ${ROUNDS} SIGKILLs at random moments`, { timeout: 120_000 }, async () => {
    const dbPath = join(dirs.make('iotistic-crash-'), 'agent.db');
    const random = seededRandom(Number(process.env.OUTBOX_CRASH_SEED ?? 20_260_101));
    const durable = new Set<string>();
    const maybeAcked = new Set<string>();
    let totalDurable = 0;
    let killedWhileProducing = 0;
    for (let round = 0; round < ROUNDS; round++) {
      // One round in six is killed early, possibly while the store opens or migrates.
      const early = round % 6 === 5;
      // The others get at least 100 ms of producing: on a loaded machine the first commit can take tens of ms.
      const killAfterMs = early ? Math.floor(random() * 400) : 100 + Math.floor(random() * 400);
      const r = await runRound(dbPath, round + 1, killAfterMs, early);
      expect(r.signal, `round ${round}: the child should die by SIGKILL, not on its own (code ${r.code}):\n${r.stderr}`).toBe('SIGKILL');
      for (const id of r.durable) durable.add(id);
      for (const id of r.acked) maybeAcked.add(id);
      totalDurable += r.durable.length;
      if (r.durable.length > 0) killedWhileProducing++;

      // Read the file as it was left: raw SQL first (no recovery beyond SQLite's own).
      const raw = new BetterSqlite3(dbPath);
      const queued = new Set((raw.prepare('SELECT id FROM outbox').pluck().all() as string[]));
      expect(raw.pragma('quick_check', { simple: true })).toBe('ok');
      const lost = [...durable].filter((id) => !queued.has(id) && !maybeAcked.has(id));
      // Where a missing id went, if anywhere: parked (with the reason), or gone.
      const parked = lost.map((id) => raw.prepare('SELECT reason FROM outbox_parked WHERE id = ?').pluck().get(id) as string | undefined);
      raw.close();
      const where = lost.slice(0, 3).map((id, i) => `${id} (${parked[i] === undefined ? 'gone' : `parked: ${parked[i]}`})`);
      expect(lost, `round ${round} (killed after ${killAfterMs} ms${early ? ', early' : ''}): ${lost.length} durable id(s) missing, e.g. ${where.join(', ')}; child stderr: ${r.stderr.slice(-300)}`).toEqual([]);
      // Forget what is settled, so the sets stay small.
      for (const id of durable) if (!queued.has(id)) durable.delete(id);

      // The outbox opens on it and agrees with the rows.
      const store = Store.open({ path: dbPath, logger: silentLogger(), clock: systemClock });
      const outbox = new Outbox({ store, clock: systemClock, ids: new IdGenerator(), logger: silentLogger(), limits: { maxCount: 10_000_000, maxBytes: 2 ** 40 } });
      expect(outbox.stats().depth).toBe(queued.size);
      expect(outbox.stats().leased).toBe(0);
      await outbox.close();
      store.close();
    }
    expect(killedWhileProducing).toBeGreaterThanOrEqual(ROUNDS / 2);
    expect(totalDurable).toBeGreaterThan(5_000);
  });
});
