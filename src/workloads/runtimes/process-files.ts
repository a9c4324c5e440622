import { closeSync, constants as fsConstants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, writeFileSync, writeSync, chmodSync, type Stats } from 'node:fs';
import { basename, join } from 'node:path';
import type { Clock } from '../../util/clock.js';
import { AgentError, errorMessage } from '../../util/errors.js';
import type { Logger } from '../../util/logger.js';
import { isSafeName, NAME_EXPECTED } from '../target-schema.js';

/**
 * The process runtime's files under its root (`<dataDir>/services`), laid out so that no name a
 * target can give reaches the agent's own files:
 *
 *   apps/<app>/<service>/   working dir and `output.log*` of each service (names follow NAME_PATTERN)
 *   apps/.layout            marks this layout (a name cannot start with ".")
 *   run/<id>.json           pid files of running processes (the agent's, mode 0600, dir 0700)
 *   .aside/                 whatever the runtime found and did not understand, moved out of its way
 *
 * Layout 1 (earlier versions) kept `<app>/<service>/` beside `run/`, so an app named "run" with a service
 * named "x.json" put a directory among the pid files. `prepare()` moves such a tree into `apps/`.
 * Nothing here throws on a leftover it does not understand: it logs, moves it aside and goes on.
 */

export interface PidRecord {
  id: string;
  pid: number;
  /** Field 22 of /proc/<pid>/stat: with the pid, identifies the process across pid reuse. */
  startTicks: string | null;
  app: string;
  service: string;
  configHash: string;
  agentPid: number;
}

export interface ProcessFilesOptions {
  /** `<dataDir>/services`. */
  root: string;
  clock: Clock;
  logger: Logger;
  /** The user whose files are trusted (pid files, the run dir); the agent's effective uid unless told. */
  uid?: number;
  /** Entries kept in `.aside/` (the oldest are deleted); 20 unless told. */
  keepAside?: number;
}

const LAYOUT_MARKER = '.layout';
const MIGRATING = '.migrating';
const ASIDE = '.aside';
/** A pid file is a few hundred bytes; anything bigger is not one. */
const MAX_PID_FILE_BYTES = 16_384;
const ID_RE = /^[a-z0-9][a-z0-9_.-]*$/;

export class ProcessFiles {
  readonly appsDir: string;
  readonly runDir: string;
  readonly asideDir: string;
  private readonly uid: number;
  private asideSeq = 0;

  constructor(private readonly o: ProcessFilesOptions) {
    this.appsDir = join(o.root, 'apps');
    this.runDir = join(o.root, 'run');
    this.asideDir = join(o.root, ASIDE);
    this.uid = o.uid ?? process.geteuid?.() ?? 0;
  }

  /** Makes the layout ready: the root, layout 1 moved into `apps/`, a run dir the agent can trust. Never throws. */
  prepare(): void {
    try {
      this.ensureTrustedDir(this.o.root, 0o750);
      if (!isFile(lstatOrUndefined(join(this.appsDir, LAYOUT_MARKER)))) this.migrate();
      this.ensureTrustedDir(this.runDir, 0o700);
      this.pruneAside();
    } catch (err) {
      this.o.logger.error({ dir: this.o.root, err: errorMessage(err) }, 'could not prepare the process runtime\'s directory; services may fail to start');
    }
  }

  /** Where a service's working dir and logs live. Throws for a name that could leave its place. */
  serviceDir(app: string, service: string): string {
    for (const [field, name] of [['app', app], ['service', service]] as const) {
      if (!isSafeName(name)) throw new AgentError('UNSAFE_NAME', `${field} ${JSON.stringify(name)}: expected ${NAME_EXPECTED}`);
    }
    return join(this.appsDir, app, service);
  }

  /** Empties the working dirs of `app`'s services but for `keep` (the logs); returns the paths removed. */
  purgeApp(app: string, keep: readonly string[]): string[] {
    const appDir = join(this.appsDir, app);
    if (!isSafeName(app) || !lstatOrUndefined(appDir)?.isDirectory()) return [];
    const removed: string[] = [];
    for (const service of readdirSync(appDir)) {
      const dir = join(appDir, service);
      if (!lstatOrUndefined(dir)?.isDirectory()) continue;
      for (const entry of readdirSync(dir)) {
        if (keep.includes(entry)) continue;
        // rmSync does not follow symlinks: a link the service made to elsewhere goes, its target stays.
        rmSync(join(dir, entry), { recursive: true, force: true });
        removed.push(join(dir, entry));
      }
    }
    return removed;
  }

  /**
   * Creates a service's directory. Whatever stands in the way (a file where a directory belongs, a
   * symlink, a log "file" that is a directory) is moved aside; `files` are the names that must be
   * plain files if they exist (the log and its rotations).
   */
  ensureServiceDir(app: string, service: string, files: readonly string[] = []): string {
    const dir = this.serviceDir(app, service);
    for (const d of [this.appsDir, join(this.appsDir, app), dir]) {
      const st = lstatOrUndefined(d);
      if (st && !st.isDirectory()) this.moveAside(d, `not a directory (${kindOf(st)})`);
      if (!st || !st.isDirectory()) mkdirSync(d, { mode: 0o750 });
    }
    for (const f of files) {
      const st = lstatOrUndefined(join(dir, f));
      if (st && !st.isFile()) this.moveAside(join(dir, f), `not a plain file (${kindOf(st)})`);
    }
    return dir;
  }

  /**
   * The pid files a previous agent left, each checked: a plain file (never followed through a
   * symlink), owned by the agent's user, writable by nobody else, small, and a well-formed record.
   * Anything else is moved aside and logged, never acted on.
   */
  readPidFiles(): { path: string; rec: PidRecord }[] {
    const out: { path: string; rec: PidRecord }[] = [];
    for (const name of this.list(this.runDir)) {
      const path = join(this.runDir, name);
      const rec = this.readPidFile(path, name);
      if (typeof rec === 'string') this.moveAside(path, rec);
      else out.push({ path, rec });
    }
    return out;
  }

  writePidFile(rec: PidRecord): void {
    if (!ID_RE.test(rec.id)) throw new AgentError('UNSAFE_NAME', `process id ${JSON.stringify(rec.id)} cannot name a pid file`);
    this.ensureTrustedDir(this.runDir, 0o700);
    const tmp = join(this.runDir, `.${rec.id}.tmp`);
    rmSync(tmp, { force: true });
    // O_EXCL | O_NOFOLLOW: never write through a link someone planted; the rename replaces a link, not its target.
    const fd = openSync(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
    try {
      writeSync(fd, JSON.stringify(rec));
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.pidFilePath(rec.id));
  }

  removePidFile(id: string): void {
    if (!ID_RE.test(id)) return;
    const path = this.pidFilePath(id);
    const st = lstatOrUndefined(path);
    if (!st) return;
    if (st.isFile() || st.isSymbolicLink()) rmSync(path, { force: true });
    else this.moveAside(path, `not a pid file (${kindOf(st)})`);
  }

  /** Moves `path` into `.aside/` (deletes it if that fails), logging why. Never throws. */
  moveAside(path: string, reason: string): void {
    const dest = join(this.asideDir, `${new Date(this.o.clock.now()).toISOString().replace(/[:.]/g, '-')}-${++this.asideSeq}-${basename(path)}`);
    try {
      mkdirSync(this.asideDir, { recursive: true, mode: 0o700 });
      renameSync(path, dest);
      this.o.logger.warn({ path, movedTo: dest }, `moved aside ${path}: ${reason}`);
    } catch (err) {
      try {
        rmSync(path, { recursive: true, force: true });
        this.o.logger.warn({ path, err: errorMessage(err) }, `deleted ${path} (could not move it aside): ${reason}`);
      } catch (err2) {
        this.o.logger.error({ path, err: errorMessage(err2) }, `could not move aside or delete ${path} (${reason}); ignoring it`);
      }
    }
  }

  private pidFilePath(id: string): string {
    return join(this.runDir, `${id}.json`);
  }

  /** Entries of a directory; none (logged) when it cannot be read. */
  private list(dir: string): string[] {
    try {
      return readdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.o.logger.warn({ dir, err: errorMessage(err) }, 'could not list a directory; ignoring what is in it');
      return [];
    }
  }

  /** The record, or why the file is not trusted or not understood. */
  private readPidFile(path: string, name: string): PidRecord | string {
    if (!name.endsWith('.json') || name.startsWith('.')) return 'not a pid file name';
    const st = lstatOrUndefined(path);
    if (!st) return 'gone while read';
    const distrust = this.distrust(st, 'file');
    if (distrust) return distrust;
    let fd: number;
    try {
      // O_NONBLOCK: a FIFO swapped in after the lstat would otherwise block the start.
      fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
    } catch (err) {
      return `cannot be opened (${errorMessage(err)})`;
    }
    try {
      const fst = fstatSync(fd);
      if (fst.ino !== st.ino || fst.dev !== st.dev) return 'replaced while read';
      if (fst.size > MAX_PID_FILE_BYTES) return `too big for a pid file (${fst.size} bytes)`;
      const buf = Buffer.alloc(Number(fst.size));
      const n = fst.size > 0 ? readSync(fd, buf, 0, buf.length, 0) : 0;
      return parsePidRecord(buf.subarray(0, n).toString('utf8'));
    } catch (err) {
      return `cannot be read (${errorMessage(err)})`;
    } finally {
      closeSync(fd);
    }
  }

  /** Why an entry the agent is about to trust must not be, or undefined when it may be. */
  private distrust(st: Stats, want: 'file' | 'directory'): string | undefined {
    if (st.isSymbolicLink()) return 'a symlink (never followed)';
    if (want === 'file' ? !st.isFile() : !st.isDirectory()) return `not a ${want} (${kindOf(st)})`;
    if (st.uid !== this.uid) return `owned by uid ${st.uid}, not by the agent's user (uid ${this.uid})`;
    if ((st.mode & 0o022) !== 0) return `writable by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')})`;
    return undefined;
  }

  /**
   * A directory the agent owns and only it can write. Its own directory with loose modes is
   * repaired (what is in it is checked entry by entry); a symlink, a non-directory or another
   * user's directory is moved aside and made anew.
   */
  private ensureTrustedDir(dir: string, mode: number): void {
    const st = lstatOrUndefined(dir);
    if (st) {
      const distrust = this.distrust(st, 'directory');
      if (!distrust) return;
      if (st.isDirectory() && st.uid === this.uid) {
        this.o.logger.warn({ dir }, `${dir} was ${distrust}: made ${mode.toString(8).padStart(4, '0')}`);
        chmodSync(dir, mode);
        return;
      }
      this.moveAside(dir, distrust);
    }
    mkdirSync(dir, { recursive: true, mode });
    chmodSync(dir, mode); // the umask may have taken bits; it must not have added any
  }

  /**
   * Layout 1 → 2: every app directory beside `run/` (and any directory inside `run/`, from an app
   * named "run") goes into `.migrating/`, which becomes `apps/` in one rename once complete; the
   * marker inside it says so. A crash halfway leaves `.migrating/`, which the next start completes.
   */
  private migrate(): void {
    const staging = join(this.o.root, MIGRATING);
    const st = lstatOrUndefined(staging);
    if (st && !st.isDirectory()) this.moveAside(staging, 'not a directory');
    mkdirSync(staging, { recursive: true, mode: 0o750 });
    let moved = 0;
    for (const name of this.list(this.o.root)) {
      if (name === MIGRATING || name === ASIDE) continue;
      const path = join(this.o.root, name);
      const entry = lstatOrUndefined(path);
      if (!entry) continue;
      if (name === 'run' && entry.isDirectory()) {
        for (const inner of this.list(path)) {
          const innerPath = join(path, inner);
          if (!lstatOrUndefined(innerPath)?.isDirectory()) continue; // pid files stay; the reaper judges the rest
          mkdirSync(join(staging, 'run'), { recursive: true, mode: 0o750 });
          moved += this.moveInto(innerPath, join(staging, 'run', inner));
        }
      } else if (entry.isDirectory() && isSafeName(name)) moved += this.moveInto(path, join(staging, name));
      else this.moveAside(path, `not part of the process runtime's layout (${kindOf(entry)})`);
    }
    writeFileSync(join(staging, LAYOUT_MARKER), '2\n', { mode: 0o640 });
    renameSync(staging, this.appsDir);
    if (moved > 0) this.o.logger.info({ dir: this.appsDir, moved }, `moved ${moved} service director${moved === 1 ? 'y' : 'ies'} of the previous layout into ${this.appsDir}`);
  }

  private moveInto(from: string, to: string): number {
    if (lstatOrUndefined(to)) {
      this.moveAside(from, `${to} exists already`);
      return 0;
    }
    renameSync(from, to);
    return 1;
  }

  private pruneAside(): void {
    const entries = this.list(this.asideDir).sort();
    const keep = this.o.keepAside ?? 20;
    for (const name of entries.slice(0, Math.max(0, entries.length - keep))) rmSync(join(this.asideDir, name), { recursive: true, force: true });
  }
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

function isFile(st: Stats | undefined): boolean {
  return st?.isFile() ?? false;
}

function kindOf(st: Stats): string {
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isDirectory()) return 'a directory';
  if (st.isFile()) return 'a file';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'a device or other special file';
}

/** A pid record, or what is wrong with the text. */
export function parsePidRecord(text: string): PidRecord | string {
  let rec: unknown;
  try {
    rec = JSON.parse(text);
  } catch {
    return 'not JSON';
  }
  if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) return 'not a pid record (an object)';
  const r = rec as Record<string, unknown>;
  if (!Number.isSafeInteger(r.pid) || (r.pid as number) <= 1) return `pid: expected an integer > 1, got ${JSON.stringify(r.pid)}`;
  if (r.startTicks !== null && (typeof r.startTicks !== 'string' || !/^\d{1,20}$/.test(r.startTicks))) return 'startTicks: expected digits or null';
  for (const k of ['id', 'app', 'service', 'configHash'] as const) if (typeof r[k] !== 'string') return `${k}: expected a string`;
  return { id: r.id as string, pid: r.pid as number, startTicks: r.startTicks as string | null, app: r.app as string, service: r.service as string, configHash: r.configHash as string, agentPid: Number(r.agentPid) };
}
