import type { z } from 'zod';

/** One reason a config was refused, phrased for the person who has to fix it. */
export interface ConfigIssue {
  /** Dotted key path, e.g. `settings.offline.maxQueueSize` (empty for the document itself). */
  path: string;
  /** Where the value came from: the file, or the environment variable that set it. */
  source: string;
  /** The value found, if any. Secrets are shown as "[redacted]". */
  value?: unknown;
  /** What was expected instead. */
  expected: string;
}

export function formatIssue(issue: ConfigIssue): string {
  const where = issue.path === '' ? '(document)' : issue.path;
  const from = issue.source.startsWith('IOTISTIC_') ? ` (from ${issue.source})` : '';
  const got = 'value' in issue ? `, got ${describeValue(issue.value)}` : '';
  return `${where}${from}: expected ${issue.expected}${got}`;
}

export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array (${shown(value)})`;
  if (typeof value === 'object') return `an object (${shown(value)})`;
  if (typeof value === 'string') return `${truncate(JSON.stringify(value))} (a string)`;
  return `${String(value)} (a ${typeof value})`;
}

/** JSON.stringify recurses: a value nested some thousands deep would throw instead of being described. */
function shown(value: unknown): string {
  try {
    return truncate(JSON.stringify(value));
  } catch {
    return 'too deep or too odd to show';
  }
}

function truncate(s: string, max = 60): string {
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

function valueAt(root: unknown, path: readonly PropertyKey[]): { found: boolean; value?: unknown } {
  let cur: unknown = root;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object' || !(key in (cur as object))) return { found: false };
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return { found: true, value: cur };
}

/** What a zod issue expected, in words. */
function expectedOf(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      return article(issue.expected);
    case 'too_small':
      return issue.origin === 'string'
        ? `a string of at least ${String(issue.minimum)} characters`
        : issue.origin === 'array'
          ? `at least ${String(issue.minimum)} items`
          : `a number ${issue.inclusive ? '>=' : '>'} ${String(issue.minimum)}`;
    case 'too_big':
      return issue.origin === 'string'
        ? `a string of at most ${String(issue.maximum)} characters`
        : issue.origin === 'array'
          ? `at most ${String(issue.maximum)} items`
          : `a number ${issue.inclusive ? '<=' : '<'} ${String(issue.maximum)}`;
    case 'invalid_value':
      return `one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_format':
      // A URL field with its own words (mqtt:// ones) says them; the rest are http(s).
      if (issue.format === 'url') return /^an? /.test(issue.message) ? issue.message : 'an http:// or https:// URL';
      if (issue.format === 'regex') return issue.message;
      return `a string in ${issue.format} format`;
    case 'not_multiple_of':
      return `a multiple of ${String(issue.divisor)}`;
    case 'unrecognized_keys':
      return 'no such key (check the spelling; see schema/agent-config.schema.json)';
    case 'invalid_union':
      return unionExpected(issue.errors);
    default:
      return issue.message;
  }
}

/**
 * What any option of a union would have taken: its literal values merged into one list (`one of
 * "auto", 4, 5`), anything else in words, joined with "or" (zod's own message is "Invalid input").
 */
function unionExpected(options: readonly (readonly z.core.$ZodIssue[])[]): string {
  const values: unknown[] = [];
  const words: string[] = [];
  for (const issues of options) {
    const first = issues[0];
    if (!first) continue;
    if (first.code === 'invalid_value') values.push(...first.values);
    else words.push(expectedOf(first));
  }
  const parts = [...(values.length > 0 ? [`one of ${values.map((v) => JSON.stringify(v)).join(', ')}`] : []), ...new Set(words)];
  return parts.length > 0 ? parts.join(' or ') : 'a valid value';
}

function article(type: string): string {
  if (type === 'int') return 'an integer';
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

/**
 * Turns zod issues into ConfigIssues against the raw input, with the value that was found and the
 * source of each key (the file, or an environment variable).
 */
export function fromZodIssues(
  issues: readonly z.core.$ZodIssue[],
  input: unknown,
  sourceOf: (path: string) => string,
  isSecret: (path: string) => boolean,
): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const path = [...issue.path, key].map(String).join('.');
        out.push({ path, source: sourceOf(path), expected: expectedOf(issue) });
      }
      continue;
    }
    const path = issue.path.map(String).join('.');
    if (issue.code === 'invalid_key') {
      // A bad record key: zod keeps the key's own problem inside; what is wrong is the key, not its value.
      const inner = issue.issues[0];
      const key = issue.path[issue.path.length - 1];
      out.push({ path, source: sourceOf(path), value: String(key), expected: inner ? `a key that is ${expectedOf(inner as z.core.$ZodIssue)}` : issue.message });
      continue;
    }
    const at = valueAt(input, issue.path);
    const base: ConfigIssue = { path, source: sourceOf(path), expected: expectedOf(issue) };
    if (at.found) base.value = isSecret(path) ? '[redacted]' : at.value;
    out.push(base);
  }
  return out;
}
