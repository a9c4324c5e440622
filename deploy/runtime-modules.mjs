// Prints the node_modules directories (relative to the source tree, one a line) that the bundled agent
// loads at run time: the packages named in dist/bundle/externals.json (written by scripts/bundle.ts)
// and everything they depend on, resolved the way Node resolves them. Used by deploy/install.sh.
// Usage: node deploy/runtime-modules.mjs SOURCE_DIR
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

const root = process.argv[2];
if (!root) throw new Error('usage: runtime-modules.mjs SOURCE_DIR');
const manifest = join(root, 'dist/bundle/externals.json');
if (!existsSync(manifest)) throw new Error(`${manifest} is missing: run "node dist/scripts/bundle.js --force" (or npm run build) first`);

/** The directory Node would load `name` from when required from `from`, or undefined. */
function find(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === root || dirname(dir) === dir) return undefined;
  }
}

const found = new Set();
/** Adds `name`, required from `from`, and its own dependencies; a missing optional one is skipped. */
function add(name, from, optional, by) {
  const dir = find(name, from);
  if (dir === undefined) {
    if (optional) return;
    throw new Error(`${name} (needed by ${by}) is not installed under ${root}: run npm ci there first`);
  }
  if (found.has(dir)) return;
  found.add(dir);
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(pkg.dependencies ?? {})) add(dep, dir, false, pkg.name);
  for (const dep of Object.keys(pkg.optionalDependencies ?? {})) add(dep, dir, true, pkg.name);
}

for (const name of JSON.parse(readFileSync(manifest, 'utf8'))) add(name, root, false, 'the bundle');
// A package inside another's own node_modules is copied with it.
const dirs = [...found].map((d) => relative(root, d)).sort();
for (const dir of dirs) if (!dirs.some((d) => dir.startsWith(`${d}/`))) console.log(dir);
