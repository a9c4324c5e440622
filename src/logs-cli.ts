import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { errorMessage } from './util/errors.js';
import { noAnswer } from './status-target.js';

/** `iotistic-agent logs [SERVICE]` (docs/api.md, "Logs"): the local tail of a running agent, and with -f the lines as they come. */

export interface LogsCliOptions {
  follow?: boolean;
  since?: string;
  lines?: string;
  json?: boolean;
}

/** A line of GET /v2/logs (a stored line, or a follower's marker, which has no seq). */
interface ShownLine {
  service: string;
  ts: number;
  stream: string;
  line: string;
  dropped?: number;
  reason?: string;
}

/** Exit codes: 0 done (or stopped by SIGINT/SIGTERM while following), 1 the agent did not answer or ended the stream, 2 the API refused the request (400). */
export const LOGS_EXIT = { ok: 0, failed: 1, refused: 2 } as const;

/** `<ISO time> <service> <stream> <line>`; a marker shows `[dropped N: reason]` in place of the stream. */
export function formatLine(l: ShownLine): string {
  const what = l.stream === 'marker' ? `[dropped ${l.dropped ?? '?'}: ${l.reason ?? '?'}]` : l.stream;
  return `${new Date(l.ts).toISOString()} ${l.service} ${what} ${l.line}`;
}

export function logsPath(service: string | undefined, o: LogsCliOptions): string {
  const q = new URLSearchParams();
  if (service !== undefined) q.set('service', service);
  if (o.since !== undefined) q.set('since', o.since);
  if (o.lines !== undefined) q.set('limit', o.lines);
  if (o.follow) q.set('follow', '1');
  const s = q.toString();
  return `/v2/logs${s === '' ? '' : `?${s}`}`;
}

class Refused extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
  }
}

/** Runs the command; resolves with the exit code. */
export async function runLogs(base: string, key: string, service: string | undefined, o: LogsCliOptions, out: Writable = process.stdout): Promise<number> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // A reader that goes away (`| head`) ends the command quietly.
  out.on('error', onSignal);
  try {
    const res = await request(base, logsPath(service, o), key, stop.signal);
    if (!o.follow) {
      const { lines } = (await res.json()) as { lines: ShownLine[] };
      for (const l of lines) await write(out, `${o.json ? JSON.stringify(l) : formatLine(l)}\n`);
      return LOGS_EXIT.ok;
    }
    // A stop of the agent closes the stream, cleanly or mid-chunk: either way it is over.
    const cut = await stream(res, out, o.json === true).then(
      () => '',
      (err: unknown) => `: ${errorMessage(err)}`,
    );
    if (stop.signal.aborted) return LOGS_EXIT.ok;
    process.stderr.write(`iotistic-agent: the agent at ${base} ended the log stream (it stopped?)${cut}\n`);
    return LOGS_EXIT.failed;
  } catch (err) {
    if (stop.signal.aborted) return LOGS_EXIT.ok;
    if (err instanceof Refused) {
      process.stderr.write(`iotistic-agent: ${err.message}\n`);
      return err.code;
    }
    process.stderr.write(`iotistic-agent: cannot read the agent's logs at ${base}: ${errorMessage(err)}\n`);
    return LOGS_EXIT.failed;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The answer's headers within 5 s; its body then takes as long as it takes (a follower's never ends). */
async function request(base: string, path: string, key: string, stop: AbortSignal): Promise<Response> {
  const headers = new AbortController();
  const timer = setTimeout(() => headers.abort(new DOMException('no answer within 5 s', 'TimeoutError')), 5_000);
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${key}` }, signal: AbortSignal.any([stop, headers.signal]) });
  } catch (err) {
    if (stop.aborted) throw err;
    const why = noAnswer(base, headers.signal.aborted ? headers.signal.reason : err);
    throw new Refused(why ?? `cannot read the agent's logs at ${base}: ${errorMessage(err)}`, LOGS_EXIT.failed);
  } finally {
    clearTimeout(timer);
  }
  if (res.ok) return res;
  const body = await res.text();
  let message = body;
  try {
    message = (JSON.parse(body) as { message?: string }).message ?? body;
  } catch {
    // not JSON: the text as it came
  }
  if (res.status === 400) throw new Refused(message, LOGS_EXIT.refused);
  throw new Refused(`cannot read the agent's logs at ${base}: ${path.split('?')[0]} answered ${res.status}: ${message}`, LOGS_EXIT.failed);
}

/** Prints each NDJSON object of the stream as it comes (empty lines are keep-alives). */
async function stream(res: Response, out: Writable, json: boolean): Promise<void> {
  if (!res.body) return;
  const decoder = new TextDecoder();
  let partial = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    partial += decoder.decode(chunk, { stream: true });
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    let text = '';
    for (const l of lines) if (l !== '') text += `${json ? l : formatLine(JSON.parse(l) as ShownLine)}\n`;
    // Waiting for stdout (a pager) leaves the socket unread: the agent then skips lines for us and says how many.
    if (text !== '') await write(out, text);
  }
}

async function write(out: Writable, text: string): Promise<void> {
  if (!out.write(text)) await once(out, 'drain');
}
