/** `iotistic-agent restart|reboot|shutdown|purge` (docs/api.md, "The CLI"): device actions on a running agent. */
import { createInterface } from 'node:readline/promises';
import type { Writable } from 'node:stream';
import type { AgentApi } from './cli-client.js';
import { AgentError, errorMessage } from './util/errors.js';

/** Exit codes: 0 done, 1 refused or failed (the agent's reason printed), 2 a wrong use of the command. */
export const ACTION_EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export type ActionKind = 'restart' | 'reboot' | 'shutdown' | 'purge';

export interface ActionCliOptions {
  json?: boolean;
  yes?: boolean;
  confirm?: string;
}

export interface ActionIo {
  out: Writable;
  err: Writable;
  /** Asks for a line on the terminal; undefined when stdin is not a terminal (nobody to ask). */
  ask: ((question: string) => Promise<string>) | undefined;
}

const SEGMENT = /^[^/]+$/;

/** The request of an action: its path and body, or a usage problem. */
export function actionRequest(kind: ActionKind, target: string | undefined, confirm?: string): { path: string; body: unknown } | string {
  if (kind === 'reboot' || kind === 'shutdown') return { path: `/v2/device/${kind}`, body: {} };
  const [app, service, ...rest] = (target ?? '').split('/');
  if (!app || !SEGMENT.test(app) || rest.length > 0 || (kind === 'purge' && service !== undefined) || service === '') {
    return `${kind}: expected ${kind === 'restart' ? 'APP or APP/SERVICE' : 'APP'}, got ${JSON.stringify(target ?? '')}`;
  }
  const a = encodeURIComponent(app);
  if (kind === 'purge') return { path: `/v2/apps/${a}/purge`, body: { confirm } };
  return service === undefined ? { path: `/v2/apps/${a}/restart`, body: {} } : { path: `/v2/apps/${a}/services/${encodeURIComponent(service)}/restart`, body: {} };
}

export async function runAction(api: AgentApi, kind: ActionKind, target: string | undefined, o: ActionCliOptions, io: ActionIo): Promise<number> {
  let confirm = o.confirm;
  if (kind === 'purge' && !o.yes) {
    if (!io.ask) {
      io.err.write('iotistic-agent: purge deletes the app\'s data for good: on a terminal it asks for the app\'s name; without one, give --yes --confirm APP\n');
      return ACTION_EXIT.usage;
    }
    confirm = (await io.ask(`this deletes the data of app ${JSON.stringify(target ?? '')} for good (its volumes, its working dirs); type its name to go on: `)).trim();
  }
  const req = actionRequest(kind, target, confirm);
  if (typeof req === 'string') {
    io.err.write(`iotistic-agent: ${req}\n`);
    return ACTION_EXIT.usage;
  }
  try {
    const answer = await api.post(req.path, req.body);
    io.out.write(o.json ? `${JSON.stringify(answer)}\n` : `${doneLine(kind, target, answer)}\n`);
    return ACTION_EXIT.ok;
  } catch (err) {
    io.err.write(`iotistic-agent: ${err instanceof AgentError ? err.message : errorMessage(err)}\n`);
    return ACTION_EXIT.failed;
  }
}

function doneLine(kind: ActionKind, target: string | undefined, answer: unknown): string {
  switch (kind) {
    case 'reboot':
    case 'shutdown':
      return `${kind} requested: the agent stops, then the device ${kind === 'reboot' ? 'reboots' : 'powers off'}`;
    case 'purge': {
      const a = answer as { instances?: number; removed?: string[] };
      return `purged ${target ?? ''}: ${a.instances ?? 0} instance(s) removed, ${a.removed?.length ?? 0} volume(s)/dir(s) deleted; its services start again on fresh data`;
    }
    case 'restart':
      return `restarted ${target ?? ''}: ${JSON.stringify(answer)}`;
  }
}

/** A line typed on the terminal (stdin, the question on stderr). */
export async function askLine(question: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return await rl.question(question);
  } finally {
    rl.close();
  }
}
