/** `iotistic-agent queue [parked|retry|purge]` (docs/api.md, "The CLI"): the outbox of a running agent, and its parked messages. */
import { createInterface } from 'node:readline/promises';
import type { Writable } from 'node:stream';
import { palette, type AgentApi, type Palette } from './cli-client.js';
import { bytes, duration, when } from './status-view.js';
import { AgentError, errorMessage } from './util/errors.js';

/** Exit codes: 0 done, 1 the agent did not answer, refused the key or the request, or a purge was not confirmed; 2 a wrong use of the command. */
export const QUEUE_EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export interface QueueCliOptions {
  json?: boolean;
  all?: boolean;
  yes?: boolean;
}

export interface QueueIo {
  out: Writable;
  err: Writable;
  colour: boolean;
  /** Wall time now, for ages. */
  now: number;
  /** Asks a yes/no question on the terminal; undefined when stdin is not a terminal (nobody to ask). */
  confirm: ((question: string) => Promise<boolean>) | undefined;
}

interface QueueChannel {
  depth: number;
  bytes: number;
  oldestAgeMs: number;
  delivered: number;
  dropped: number;
  expired: number;
  parked: number;
}

interface QueueAnswer {
  depth: number;
  bytes: number;
  oldestAgeMs: number;
  channels: Record<string, QueueChannel>;
  parkedMessages?: ParkedShown[];
}

interface ParkedShown {
  id: string;
  channel: string;
  parkedAt: number;
  reason: string;
}

export type QueueAction = 'list' | 'parked' | 'retry' | 'purge';

/** Runs one action; resolves with the exit code. Messages for people go to `io.err`, data to `io.out`. */
export async function runQueue(api: AgentApi, action: QueueAction, ids: string[], o: QueueCliOptions, io: QueueIo): Promise<number> {
  try {
    if (action === 'list' || action === 'parked') {
      const q = (await api.get('/v2/queue')) as QueueAnswer;
      const text = action === 'list' ? formatQueue(q, palette(io.colour)) : formatParked(q, io.now);
      io.out.write(o.json ? `${JSON.stringify(action === 'list' ? q : { total: parkedTotal(q), parked: q.parkedMessages ?? [] })}\n` : text);
      return QUEUE_EXIT.ok;
    }
    const usage = selectionProblem(action, ids, o.all === true);
    if (usage) {
      io.err.write(`iotistic-agent: ${usage}\n`);
      return QUEUE_EXIT.usage;
    }
    if (action === 'purge' && !o.yes) {
      const go = await confirmPurge(api, ids, io);
      if (go !== true) {
        io.err.write(`iotistic-agent: ${go === undefined ? 'refusing to delete parked messages without --yes: stdin is not a terminal to ask on' : 'nothing deleted'}\n`);
        return go === undefined ? QUEUE_EXIT.usage : QUEUE_EXIT.failed;
      }
    }
    const body = ids.length > 0 ? { ids } : action === 'purge' ? { all: true } : {};
    const answer = (await api.post(`/v2/queue/parked/${action}`, body)) as { requeued?: number; purged?: number };
    if (o.json) io.out.write(`${JSON.stringify(answer)}\n`);
    else io.out.write(`${doneLine(action, answer.requeued ?? answer.purged ?? 0, ids)}\n`);
    return QUEUE_EXIT.ok;
  } catch (err) {
    io.err.write(`iotistic-agent: ${err instanceof AgentError ? err.message : `cannot reach the agent's queue at ${api.base}: ${errorMessage(err)}`}\n`);
    return QUEUE_EXIT.failed;
  }
}

/** Why the ids and --all do not name what to act on, or undefined when they do. */
export function selectionProblem(action: 'retry' | 'purge', ids: string[], all: boolean): string | undefined {
  if (all && ids.length > 0) return `queue ${action}: give parked message IDs or --all, not both (got --all and ${ids.length} ID${ids.length === 1 ? '' : 's'})`;
  if (!all && ids.length === 0) return `queue ${action}: expected parked message IDs (iotistic-agent queue parked lists them) or --all, got neither`;
  return undefined;
}

/** True to go on, false when the answer was no, undefined when there is no terminal to ask. */
async function confirmPurge(api: AgentApi, ids: string[], io: QueueIo): Promise<boolean | undefined> {
  if (!io.confirm) return undefined;
  const count = ids.length > 0 ? `${ids.length} parked message${ids.length === 1 ? '' : 's'}` : `all ${parkedTotal((await api.get('/v2/queue')) as QueueAnswer)} parked messages`;
  return io.confirm(`delete ${count} for good (they count as purged drops)? [y/N] `);
}

function doneLine(action: 'retry' | 'purge', n: number, ids: string[]): string {
  const what = `${n} parked message${n === 1 ? '' : 's'}`;
  const done = action === 'retry' ? `requeued ${what} (back in the queue, delivered in turn)` : `deleted ${what} for good`;
  const k = ids.length - n;
  const missed = k > 0 ? `; ${k} of the ${ids.length} ID${ids.length === 1 ? '' : 's'} named ${k === 1 ? 'is' : 'are'} not parked (iotistic-agent queue parked lists those that are)` : '';
  return `${done}${missed}`;
}

function parkedTotal(q: QueueAnswer): number {
  return Object.values(q.channels).reduce((n, c) => n + c.parked, 0);
}

/** The outbox per channel as columns: waiting, bytes, oldest, delivered, dropped, expired, parked (non-zero losses in yellow). */
export function formatQueue(q: QueueAnswer, p: Palette): string {
  const head = ['channel', 'waiting', 'bytes', 'oldest', 'delivered', 'dropped', 'expired', 'parked'];
  const rows = Object.entries(q.channels).map(([name, c]) => [name, String(c.depth), bytes(c.bytes), c.depth > 0 ? duration(c.oldestAgeMs) : '-', String(c.delivered), String(c.dropped), String(c.expired), String(c.parked)]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[], paint: (i: number, cell: string) => string): string =>
    cells.map((cell, i) => paint(i, i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  const loss = new Set([5, 6, 7]);
  return [
    `Outbox  ${q.depth} waiting, ${bytes(q.bytes)}${q.depth > 0 ? `, oldest ${duration(q.oldestAgeMs)}` : ''}`,
    line(head, (_, cell) => p.dim(cell)),
    ...rows.map((r) => line(r, (i, cell) => (loss.has(i) && cell.trim() !== '0' ? p.yellow(cell) : cell))),
    '',
  ].join('\n');
}

/** One parked message a line: `<id>  <channel>  <parked at> (<age> ago)  <reason>`, oldest first. */
export function formatParked(q: QueueAnswer, now: number): string {
  const list = q.parkedMessages ?? [];
  const total = parkedTotal(q);
  if (total === 0 && list.length === 0) return 'no parked messages\n';
  const idW = Math.max(...list.map((m) => m.id.length), 0);
  const chW = Math.max(...list.map((m) => m.channel.length), 0);
  const lines = list.map((m) => `${m.id.padEnd(idW)}  ${m.channel.padEnd(chW)}  ${when(m.parkedAt)} (${duration(Math.max(0, now - m.parkedAt))} ago)  ${m.reason}`);
  const head = `${total} parked message${total === 1 ? '' : 's'}${list.length < total ? ` (the oldest ${list.length} shown)` : ''}; retry: iotistic-agent queue retry ID... | --all; delete: iotistic-agent queue purge ID... | --all`;
  return `${[head, ...lines].join('\n')}\n`;
}

/** A y/N question on the terminal (stdin and stderr). */
export async function askOnTerminal(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}
