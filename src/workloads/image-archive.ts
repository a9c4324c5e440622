import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { AgentError } from '../util/errors.js';

/**
 * What an image import checks of a `docker save` archive before the engine sees it: its size and
 * sha256 while it streams in (ImportMeter), and its tar headers and `manifest.json` (TarManifestScanner),
 * read as it streams, keeping nothing but the manifest (bounded) in memory.
 */

const BLOCK = 512;
/** A manifest larger than this is not one `docker save` writes (a few hundred bytes per image). */
const MAX_MANIFEST_BYTES = 1_048_576;

export const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);

/** An archive refused for what it holds (400). */
export class BadArchive extends AgentError {
  constructor(message: string) {
    super('IMAGE_ARCHIVE_INVALID', message);
  }
}

/** The body passed a bound while streaming: `limit` (the size limit) or `space` (the free-disk room). */
export class OverLimit extends AgentError {
  constructor(
    readonly bound: 'limit' | 'space',
    message: string,
  ) {
    super(bound === 'limit' ? 'IMAGE_IMPORT_TOO_LARGE' : 'IMAGE_IMPORT_NO_SPACE', message);
  }
}

/** Counts and hashes what passes, and fails the stream as soon as it passes a bound. */
export class ImportMeter extends Transform {
  bytes = 0;
  private readonly hash: Hash = createHash('sha256');
  private first: Buffer = Buffer.alloc(0);

  constructor(private readonly bounds: { maxBytes: number; setting: string; roomBytes: number }) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.first.length < 2) this.first = Buffer.concat([this.first, chunk.subarray(0, 2)]).subarray(0, 2);
    if (this.bytes > this.bounds.maxBytes) return done(new OverLimit('limit', `the image archive is larger than ${this.bounds.setting} (${this.bounds.maxBytes} bytes)`));
    if (this.bytes > this.bounds.roomBytes) return done(new OverLimit('space', `the image archive does not fit on the disk: ${this.bounds.roomBytes} bytes free above the free-disk watermark`));
    this.hash.update(chunk);
    done(null, chunk);
  }

  /** Hex sha256 of everything that passed (call once, after the end). */
  digest(): string {
    return this.hash.digest('hex');
  }

  /** Whether the body starts with gzip's magic bytes. */
  get gzipped(): boolean {
    return this.first.equals(GZIP_MAGIC);
  }
}

/** One image in the manifest: the references it is tagged with (none for an untagged image). */
export interface ArchiveImage {
  config: string;
  repoTags: string[];
}

/** Reads a tar stream's headers (ustar, pax, GNU long names) and keeps `manifest.json`'s bytes. */
export class TarManifestScanner {
  private pending = Buffer.alloc(0);
  /** Bytes of the current member's data (plus padding) still to skip or keep. */
  private skip = 0;
  private keep: Buffer[] | undefined;
  private keepLeft = 0;
  private longName: string | undefined;
  private zeroBlocks = 0;
  private members = 0;
  private manifest: Buffer | undefined;
  private ended = false;

  write(chunk: Buffer): void {
    if (this.ended) return;
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, buf.length);
        if (this.keep && this.keepLeft > 0) {
          const k = Math.min(this.keepLeft, n);
          this.keep.push(buf.subarray(0, k));
          this.keepLeft -= k;
          if (this.keepLeft === 0) this.finishKept();
        }
        this.skip -= n;
        buf = buf.subarray(n);
        if (this.skip > 0) break;
      }
      if (buf.length < BLOCK) break;
      this.header(buf.subarray(0, BLOCK));
      buf = buf.subarray(BLOCK);
      if (this.ended) break;
    }
    this.pending = Buffer.from(buf);
  }

  private kept: { kind: 'manifest' | 'longname' | 'pax' } | undefined;

  private header(h: Buffer): void {
    if (h.every((b) => b === 0)) {
      if (++this.zeroBlocks === 2) this.ended = true;
      return;
    }
    this.zeroBlocks = 0;
    if (this.members === 0 && h.toString('latin1', 257, 262) !== 'ustar') throw new BadArchive('the body is not a tar archive (no ustar header): expected the output of `docker save` (optionally gzip\'d)');
    if (!checksumOk(h)) throw new BadArchive(`the tar header of member ${this.members + 1} has a bad checksum: the archive is damaged or cut`);
    this.members++;
    const size = sizeOf(h);
    const type = String.fromCharCode(h[156] ?? 0x30);
    const prefix = cString(h, 345, 155);
    const name = this.longName ?? (prefix ? `${prefix}/${cString(h, 0, 100)}` : cString(h, 0, 100));
    if (type !== 'L' && type !== 'x') this.longName = undefined;
    this.skip = Math.ceil(size / BLOCK) * BLOCK;
    this.keep = undefined;
    const kind = type === 'L' ? 'longname' : type === 'x' ? 'pax' : (type === '0' || type === '\0') && name.replace(/^\.\//, '') === 'manifest.json' ? 'manifest' : undefined;
    if (!kind || size === 0) return;
    if (size > MAX_MANIFEST_BYTES) {
      if (kind === 'manifest') throw new BadArchive(`manifest.json is ${size} bytes: larger than ${MAX_MANIFEST_BYTES}, not one \`docker save\` writes`);
      return;
    }
    this.keep = [];
    this.keepLeft = size;
    this.kept = { kind };
  }

  private finishKept(): void {
    const data = Buffer.concat(this.keep ?? []);
    this.keep = undefined;
    if (this.kept?.kind === 'manifest') this.manifest = data;
    else if (this.kept?.kind === 'longname') this.longName = cString(data, 0, data.length);
    else if (this.kept?.kind === 'pax') {
      const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString('utf8'));
      if (path?.[1]) this.longName = path[1];
    }
  }

  /** The images the archive holds; a BadArchive when it is not a whole `docker save` archive. */
  finish(): ArchiveImage[] {
    if (this.members === 0) throw new BadArchive('the body is empty or not a tar archive: expected the output of `docker save` (optionally gzip\'d)');
    if (!this.ended && (this.skip > 0 || this.pending.length > 0)) throw new BadArchive('the tar archive is cut short (its last member is incomplete): copy the file again');
    if (!this.manifest) throw new BadArchive('the tar archive has no manifest.json: expected the output of `docker save`, not another tar');
    return parseManifest(this.manifest);
  }
}

/** `manifest.json`: `[{ Config, RepoTags, Layers }]`; each problem named. */
export function parseManifest(bytes: Buffer): ArchiveImage[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new BadArchive('manifest.json is not valid JSON');
  }
  if (!Array.isArray(doc) || doc.length === 0) throw new BadArchive('manifest.json: expected a non-empty array of images ({ Config, RepoTags, Layers })');
  return doc.map((entry: unknown, i) => {
    const e = entry as { Config?: unknown; RepoTags?: unknown; Layers?: unknown } | null;
    if (e === null || typeof e !== 'object') throw new BadArchive(`manifest.json[${i}]: expected an object, got ${JSON.stringify(entry)}`);
    if (typeof e.Config !== 'string' || e.Config === '') throw new BadArchive(`manifest.json[${i}].Config: expected the image config's file name, got ${JSON.stringify(e.Config)}`);
    if (!Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string')) throw new BadArchive(`manifest.json[${i}].Layers: expected an array of layer file names`);
    const tags = e.RepoTags ?? [];
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string' && t !== '')) throw new BadArchive(`manifest.json[${i}].RepoTags: expected an array of image references, got ${JSON.stringify(e.RepoTags)}`);
    return { config: e.Config, repoTags: tags as string[] };
  });
}

function cString(b: Buffer, at: number, len: number): string {
  const s = b.subarray(at, at + len);
  const end = s.indexOf(0);
  return s.toString('utf8', 0, end === -1 ? s.length : end);
}

/** The size field: octal text, or base-256 (high bit set) for members over 8 GiB. */
function sizeOf(h: Buffer): number {
  const f = h.subarray(124, 136);
  if ((f[0] ?? 0) & 0x80) {
    let n = 0;
    for (let i = 1; i < f.length; i++) n = n * 256 + (f[i] ?? 0);
    return n;
  }
  const n = parseInt(cString(f, 0, 12).trim() || '0', 8);
  if (!Number.isSafeInteger(n) || n < 0) throw new BadArchive(`a tar header's size field is not a number: ${JSON.stringify(cString(f, 0, 12))}`);
  return n;
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] ?? 0);
  const stored = parseInt(cString(h, 148, 8).trim(), 8);
  return stored === sum;
}
