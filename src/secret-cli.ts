/** `iotistic-agent secret set|ls|rm` (docs/api.md, "The CLI"): the local secrets of a running agent. */
import { readFileSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import type { AgentApi } from './cli-client.js';
import { AgentError, errorMessage } from './util/errors.js';

/** Exit codes: 0 done, 1 the agent did not answer or refused, 2 a wrong use of the command. */
export const SECRET_EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export interface SecretIo {
  out: Writable;
  err: Writable;
  stdin: Readable;
}

interface ListAnswer {
  cloudVersion: string | null;
  secrets: { name: string; source: string; updatedAt: string; overridesCloud: boolean; usedBy: string[] }[];
  missing: { name: string; usedBy: string[] }[];
}

/** The value, from a file or stdin: never from argv (every user sees argv in `ps`). One trailing newline is dropped. */
async function readValue(o: { fromFile?: string; stdin?: boolean }, io: SecretIo): Promise<string | { usage: string }> {
  if ((o.fromFile === undefined) === (o.stdin !== true)) return { usage: 'secret set: expected --from-file FILE or --stdin (one of the two); the value is never taken as an argument' };
  let text: string;
  if (o.fromFile !== undefined) {
    try {
      text = readFileSync(o.fromFile, 'utf8');
    } catch (err) {
      return { usage: `secret set: cannot read --from-file ${o.fromFile}: ${errorMessage(err)}` };
    }
  } else {
    const chunks: Buffer[] = [];
    for await (const c of io.stdin) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(String(c)));
    text = Buffer.concat(chunks).toString('utf8');
  }
  return text.replace(/\r?\n$/, '');
}

export async function runSecret(api: AgentApi, action: 'set' | 'ls' | 'rm', name: string | undefined, o: { fromFile?: string; stdin?: boolean; json?: boolean }, io: SecretIo): Promise<number> {
  try {
    if (action === 'ls') {
      const a = (await api.get('/v2/secrets')) as ListAnswer;
      io.out.write(o.json ? `${JSON.stringify(a)}\n` : formatList(a));
      return SECRET_EXIT.ok;
    }
    const path = `/v2/secrets/${encodeURIComponent(name ?? '')}`;
    if (action === 'rm') {
      await api.delete(path);
      io.out.write(`removed the local secret ${name}\n`);
      return SECRET_EXIT.ok;
    }
    const value = await readValue(o, io);
    if (typeof value !== 'string') {
      io.err.write(`iotistic-agent: ${value.usage}\n`);
      return SECRET_EXIT.usage;
    }
    await api.put(path, { value });
    io.out.write(`set the local secret ${name} (it overrides the cloud's of that name until removed)\n`);
    return SECRET_EXIT.ok;
  } catch (err) {
    io.err.write(`iotistic-agent: ${err instanceof AgentError ? err.message : `cannot reach the agent at ${api.base}: ${errorMessage(err)}`}\n`);
    return SECRET_EXIT.failed;
  }
}

function formatList(a: ListAnswer): string {
  const rows = a.secrets.map((s) => `${s.name}\t${s.source}${s.overridesCloud ? ' (over cloud)' : ''}\t${s.updatedAt}\t${s.usedBy.join(', ') || '-'}`);
  const missing = a.missing.map((m) => `${m.name}\tMISSING\t-\t${m.usedBy.join(', ')}`);
  const all = [...rows, ...missing];
  return `${['NAME\tSOURCE\tUPDATED\tUSED BY', ...all].join('\n')}\n${all.length === 0 ? '(no secrets)\n' : ''}`;
}
