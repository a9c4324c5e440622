// @ts-check
// Mutation testing, one area at a time: `npm run test:mutation -- --area api` (see scripts/mutation.mjs
// and docs/testing.md). The area comes from MUTATION_AREA; scripts/mutation-areas.mjs lists them.
import { areaFromEnv } from './scripts/mutation-areas.mjs';

const area = areaFromEnv();

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.mutation.config.ts', related: false },
  checkers: ['typescript'],
  tsconfigFile: 'tsconfig.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  mutate: area.mutate,
  coverageAnalysis: 'perTest',
  // A 2-core machine: one test runner, one checker.
  concurrency: 1,
  timeoutMS: 20_000,
  incremental: true,
  incrementalFile: `reports/mutation/${area.name}.incremental.json`,
  plugins: ['@stryker-mutator/*', './scripts/stryker-survivors-reporter.mjs'],
  // survivors: reports/mutation/<area>.survivors.txt, written while the run goes on.
  reporters: ['json', 'html', 'clear-text', 'progress-append-only', 'survivors'],
  jsonReporter: { fileName: `reports/mutation/${area.name}.json` },
  htmlReporter: { fileName: `reports/mutation/${area.name}.html` },
  ignorePatterns: ['dist', 'data', 'coverage', '.test-services', 'devcloud/**/*.db'],
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
