import type { Database } from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, openSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { isAbsolute, join, sep } from 'node:path';
import type { CloudHttpClient } from '../cloud/http-client.js';
import { describeValue } from '../config/issues.js';
import { JobFailed, JobRejected, type JobContext, type JobHandler } from '../jobs/types.js';
import { errorMessage } from '../util/errors.js';
import type { Json } from '../util/json-diff.js';
import type { LauncherLink } from './child-link.js';
import { copyDatabase } from './db-copy.js';
import { ReleaseStore } from './release-store.js';
import { unpackTarGz } from './tar.js';

export const NOT_LAUNCHED = 'the agent is not running under `iotistic-agent launch`; self-update needs the launcher';

export interface UpdateAgentOptions {
  link: LauncherLink | undefined;
  dataDir: string;
  db: Database;
  /** The cloud's client (packages are downloaded with it); undefined in local mode. */
  http: Pick<CloudHttpClient, 'download'> | undefined;
  version: string;
  schemaVersion: number;
  update: { localPackageDirs: readonly string[]; maxPackageBytes: number };
}

interface Params {
  url?: string;
  path?: string;
  sha256: string;
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

function parseParams(p: Record<string, Json>, localDirs: readonly string[]): Params {
  const { url, path, sha256 } = p;
  if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/i.test(sha256)) throw new JobRejected(`params.sha256: expected the package's SHA-256 as 64 hex digits, got ${describeValue(sha256)}`);
  if ((url === undefined) === (path === undefined)) throw new JobRejected(`params: expected exactly one of url (http: or https:) and path (a local file), got ${url === undefined ? 'neither' : 'both'}`);
  if (url !== undefined) {
    if (typeof url !== 'string' || !/^https?:\/\/[^\s]+$/.test(url)) throw new JobRejected(`params.url: expected an http: or https: URL of the package, got ${describeValue(url)}`);
    return { url, sha256: sha256.toLowerCase() };
  }
  if (typeof path !== 'string' || !isAbsolute(path) || path.includes('\0')) throw new JobRejected(`params.path: expected an absolute path of a package file, got ${describeValue(path)}`);
  // The path comes from the network: it is resolved (links followed) and must land in an allowed directory.
  let real: string;
  try {
    real = realpathSync(path);
  } catch (err) {
    throw new JobRejected(`params.path: ${JSON.stringify(path)} cannot be read (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`);
  }
  const allowed = localDirs.map(realOrSelf).some((d) => real.startsWith(d.endsWith(sep) ? d : d + sep));
  if (!allowed) {
    throw new JobRejected(`params.path: ${JSON.stringify(path)} is not in update.localPackageDirs (allowed: ${localDirs.length > 0 ? localDirs.join(', ') : 'none; set update.localPackageDirs in the device config'})`);
  }
  return { path: real, sha256: sha256.toLowerCase() };
}

/**
 * `update-agent` `{ "url" | "path", "sha256" }`: downloads (or reads) the package, checks its SHA-256,
 * unpacks it beside the running version, takes a copy of the database and asks the launcher to switch
 * to it on trial. The job's end is reported after the switch (or the rollback), by `settleLifecycleJobs`.
 */
export function updateAgentHandler(o: UpdateAgentOptions): JobHandler {
  return async (params, ctx) => {
    if (!o.link) throw new JobRejected(NOT_LAUNCHED);
    const p = parseParams(params, o.update.localPackageDirs);
    const releases = new ReleaseStore(o.dataDir);
    releases.ensure();
    refuseDuringTrial(releases);
    const jobTag = ctx.jobId.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 64);
    const archive = join(releases.dir, `.download-${jobTag}.tgz`);
    const unpack = join(releases.dir, `.unpack-${jobTag}`);
    try {
      const digest = await fetchPackage(p, archive, o, ctx);
      if (digest !== p.sha256) throw new JobFailed(`the package's SHA-256 is ${digest}, expected ${p.sha256}`, { expected: p.sha256, actual: digest });
      rmSync(unpack, { recursive: true, force: true });
      try {
        await unpackTarGz(archive, unpack, o.update.maxPackageBytes);
      } catch (err) {
        throw new JobFailed(`the package cannot be unpacked: ${errorMessage(err)}`, {});
      }
      const version = checkTree(unpack);
      const name = `${version}-${p.sha256.slice(0, 12)}`;
      const state = releases.read();
      if (state.current === name) throw new JobRejected(`version ${version} (${name}) is already running`);
      const release = join(releases.dir, name);
      rmSync(release, { recursive: true, force: true });
      renameSync(unpack, release);
      const dbCopy = join(releases.dir, `agent-before-${jobTag}.db`);
      try {
        copyDatabase(o.db, dbCopy);
      } catch (err) {
        rmSync(release, { recursive: true, force: true });
        rmSync(dbCopy, { force: true });
        throw new JobFailed(`cannot take a copy of the database before the switch (${errorMessage(err)}); nothing was switched`, {});
      }
      ctx.logger.info({ from: o.version, to: version, release: name }, `version ${version} unpacked; switching to it on trial`);
      o.link.requestSwitch({
        kind: 'agent',
        jobId: ctx.jobId,
        from: { release: state.current, version: o.version, schemaVersion: o.schemaVersion },
        to: { release: name, version },
        dbCopy,
      });
    } finally {
      rmSync(archive, { force: true });
      rmSync(unpack, { recursive: true, force: true });
    }
    // The launcher stops this agent now: the job stays RUNNING and is reported after the trial.
    return waitForStop(ctx.signal);
  };
}

/** One trial at a time: a second switch during a probation would leave the first job without its answer. */
export function refuseDuringTrial(releases: ReleaseStore): void {
  const trial = releases.read().trial;
  if (trial) throw new JobRejected(`a ${trial.kind === 'agent' ? `switch to version ${trial.to.version}` : 'config update'} (job ${trial.jobId}) is on trial; try again once it is confirmed or rolled back`);
}

export function waitForStop(signal: AbortSignal): Promise<never> {
  return new Promise((_resolve, reject) => {
    const stop = (): void => reject(signal.reason instanceof Error ? signal.reason : new Error('stopped'));
    if (signal.aborted) stop();
    else signal.addEventListener('abort', stop, { once: true });
  });
}

/** Writes the package to `to` while hashing it; returns the hex digest. */
async function fetchPackage(p: Params, to: string, o: UpdateAgentOptions, ctx: JobContext): Promise<string> {
  const hash = createHash('sha256');
  rmSync(to, { force: true });
  const fd = openSync(to, 'wx', 0o600);
  try {
    const write = (chunk: Buffer): void => {
      hash.update(chunk);
      writeSync(fd, chunk);
    };
    if (p.path !== undefined) {
      const size = statSync(p.path).size;
      if (size > o.update.maxPackageBytes) throw new JobFailed(`${p.path} is ${size} bytes, over update.maxPackageBytes (${o.update.maxPackageBytes})`, {});
      for await (const chunk of createReadStream(p.path)) write(chunk as Buffer);
    } else {
      if (!o.http) throw new JobRejected('params.url: this agent has no cloud client (local mode); use params.path');
      try {
        await o.http.download(p.url as string, { maxBytes: o.update.maxPackageBytes, setting: 'update.maxPackageBytes', signal: ctx.signal, write });
      } catch (err) {
        if (ctx.signal.aborted) throw err;
        throw new JobFailed(`downloading the package failed: ${errorMessage(err)}`, { url: p.url as string });
      }
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** The unpacked tree must be an agent: package.json named iotistic-agent with a version, and its entry point. */
function checkTree(dir: string): string {
  let pkg: { name?: unknown; version?: unknown };
  try {
    pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as typeof pkg;
  } catch (err) {
    throw new JobFailed(`the package has no readable package.json at its top: ${errorMessage(err)}`, {});
  }
  if (pkg.name !== 'iotistic-agent') throw new JobFailed(`the package's package.json names ${describeValue(pkg.name)}, expected "iotistic-agent"`, {});
  if (typeof pkg.version !== 'string' || !/^[0-9A-Za-z.+-]{1,64}$/.test(pkg.version)) throw new JobFailed(`the package's version is ${describeValue(pkg.version)}, expected a version such as "1.2.3"`, {});
  if (!existsSync(join(dir, 'dist/bundle/cli.js'))) throw new JobFailed('the package has no dist/bundle/cli.js', {});
  return pkg.version;
}
