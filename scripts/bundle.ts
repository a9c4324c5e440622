/**
 * Bundles the built CLI (dist/src/cli.js) into dist/bundle/: the agent's modules and its pure-JS
 * dependencies in a few minified ES modules, split at the CLI's dynamic imports so that what a
 * device does not use still loads only when used (docs/performance.md, "Footprint"). This is what
 * the `iotistic-agent` bin runs. Node keeps every loaded module's source text in memory; minified
 * and without the parts of the dependencies the agent never imports, the idle agent holds about
 * 7 MiB less.
 *
 * Left outside (loaded from node_modules as they are): native addons and packages that locate
 * files of their own at run time (pino starts its transports as worker threads from file paths;
 * dockerode pulls in ssh2, whose optional native part esbuild cannot bundle).
 */
import { build } from 'esbuild';
import { existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';

const root = new URL('../../', import.meta.url);
const entry = new URL('dist/src/cli.js', root);
const outdir = new URL('dist/bundle/', root);

/** Packages loaded from node_modules at run time, not bundled (see above). */
const EXTERNAL = ['better-sqlite3', 'dockerode', 'pino', 'pino-pretty'];

// The CLI's first two lines: `#!/bin/sh` and the launcher line that is a command to sh and a
// comment to node (src/cli.ts). esbuild keeps the first; the second goes back in as a banner.
const [shebang, launcher] = readFileSync(entry, 'utf8').split('\n', 2);
if (shebang !== '#!/bin/sh' || !launcher?.startsWith('//bin/sh ')) throw new Error(`${entry.pathname} does not start with the sh launcher lines`);

/** The newest modification time of the files under `dir` (ms). */
function newest(dir: URL): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) t = Math.max(t, statSync(`${e.parentPath}/${e.name}`).mtimeMs);
  }
  return t;
}

// Up to date (tsc --incremental rewrites only what changed): `npm start` on a built tree skips this.
const out = new URL('cli.js', outdir);
const inputs = Math.max(newest(new URL('dist/src/', root)), statSync(new URL('package-lock.json', root)).mtimeMs);
if (existsSync(out) && statSync(out).mtimeMs >= inputs && !process.argv.includes('--force')) process.exit(0);

rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: [entry.pathname],
  outdir: outdir.pathname,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  minify: true,
  external: EXTERNAL,
  legalComments: 'none',
  logLevel: 'warning',
  // Bundled CommonJS dependencies call `require` (node: built-ins); an ES module has none of its own.
  banner: { js: `${launcher}\nimport { createRequire as __iotisticRequire } from 'node:module'; const require = __iotisticRequire(import.meta.url);` },
});
// What the bundle loads from node_modules at run time: deploy/install.sh copies these and their dependencies.
writeFileSync(new URL('externals.json', outdir), `${JSON.stringify(EXTERNAL)}\n`);
