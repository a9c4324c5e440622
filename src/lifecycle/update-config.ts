import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { formatIssues, loadConfig, redactConfig } from '../config/load.js';
import { LOCAL_ONLY_CONFIG_KEYS, SECRET_KEYS } from '../config/schema.js';
import { describeValue } from '../config/issues.js';
import { JobFailed, JobRejected, type JobHandler } from '../jobs/types.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { LauncherLink } from './child-link.js';
import { mergePatch, patchPaths } from './merge-patch.js';
import { ReleaseStore } from './release-store.js';
import { NOT_LAUNCHED, refuseDuringTrial, waitForStop } from './update-agent.js';

export interface UpdateConfigOptions {
  link: LauncherLink | undefined;
  dataDir: string;
  /** The config file the agent (and the launcher) was given; undefined: config from the environment alone. */
  configFile: string | undefined;
  version: string;
  schemaVersion: number;
  env: NodeJS.ProcessEnv;
  /** update.allowConfigKeys: local-only settings a patch may change all the same. */
  allowKeys: readonly string[];
}

/** Whether `path` (a patched path) touches `key` (a setting): the key itself, inside it, or a parent replaced whole. */
const touches = (path: string, key: string): boolean => path === key || path.startsWith(`${key}.`) || key.startsWith(`${path}.`);

/** What SUCCEEDED says changed: each path with its new value, secrets redacted. */
function changedPaths(patch: Json, paths: string[]): Record<string, Json> {
  const out: Record<string, Json> = {};
  for (const path of paths) {
    let v: Json | undefined = patch;
    for (const k of path.split('.')) v = v !== null && typeof v === 'object' && !Array.isArray(v) ? v[k] : undefined;
    // A secret leaf, or secrets inside a value that is an array of objects (credentials lists).
    out[path] = SECRET_KEYS.has(path.split('.').pop() ?? '') && v !== null && v !== undefined ? '[redacted]' : redactConfig(v ?? null);
  }
  return out;
}

/**
 * `update-config` `{ "patch": { ... } }`: a JSON merge patch (RFC 7396) of the config file, validated
 * with the schema, written atomically over the file (the old one kept to roll back to) and put on
 * trial through the launcher with the same health gate as a new version (docs/lifecycle.md).
 */
export function updateConfigHandler(o: UpdateConfigOptions): JobHandler {
  return async (params, ctx) => {
    if (!o.link) throw new JobRejected(NOT_LAUNCHED);
    const patch = params.patch;
    if (patch === null || typeof patch !== 'object' || Array.isArray(patch) || Object.keys(patch).length === 0) {
      throw new JobRejected(`params.patch: expected a non-empty JSON object (a merge patch of the config file), got ${describeValue(patch)}`);
    }
    if (!o.configFile) throw new JobRejected('the agent was started without a config file (its config comes from the environment alone), so there is no file to patch');
    const paths = patchPaths(patch);
    const local = paths.filter((p) => p === 'update.allowConfigKeys' || touches(p, 'update.allowConfigKeys') || LOCAL_ONLY_CONFIG_KEYS.some((k) => touches(p, k) && !o.allowKeys.includes(k)));
    if (local.length > 0) {
      throw new JobRejected(`params.patch: ${local.join(', ')} ${local.length === 1 ? 'is a local-only setting' : 'are local-only settings'}: a config job may change ${local.length === 1 ? 'it' : 'them'} only when update.allowConfigKeys in the device's own config lists ${local.length === 1 ? 'it' : 'them'}`);
    }
    let oldText: string;
    let old: Json;
    try {
      oldText = readFileSync(o.configFile, 'utf8');
      old = JSON.parse(oldText) as Json;
    } catch (err) {
      throw new JobFailed(`cannot read the config file ${o.configFile}: ${errorMessage(err)}`, {});
    }
    const next = mergePatch(old, patch);
    const releases = new ReleaseStore(o.dataDir);
    releases.ensure();
    refuseDuringTrial(releases);
    const tag = ctx.jobId.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 64);
    const candidate = join(releases.dir, `config-candidate-${tag}.json`);
    const backup = join(releases.dir, `config-before-${tag}.json`);
    try {
      writeFileAtomic(candidate, `${JSON.stringify(next, null, 2)}\n`);
      const checked = loadConfig({ file: candidate, env: o.env });
      if (!checked.ok) throw new JobRejected(`params.patch: the patched config is invalid:\n${formatIssues(checked.issues)}`);
      writeFileAtomic(backup, oldText);
      writeFileAtomic(o.configFile, `${JSON.stringify(next, null, 2)}\n`);
    } finally {
      rmSync(candidate, { force: true });
    }
    const changed = changedPaths(patch, paths);
    ctx.logger.info({ changed }, 'config patched; restarting on it on trial');
    o.link.requestSwitch({
      kind: 'config',
      jobId: ctx.jobId,
      from: { release: releases.read().current, version: o.version, schemaVersion: o.schemaVersion },
      to: { release: releases.read().current, version: o.version },
      configFile: o.configFile,
      configBackup: backup,
      changed,
    });
    return waitForStop(ctx.signal);
  };
}
