import { AgentError, errorMessage } from './util/errors.js';
import { noAnswer } from './status-target.js';

/** Where a CLI command reaches the local API, with the key and where that key was read from. */
export interface ApiAccess {
  base: string;
  key: string;
  /** For a refused key: "--key", "IOTISTIC_API_LOCAL_API_KEY", "api.localApiKey in <file>" or "<dataDir>/identity.json". */
  keyFrom: string;
}

/** The requests of `status` and `queue` to a running agent; every failure is an AgentError whose message says what to do. */
export class AgentApi {
  constructor(
    private readonly access: ApiAccess,
    private readonly timeoutMs = 5_000,
  ) {}

  get base(): string {
    return this.access.base;
  }

  /** GET; with `optional`, a 404 is null (the shadow answers 404 when it is off). */
  async get(path: string, optional = false): Promise<unknown> {
    const res = await this.send('GET', path);
    if (optional && res.status === 404) return null;
    return this.answer(path, res);
  }

  async post(path: string, body: unknown): Promise<unknown> {
    return this.answer(path, await this.send('POST', path, body));
  }

  async put(path: string, body: unknown): Promise<unknown> {
    return this.answer(path, await this.send('PUT', path, body));
  }

  async delete(path: string): Promise<unknown> {
    return this.answer(path, await this.send('DELETE', path));
  }

  private async send(method: string, path: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.access.key}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetch(`${this.access.base}${path}`, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      const why = noAnswer(this.access.base, err);
      throw new AgentError('AGENT_NOT_ANSWERING', why ?? `no answer from the agent at ${this.access.base}${path}: ${errorMessage(err)}`);
    }
  }

  private async answer(path: string, res: Response): Promise<unknown> {
    const { base, keyFrom } = this.access;
    if (res.status === 401) {
      throw new AgentError('AGENT_REFUSED_KEY', `the agent at ${base} refused the local API key (401): the key was read from ${keyFrom}; pass --key KEY, or --data-dir DIR of the agent`);
    }
    const text = await res.text();
    if (!res.ok) {
      let message = text;
      try {
        message = (JSON.parse(text) as { message?: string }).message ?? text;
      } catch {
        // not JSON: the text as it came
      }
      throw new AgentError('AGENT_API_ERROR', `the agent at ${base} answered ${path.split('?')[0]} with ${res.status}: ${message}`);
    }
    return JSON.parse(text) as unknown;
  }
}

/** Whether to colour what goes to `out`: a terminal, and NO_COLOR unset or empty (https://no-color.org). */
export function colourWanted(out: { isTTY?: boolean }, env: NodeJS.ProcessEnv): boolean {
  return out.isTTY === true && (env.NO_COLOR === undefined || env.NO_COLOR === '');
}

/** ANSI colours, or none: every function returns its text unchanged when `on` is false. */
export function palette(on: boolean): { red: Paint; yellow: Paint; green: Paint; dim: Paint; bold: Paint } {
  const sgr = (open: number, close: number): Paint => (t) => (on ? `\u001b[${open}m${t}\u001b[${close}m` : t);
  return { red: sgr(31, 39), yellow: sgr(33, 39), green: sgr(32, 39), dim: sgr(2, 22), bold: sgr(1, 22) };
}

export type Paint = (text: string) => string;
export type Palette = ReturnType<typeof palette>;
