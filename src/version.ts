import { readFileSync } from 'node:fs';

/** The agent's version, from package.json (two levels up from both src/ and dist/src/). */
export const AGENT_VERSION: string = (() => {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'iotistic-agent' && pkg.version) return pkg.version;
    } catch {
      // try the next location
    }
  }
  return '0.0.0';
})();

/**
 * The date this version was cut (raised with each release): a wall clock before it cannot be right,
 * so the clock is not synced (resilience/clock-sync.ts), whatever else says so.
 */
export const AGENT_BUILT_AT: number = Date.UTC(2026, 11, 6);
