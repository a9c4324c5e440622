import { defineConfig } from 'vitest/config';

// Used by Stryker only: the area's fast tests (MUTATION_TESTS, comma-separated globs, set by
// scripts/mutation.mjs), one worker, since Stryker runs the mutants one after another.
const include = (process.env.MUTATION_TESTS ?? 'test/unit/**/*.test.ts').split(',');

export default defineConfig({
  test: {
    include,
    testTimeout: 20_000,
    hookTimeout: 20_000,
    pool: 'forks',
    maxWorkers: 1,
  },
});
