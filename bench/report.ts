import * as os from 'node:os';
import { parseArgs } from 'node:util';

/**
 * What every benchmark prints (DESIGN.md, "Benchmarks and reports"): a readable table, and with
 * `--json` one JSON object as the last line of stdout.
 */

export interface BenchResult {
  name: string;
  /** null when the quantity could not be measured (e.g. not every device came back within the run). */
  value: number | null;
  unit: string;
}

export interface BenchTarget {
  want: string;
  value: number | null;
  met: boolean;
}

export interface BenchReport {
  benchmark: string;
  machine: { cpus: number; node: string };
  config: Record<string, unknown>;
  results: BenchResult[];
  ratios: Record<string, number | null>;
  targets: Record<string, BenchTarget>;
}

export function machine(): BenchReport['machine'] {
  return { cpus: os.cpus().length, node: process.version };
}

/** A target with `met` computed from the measured value; an unmeasured value never meets it. */
export function target(op: '<=' | '>=', limit: number, value: number | null): BenchTarget {
  const measured = value !== null && Number.isFinite(value);
  const met = measured && (op === '<=' ? value <= limit : value >= limit);
  return { want: `${op} ${limit}`, value: measured ? round(value) : null, met };
}

/** A quotient, or null when either side was not measured or the divisor is 0. */
export function ratio(a: number | null, b: number | null): number | null {
  if (a === null || b === null || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return null;
  return round(a / b);
}

/** The middle value (mean of the two middle ones for an even count); null for none. */
export function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** Four decimals: enough for a report, without float noise (0.52781234 → 0.5278). */
export function round(value: number): number {
  return Number.isFinite(value) ? Math.round(value * 1e4) / 1e4 : value;
}

/** The JSON line; a non-finite number becomes null (JSON has no Infinity). */
export function jsonLine(report: BenchReport): string {
  return JSON.stringify(report, (_key, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v));
}

/** A number for a table cell: fixed digits, thousands grouped, '-' when unmeasured. */
export function cell(value: number | null | undefined, digits = 0): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '-';
  if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Columns padded to their widest cell: the first left-aligned (labels), the others right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r
      .map((text, c) => (c === 0 ? text.padEnd(widths[c] ?? 0) : text.padStart(widths[c] ?? 0)))
      .join('  ')
      .trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** An integer option of a benchmark's command line: its default and the range it must lie in. */
export interface IntOption {
  default: number;
  min: number;
  max?: number;
}

/** A comma-separated list option: each item one of `choices`; unset, `default` (all of them unless told). */
export interface ListOption {
  choices: readonly string[];
  default?: readonly string[];
}

/** Options beside the integers: lists of choices, and strings (a path, a name) with their defaults. */
export interface BenchOptionsMore<L extends string, S extends string> {
  lists?: Record<L, ListOption>;
  strings?: Record<S, { default: string }>;
}

/**
 * Parses `--name N` integer options, `--name a,b` lists, `--name text` strings and `--json` (and
 * `--help`), the command line every benchmark shares. A bad value exits 2 with the option, the value
 * and what was expected; `--help` prints `usage`.
 */
export function benchArgs<K extends string, L extends string = never, S extends string = never>(
  argv: string[],
  usage: string,
  ints: Record<K, IntOption>,
  more: BenchOptionsMore<L, S> = {},
): Record<K, number> & Record<L, string[]> & Record<S, string> & { json: boolean } {
  const lists = Object.entries<ListOption>(more.lists ?? ({} as Record<L, ListOption>));
  const strings = Object.entries<{ default: string }>(more.strings ?? ({} as Record<S, { default: string }>));
  const options: Record<string, { type: 'string' | 'boolean'; default?: string | boolean; short?: string }> = {
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  };
  for (const [name, o] of Object.entries<IntOption>(ints)) options[name] = { type: 'string', default: String(o.default) };
  for (const [name, o] of lists) options[name] = { type: 'string', default: (o.default ?? o.choices).join(',') };
  for (const [name, o] of strings) options[name] = { type: 'string', default: o.default };
  const { values } = parseArgs({ args: argv, options, strict: true });
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  const fail = (message: string): never => {
    console.error(`${message}\n${usage}`);
    process.exit(2);
  };
  const out: Record<string, unknown> = { json: values.json === true };
  for (const [name, o] of Object.entries<IntOption>(ints)) {
    const raw = String(values[name]);
    const n = Number(raw);
    const max = o.max ?? Infinity;
    if (!Number.isInteger(n) || n < o.min || n > max) fail(`--${name}: expected an integer in [${o.min}, ${max}], got "${raw}"`);
    out[name] = n;
  }
  for (const [name, o] of lists) {
    const raw = String(values[name]);
    const asked = raw.split(',').map((k) => k.trim()).filter((k) => k !== '');
    if (asked.length === 0 || asked.some((k) => !o.choices.includes(k))) fail(`--${name}: expected a comma-separated list of ${o.choices.join(', ')}, got "${raw}"`);
    // In the order of the choices, each once: the run does not depend on how the list was typed.
    out[name] = o.choices.filter((c) => asked.includes(c));
  }
  for (const [name] of strings) {
    const raw = String(values[name]);
    if (raw === '') fail(`--${name}: expected a value, got ""`);
    out[name] = raw;
  }
  return out as Record<K, number> & Record<L, string[]> & Record<S, string> & { json: boolean };
}
