import type { WalSyncFs } from '../../src/store/wal-sync.js';

/**
 * The file calls of a WalSync, driven by hand: every fdatasync runs until the test ends it
 * (`endSync`, oldest first), so a test decides when a commit becomes durable. `missing` names files
 * that do not exist ('wal', 'db'); `failOpen` one whose open fails with EACCES.
 */

type Cb = (err: NodeJS.ErrnoException | null) => void;

export function handFs(o: { missing?: string[]; failOpen?: string } = {}) {
  // `open wal`: opened read-only (the flags are shown when they are anything else).
  const log: string[] = [];
  const syncs: { fd: number; end: (err?: NodeJS.ErrnoException) => void }[] = [];
  const open = new Map<number, string>();
  let nextFd = 10;
  const fs: WalSyncFs = {
    open(path, flags, cb) {
      const name = path.endsWith('-wal') ? 'wal' : 'db';
      log.push(`open ${name}${flags === 'r' ? '' : ` ${flags}`}`);
      if (o.missing?.includes(name)) return cb(Object.assign(new Error(`ENOENT: no such file, open '${path}'`), { code: 'ENOENT', path }), -1);
      if (o.failOpen === name) return cb(Object.assign(new Error(`EACCES: permission denied, open '${path}'`), { code: 'EACCES', path }), -1);
      const fd = nextFd++;
      open.set(fd, name);
      cb(null, fd);
    },
    fdatasync(fd, cb: Cb) {
      log.push(`sync ${open.get(fd)}`);
      syncs.push({ fd, end: (err) => cb(err ?? null) });
    },
    close(fd, cb: Cb) {
      log.push(`close ${open.get(fd)}`);
      open.delete(fd);
      cb(null);
    },
  };
  /** Ends the oldest fdatasync still running. */
  const endSync = (err?: NodeJS.ErrnoException): void => {
    const s = syncs.shift();
    if (!s) throw new Error('no fdatasync is running');
    s.end(err);
  };
  return { fs, log, endSync, running: () => syncs.length, openFds: () => [...open.values()] };
}

