import type { Database } from 'better-sqlite3';
import { readJsonCopy, writeFileAtomic } from '../util/atomic-file.js';
import type { Clock } from '../util/clock.js';
import { errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';

/**
 * A copy of the outbox's counters (`outbox_counters`: delivered, drops by reason, expired, parked...)
 * outside the database: `<dataDir>/outbox-counters.json`, 0600, replaced atomically.
 *
 * The counters are the outbox's account of every message it did not deliver. They live in the database
 * with the messages, written in the same transaction as the change they count; but a corrupt database
 * can lose the page that holds them, and then every drop counted before (the `corrupt` losses of earlier
 * salvages included) would vanish from `GET /v2/queue` and the metrics, and a device that lost nothing
 * unaccounted would look as if it had. After a salvage that lost rows of the counters table (or could not
 * tell), each counter is taken back from this copy where the copy holds more (counters only grow).
 *
 * The copy follows the database every `intervalMs` (and at start and stop), so it can lag by that much:
 * what it restores is a floor. It is rewritten from the database at every start, so after an operator
 * deletes the database the copy follows the new one and never brings old counts into it.
 */

/** The copy's name in the data dir. */
export const COUNTER_MIRROR_FILE = 'outbox-counters.json';

/** How often the copy follows the database, when a counter changed. */
export const COUNTER_MIRROR_INTERVAL_MS = 10_000;

export interface CounterRow {
  channel: string;
  counter: string;
  value: number;
}

/** The copy's rows, or why there is none usable (missing, not JSON, not the shape written). */
export function readCounterMirror(path: string): { ok: true; rows: CounterRow[] } | { ok: false; why: string } {
  const read = readJsonCopy(path);
  if (!read.ok) return read;
  const v = read.value;
  const o = v as { format?: unknown; counters?: unknown };
  // Stryker disable next-line ConditionalExpression: equivalent where it survives: a JSON primitive has no format 1 either
  if (typeof v !== 'object' || v === null || o.format !== 1 || !Array.isArray(o.counters)) {
    return { ok: false, why: 'the copy does not have the expected fields (format 1, counters: [[channel, counter, value]...])' };
  }
  const rows: CounterRow[] = [];
  for (const r of o.counters as unknown[]) {
    // A row of another shape is skipped, not trusted: a counter is restored only from what this module wrote.
    if (!Array.isArray(r) || r.length !== 3) continue;
    const [channel, counter, value] = r as unknown[];
    if (typeof channel === 'string' && typeof counter === 'string' && Number.isSafeInteger(value) && (value as number) >= 0) {
      rows.push({ channel, counter, value: value as number });
    }
  }
  return { ok: true, rows };
}

/**
 * After a salvage: raises each counter of the fresh database to the copy's value where the copy holds
 * more (the ledger's digest, not a count, is taken where the copy's `delivered` is the database's). Returns how many counters were raised. Safe to run twice (a salvage redone after a crash).
 */
export function restoreCounters(db: Database, path: string, logger: Logger): number {
  const copy = readCounterMirror(path);
  if (!copy.ok) {
    logger.warn({ file: path, why: copy.why }, `outbox: the counters could not be taken back from ${path} (${copy.why}); drops counted before the damage may be missing`);
    return 0;
  }
  const current = new Map<string, number>();
  for (const r of db.prepare('SELECT channel, counter, value FROM outbox_counters').all() as CounterRow[]) current.set(key(r), r.value);
  const raise = db.prepare(
    'INSERT INTO outbox_counters (channel, counter, value) VALUES (?, ?, ?) ON CONFLICT (channel, counter) DO UPDATE SET value = max(value, excluded.value)',
  );
  const setDigest = db.prepare(
    "INSERT INTO outbox_counters (channel, counter, value) VALUES (?, 'digest', ?) ON CONFLICT (channel, counter) DO UPDATE SET value = excluded.value",
  );
  let raised = 0;
  db.transaction(() => {
    for (const r of copy.rows) {
      // The digest is a sum modulo 2^52, not a count: it follows `delivered` below.
      if (r.counter === 'digest' || (current.get(key(r)) ?? 0) >= r.value) continue;
      raise.run(r.channel, r.counter, r.value);
      current.set(key(r), r.value);
      raised++;
    }
    // The copy's digest sums the ids of the copy's delivered count: it is right wherever that count is the database's now.
    const delivered = new Map(copy.rows.filter((r) => r.counter === 'delivered').map((r) => [r.channel, r.value]));
    for (const r of copy.rows) {
      if (r.counter !== 'digest' || delivered.get(r.channel) !== current.get(key({ channel: r.channel, counter: 'delivered' }))) continue;
      setDigest.run(r.channel, r.value);
    }
  })();
  if (raised > 0) logger.warn({ file: path, raised }, `outbox: ${raised} counters lost with the damaged database were taken back from ${path}`);
  return raised;
}

/** Keeps the copy in step with the database's counters. */
export class CounterMirror {
  private readonly select;
  private written: string | undefined;
  private failureLogged = false;

  constructor(
    private readonly o: { db: Database; path: string; clock: Clock; logger: Logger; intervalMs?: number },
  ) {
    this.select = o.db.prepare('SELECT channel, counter, value FROM outbox_counters ORDER BY channel, counter');
  }

  /** Writes the copy if a counter changed since the last write; returns whether it wrote. Never throws. */
  sync(): boolean {
    let text: string;
    try {
      const rows = this.select.all() as CounterRow[];
      text = JSON.stringify({ format: 1, counters: rows.map((r) => [r.channel, r.counter, r.value]) });
    } catch (err) {
      // A closed or failing database: the copy keeps what it had, which is still a floor.
      this.warnOnce(`could not read the outbox counters: ${errorMessage(err)}`);
      return false;
    }
    if (text === this.written) return false;
    try {
      writeFileAtomic(this.o.path, text);
    } catch (err) {
      this.warnOnce(`could not write the copy of the outbox counters to ${this.o.path}: ${errorMessage(err)}`);
      return false;
    }
    this.written = text;
    this.failureLogged = false;
    return true;
  }

  /** Follows the database until `signal` aborts, with a last write then. */
  async run(signal: AbortSignal): Promise<void> {
    this.sync();
    try {
      while (!signal.aborted) {
        await this.o.clock.sleep(this.o.intervalMs ?? COUNTER_MIRROR_INTERVAL_MS, signal);
        this.sync();
      }
      // Stryker disable next-line BlockStatement,ConditionalExpression: equivalent: the clock's sleep rejects only on abort
    } catch (err) {
      if (!signal.aborted) throw err;
    }
    // Stopping: what changed in the last interval, unless the database is already closed.
    if (this.o.db.open) this.sync();
  }

  private warnOnce(message: string): void {
    // A full disk fails every write: say so once until a write succeeds again.
    if (this.failureLogged) return;
    this.failureLogged = true;
    this.o.logger.warn({ file: this.o.path }, message);
  }
}

function key(r: { channel: string; counter: string }): string {
  return `${r.channel}\u0000${r.counter}`;
}
