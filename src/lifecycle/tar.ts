import { closeSync, createReadStream, createWriteStream, fstatSync, mkdirSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { AgentError } from '../util/errors.js';

/**
 * A small reader of gzip'd tar archives for agent packages. Nothing from the network becomes a path
 * unchecked: only regular files and directories (ustar, pax and GNU long-name headers) are taken;
 * absolute names, "..", links, devices and FIFOs are refused, and so is an archive whose tar stream is
 * larger than `maxBytes` (it is unpacked to a file first, counted as it grows, never held in memory).
 * Every member must sit under one top directory, which is stripped.
 */
export class UnsafePackage extends AgentError {
  constructor(message: string) {
    super('PACKAGE_UNSAFE', message);
    this.name = 'UnsafePackage';
  }
}

const BLOCK = 512;

/** Unpacks `archive` (.tar.gz) into `dest` (created, must not exist). Returns the number of files written. */
export async function unpackTarGz(archive: string, dest: string, maxBytes: number): Promise<{ files: number; bytes: number }> {
  const tar = `${dest}.tar`;
  try {
    await gunzipBounded(archive, tar, maxBytes);
    return extractTar(tar, dest);
  } finally {
    rmSync(tar, { force: true });
  }
}

async function gunzipBounded(from: string, to: string, maxBytes: number): Promise<void> {
  let seen = 0;
  const gunzip = createGunzip();
  gunzip.on('data', (c: Buffer) => {
    seen += c.length;
    if (seen > maxBytes) gunzip.destroy(new UnsafePackage(`the package unpacks to more than update.maxPackageBytes (${maxBytes} bytes)`));
  });
  try {
    await pipeline(createReadStream(from), gunzip, createWriteStream(to, { mode: 0o600, flags: 'wx' }));
  } catch (err) {
    if (err instanceof UnsafePackage) throw err;
    throw new UnsafePackage(`the package is not a gzip file: ${(err as Error).message}`);
  }
}

interface Entry {
  name: string;
  type: string;
  size: number;
  mode: number;
}

/** Reads the members of an uncompressed tar file one header at a time and writes them under `dest`. */
export function extractTar(tarFile: string, dest: string): { files: number; bytes: number } {
  const fd = openSync(tarFile, 'r');
  try {
    const total = fstatSync(fd).size;
    mkdirSync(dest, { mode: 0o700 });
    let top: string | undefined;
    let files = 0;
    let bytes = 0;
    let pending: { path?: string; size?: number } = {};
    for (let at = 0; at + BLOCK <= total; ) {
      const header = readAt(fd, at, BLOCK);
      if (header.every((b) => b === 0)) break; // end of archive
      const e = parseHeader(header, at);
      const dataAt = at + BLOCK;
      if (dataAt + e.size > total) throw new UnsafePackage(`member "${e.name}" is cut off: the archive ends inside it`);
      at = dataAt + Math.ceil(e.size / BLOCK) * BLOCK;
      if (e.type === 'x' || e.type === 'L') {
        if (e.size > 1_048_576) throw new UnsafePackage(`an extended header of ${e.size} bytes is too large`);
        const data = readAt(fd, dataAt, e.size);
        pending = e.type === 'x' ? { ...pending, ...parsePax(data) } : { ...pending, path: cString(data) };
        continue;
      }
      if (e.type === 'g') continue; // global pax header: comments and defaults, nothing that names a file
      const name = pending.path ?? e.name;
      if (pending.size !== undefined && pending.size !== e.size) throw new UnsafePackage(`member "${name}": its pax size ${pending.size} and its header size ${e.size} differ`);
      const size = e.size;
      pending = {};
      if (e.type !== '0' && e.type !== '\0' && e.type !== '5' && e.type !== '7') {
        throw new UnsafePackage(`member "${name}" is a ${TYPE_NAMES[e.type] ?? `type ${JSON.stringify(e.type)} entry`}; a package holds only regular files and directories`);
      }
      const parts = safeParts(name);
      top ??= parts[0];
      if (parts[0] !== top) throw new UnsafePackage(`member "${name}" is outside the package's top directory "${String(top)}"`);
      const rel = parts.slice(1);
      if (e.type === '5') {
        if (rel.length > 0) mkdirSync(join(dest, ...rel), { recursive: true, mode: 0o700 });
        continue;
      }
      if (rel.length === 0) throw new UnsafePackage(`member "${name}" is a file where the package's top directory should be`);
      mkdirSync(join(dest, ...rel.slice(0, -1)), { recursive: true, mode: 0o700 });
      writeMember(fd, dataAt, size, join(dest, ...rel), e.mode & 0o100 ? 0o700 : 0o600);
      files++;
      bytes += size;
    }
    return { files, bytes };
  } finally {
    closeSync(fd);
  }
}

const TYPE_NAMES: Record<string, string> = { '1': 'hard link', '2': 'symbolic link', '3': 'character device', '4': 'block device', '6': 'FIFO' };

/** The path's parts, or an error: no absolute path, no "..", no NUL, no empty name. */
export function safeParts(name: string): string[] {
  if (name.includes('\0')) throw new UnsafePackage(`member name ${JSON.stringify(name)} holds a NUL byte`);
  if (name.startsWith('/')) throw new UnsafePackage(`member "${name}" has an absolute path`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new UnsafePackage(`member "${name}" climbs out of the package with ".."`);
  if (parts.length === 0) throw new UnsafePackage(`a member has an empty name`);
  return parts;
}

function writeMember(fd: number, at: number, size: number, path: string, mode: number): void {
  // 'wx': a second member of the same name never writes through what the first one made.
  const out = openSync(path, 'wx', mode);
  try {
    const chunk = 1_048_576;
    for (let done = 0; done < size; ) {
      const buf = readAt(fd, at + done, Math.min(chunk, size - done));
      writeSync(out, buf);
      done += buf.length;
    }
  } finally {
    closeSync(out);
  }
}

function readAt(fd: number, at: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const n = readSync(fd, buf, got, length - got, at + got);
    if (n === 0) throw new UnsafePackage('the archive ends early');
    got += n;
  }
  return buf;
}

function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end === -1 ? buf.length : end).toString('utf8');
}

function octal(buf: Buffer, what: string, at: number): number {
  // GNU base-256 (high bit set) is only used for sizes past 8 GiB: far over any package's limit.
  if ((buf[0] ?? 0) & 0x80) throw new UnsafePackage(`the header at byte ${at} has a ${what} too large for a package`);
  const text = cString(buf).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new UnsafePackage(`the header at byte ${at} has a ${what} that is not an octal number: ${JSON.stringify(text)}`);
  return parseInt(text, 8);
}

function parseHeader(h: Buffer, at: number): Entry {
  const sum = octal(h.subarray(148, 156), 'checksum', at);
  let computed = 0;
  for (let i = 0; i < BLOCK; i++) computed += i >= 148 && i < 156 ? 32 : (h[i] ?? 0);
  if (sum !== computed) throw new UnsafePackage(`the header at byte ${at} has a bad checksum: the file is not a tar archive or is damaged`);
  const name = cString(h.subarray(0, 100));
  const ustar = h.subarray(257, 262).toString('latin1') === 'ustar';
  const prefix = ustar ? cString(h.subarray(345, 500)) : '';
  return {
    name: prefix ? `${prefix}/${name}` : name,
    type: String.fromCharCode(h[156] ?? 0),
    size: octal(h.subarray(124, 136), 'size', at),
    mode: octal(h.subarray(100, 108), 'mode', at),
  };
}

/** Pax records: "<length> <key>=<value>\n"; only path and size matter here. */
function parsePax(data: Buffer): { path?: string; size?: number } {
  const out: { path?: string; size?: number } = {};
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const len = Number(data.subarray(at, space).toString('latin1'));
    if (space === -1 || !Number.isInteger(len) || len <= 0 || at + len > data.length) throw new UnsafePackage('a pax extended header is malformed');
    const record = data.subarray(space + 1, at + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    if (key === 'path') out.path = value;
    if (key === 'size') {
      if (!/^\d+$/.test(value)) throw new UnsafePackage(`a pax size is not a number: ${JSON.stringify(value)}`);
      out.size = Number(value);
    }
    if (key === 'linkpath') throw new UnsafePackage('a pax header names a link target; a package holds no links');
    at += len;
  }
  return out;
}
