import { afterEach, describe, expect, it, vi } from 'vitest';
import { benchArgs } from '../../bench/report.js';

const KINDS = ['refused', 'blackhole', 'hang', '503'] as const;
const parse = (argv: string[]) =>
  benchArgs(argv, 'usage: bench', { agents: { default: 50, min: 2, max: 500 } }, { lists: { kinds: { choices: KINDS } }, strings: { agent: { default: '/opt/cli.js' } } });

/** Runs a parse that must exit: the exit code and what it printed to stderr. */
function exits(argv: string[]): { code: unknown; printed: string } {
  const printed: string[] = [];
  vi.spyOn(console, 'error').mockImplementation((s: unknown) => void printed.push(String(s)));
  vi.spyOn(process, 'exit').mockImplementation(((code?: number) => {
    throw Object.assign(new Error('exit'), { code });
  }) as typeof process.exit);
  try {
    parse(argv);
  } catch (err) {
    return { code: (err as { code?: unknown }).code, printed: printed.join('\n') };
  }
  throw new Error('expected an exit');
}

afterEach(() => vi.restoreAllMocks());

describe('benchArgs', () => {
  it('takes integers, lists and strings, with their defaults when unset', () => {
    expect(parse([])).toEqual({ json: false, agents: 50, kinds: ['refused', 'blackhole', 'hang', '503'], agent: '/opt/cli.js' });
    expect(parse(['--agents', '7', '--kinds', '503, refused', '--agent=/x/cli.js', '--json'])).toEqual({ json: true, agents: 7, kinds: ['refused', '503'], agent: '/x/cli.js' });
  });

  it('exits 2 naming the option, the value and what was expected', () => {
    expect(exits(['--kinds', 'refused,flood'])).toEqual({ code: 2, printed: expect.stringContaining('--kinds: expected a comma-separated list of refused, blackhole, hang, 503, got "refused,flood"') });
    expect(exits(['--kinds', ','])).toMatchObject({ code: 2, printed: expect.stringContaining('got ","') });
    expect(exits(['--agents', '1'])).toMatchObject({ code: 2, printed: expect.stringContaining('--agents: expected an integer in [2, 500], got "1"') });
    expect(exits(['--agent', ''])).toMatchObject({ code: 2, printed: expect.stringContaining('--agent: expected a value') });
  });
});
