/**
 * The values inside a Compose service (compose.ts): durations, command strings, environment and
 * label lists, health checks, resource limits. Each reader reports problems at the Compose path.
 */

export interface ComposeIssue {
  /** Where in the Compose file, dotted: `services.web.healthcheck.interval`. */
  path: string;
  message: string;
}

export type Report = (path: string, message: string) => void;

export const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

const DURATION = /^(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+$/;
const DURATION_PART = /(\d+(?:\.\d+)?)(us|ms|s|m|h)/g;
const UNIT_SECONDS: Readonly<Record<string, number>> = { us: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };
export const DURATION_EXPECTED = 'a Compose duration such as "30s", "1m30s", "500ms" or "1h" (units us, ms, s, m, h)';

/** Seconds of a Compose duration ("1m30s" → 90), or undefined when it is not one. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value !== 'string' || !DURATION.test(value)) return undefined;
  let seconds = 0;
  for (const m of value.matchAll(DURATION_PART)) seconds += Number(m[1]) * (UNIT_SECONDS[m[2] as string] as number);
  return Math.round(seconds * 1000) / 1000;
}

/** Splits a command string as a POSIX shell would split words (quotes and backslashes; no expansion). */
export function splitWords(text: string): string[] | undefined {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else cur += c;
    } else if (c === '\\' && i + 1 < text.length && (quote === undefined || /["\\$`]/.test(text[i + 1] as string))) {
      cur += text[++i];
      inWord = true;
    } else if (quote === '"') {
      if (c === '"') quote = undefined;
      else cur += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += c;
      inWord = true;
    }
  }
  if (quote !== undefined) return undefined;
  if (inWord) words.push(cur);
  return words;
}

/** A command or entrypoint: a list of strings, or a string split into words. */
export function readCommand(value: unknown, path: string, report: Report): string[] | undefined {
  if (typeof value === 'string') {
    const words = splitWords(value);
    if (words && words.length > 0) return words;
    report(path, 'a command: a non-empty string (split into words, quotes respected; no shell) or a list of strings');
    return undefined;
  }
  if (Array.isArray(value) && value.length > 0 && value.every((w) => typeof w === 'string')) return value as string[];
  report(path, 'a command: a non-empty list of strings or a string');
  return undefined;
}

const scalar = (v: unknown): v is string | number | boolean => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';

/**
 * `environment` or `labels`: a map, or a list of "KEY=VALUE". A key without a value (Compose then
 * passes the host's value through) is refused: the agent never hands its own environment to a service.
 */
export function readPairs(value: unknown, path: string, report: Report, what: 'environment' | 'labels'): Record<string, string> {
  const out: Record<string, string> = {};
  const noValue = `a value: ${what === 'environment' ? 'the agent does not pass its own environment through' : 'a label needs one'} ("KEY=VALUE", or KEY: VALUE in a map)`;
  if (Array.isArray(value)) {
    value.forEach((item, i) => {
      const eq = typeof item === 'string' ? item.indexOf('=') : -1;
      if (typeof item !== 'string' || eq <= 0) return report(`${path}.${i}`, typeof item === 'string' ? noValue : 'a string "KEY=VALUE"');
      out[item.slice(0, eq)] = item.slice(eq + 1);
    });
  } else if (isMap(value)) {
    for (const [k, v] of Object.entries(value)) {
      if (v === null || v === undefined) report(`${path}.${k}`, noValue);
      else if (!scalar(v)) report(`${path}.${k}`, 'a string, number or boolean');
      else out[k] = String(v);
    }
  } else report(path, `a map of ${what} or a list of "KEY=VALUE"`);
  return out;
}

/** Reports every key of `value` not in `allowed` by name; x-* keys (Compose's extensions) are skipped. */
export function onlyKeys(value: Record<string, unknown>, path: string, allowed: readonly string[], report: Report, hints: Readonly<Record<string, string>> = {}): void {
  for (const key of Object.keys(value)) {
    if (allowed.includes(key) || key.startsWith('x-')) continue;
    const hint = hints[key];
    report(path === '' ? key : `${path}.${key}`, `not supported (the Compose subset: docs/workloads.md; here: ${allowed.join(', ')})${hint ? `; ${hint}` : ''}`);
  }
}

/** A health check in the target's terms: the engine's test, and times in seconds. */
export interface TargetHealthcheck {
  test: string[];
  intervalSeconds?: number;
  timeoutSeconds?: number;
  retries?: number;
  startPeriodSeconds?: number;
}

const HEALTH_KEYS = ['test', 'interval', 'timeout', 'retries', 'start_period', 'disable'] as const;

/** `healthcheck`; `disable: true` (or test NONE) becomes test ["NONE"], which turns off the image's own. */
export function readHealthcheck(value: unknown, path: string, report: Report): TargetHealthcheck | undefined {
  if (!isMap(value)) {
    report(path, 'a map with test, interval, timeout, retries, start_period or disable');
    return undefined;
  }
  onlyKeys(value, path, HEALTH_KEYS, report);
  if (value.disable === true) return { test: ['NONE'] };
  if (value.disable !== undefined && value.disable !== false) report(`${path}.disable`, 'true or false');
  const t = value.test;
  const test = typeof t === 'string' ? ['CMD-SHELL', t] : Array.isArray(t) && t.every((w) => typeof w === 'string') && ['CMD', 'CMD-SHELL', 'NONE'].includes(t[0] as string) ? (t as string[]) : undefined;
  if (!test) {
    report(`${path}.test`, 'a command: a string (run by the container\'s shell) or a list starting with "CMD", "CMD-SHELL" or "NONE"');
    return undefined;
  }
  const out: TargetHealthcheck = { test };
  const times = [['interval', 'intervalSeconds'], ['timeout', 'timeoutSeconds'], ['start_period', 'startPeriodSeconds']] as const;
  for (const [from, to] of times) {
    if (value[from] === undefined) continue;
    const seconds = parseDuration(value[from]);
    if (seconds === undefined || seconds <= 0) report(`${path}.${from}`, DURATION_EXPECTED);
    else out[to] = seconds;
  }
  if (value.retries !== undefined) {
    if (typeof value.retries === 'number' && Number.isInteger(value.retries) && value.retries > 0) out.retries = value.retries;
    else report(`${path}.retries`, 'a whole number above 0');
  }
  return out;
}

/** `deploy.resources`: limits (cpus, memory) and a memory reservation; every other deploy key is refused by name. */
export function readDeploy(value: unknown, path: string, report: Report): { cpus?: number; memory?: string | number; memoryReservation?: string | number } {
  const out: { cpus?: number; memory?: string | number; memoryReservation?: string | number } = {};
  if (!isMap(value)) {
    report(path, 'a map with resources');
    return out;
  }
  onlyKeys(value, path, ['resources'], report, { replicas: 'a device runs one instance of each service' });
  const res = value.resources;
  if (res === undefined) return out;
  if (!isMap(res)) {
    report(`${path}.resources`, 'a map with limits or reservations');
    return out;
  }
  onlyKeys(res, `${path}.resources`, ['limits', 'reservations'], report);
  if (isMap(res.limits)) {
    onlyKeys(res.limits, `${path}.resources.limits`, ['cpus', 'memory'], report);
    const cpus = typeof res.limits.cpus === 'string' ? Number(res.limits.cpus) : res.limits.cpus;
    if (typeof cpus === 'number' && Number.isFinite(cpus) && cpus > 0) out.cpus = cpus;
    else if (res.limits.cpus !== undefined) report(`${path}.resources.limits.cpus`, 'a number of CPUs above 0, e.g. 0.5 or "1.5"');
    if (typeof res.limits.memory === 'string' || typeof res.limits.memory === 'number') out.memory = res.limits.memory;
    else if (res.limits.memory !== undefined) report(`${path}.resources.limits.memory`, 'a size such as "256m" or "1g", or bytes');
  } else if (res.limits !== undefined) report(`${path}.resources.limits`, 'a map with cpus or memory');
  if (isMap(res.reservations)) {
    onlyKeys(res.reservations, `${path}.resources.reservations`, ['memory'], report);
    const m = res.reservations.memory;
    if (typeof m === 'string' || typeof m === 'number') out.memoryReservation = m;
  } else if (res.reservations !== undefined) report(`${path}.resources.reservations`, 'a map with memory');
  return out;
}
