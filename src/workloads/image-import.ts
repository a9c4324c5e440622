import type Docker from 'dockerode';
import { createReadStream, createWriteStream, mkdirSync, openSync, readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { AgentError, errorMessage } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Random } from '../util/random.js';
import { BadArchive, ImportMeter, OverLimit, TarManifestScanner, type ArchiveImage } from './image-archive.js';

/**
 * Air-gapped updates: a `docker save` archive (optionally gzip'd) streamed in from the local API is
 * spooled to a temp file in the data dir, counted against a size limit and the free disk, hashed and
 * its tar manifest read as it comes. Only a whole, verified archive is handed to the engine's image
 * load: an engine fed a stream that later fails its sha256 would already have kept its layers. The
 * temp file goes in every case (and at start, after a kill). One import at a time.
 */

export const IMPORT_DIR = 'image-import';

export interface ImageImporterOptions {
  dataDir: string;
  /** `workloads.maxImageImportBytes`. */
  maxBytes: number;
  /** The free-disk watermark kept free under the spooled file (`settings.offline.minFreeDiskBytes`). */
  minFreeBytes: number;
  /** The engine's client (loaded at first use). */
  engine: () => Promise<Docker>;
  logger: Logger;
  random: Random;
  /** Free bytes where the data dir lives; statfs unless told. */
  freeBytes?: (dir: string) => number;
  /** The images are in the engine: the reconciler looks again, the event goes out. */
  imported?: (result: ImportResult) => void;
}

export interface ImportRequest {
  body: Readable;
  /** The sha256 (hex) the archive must have. */
  sha256?: string;
  /** The Content-Length, when the client sent one: refused at once when it cannot fit. */
  declaredBytes?: number;
}

export interface ImportResult {
  loaded: string[];
  bytes: number;
  sha256: string;
}

/** Codes: IMAGE_IMPORT_BUSY 409, _TOO_LARGE 413, _NO_SPACE 507, IMAGE_ARCHIVE_INVALID / _DIGEST_MISMATCH 400, _ENGINE_DOWN 503. */
export class ImportError extends AgentError {}

const SHA256 = /^[0-9a-f]{64}$/;

/** A `?sha256=` / header value: 64 hex digits, optionally prefixed `sha256:` or `sha-256=`; a clear error otherwise. */
export function parseSha256(value: string, field: string): string {
  const hex = value.trim().replace(/^sha-?256[:=]/i, '').toLowerCase();
  if (!SHA256.test(hex)) throw new ImportError('IMAGE_ARCHIVE_INVALID', `${field}: expected 64 hex digits (the archive's sha256), got ${JSON.stringify(value.slice(0, 80))}`);
  return hex;
}

export class ImageImporter {
  private busy = false;
  private readonly dir: string;

  constructor(private readonly o: ImageImporterOptions) {
    this.dir = join(o.dataDir, IMPORT_DIR);
  }

  /** At start: the temp files an import killed mid-way left behind go. */
  cleanStale(): number {
    let removed = 0;
    try {
      for (const f of readdirSync(this.dir)) {
        rmSync(join(this.dir, f), { force: true, recursive: true });
        removed++;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.o.logger.warn({ dir: this.dir, err: errorMessage(err) }, 'could not clean the image import dir');
    }
    if (removed > 0) this.o.logger.info({ dir: this.dir, removed }, 'removed the temp files of an image import that did not finish');
    return removed;
  }

  get running(): boolean {
    return this.busy;
  }

  async import(req: ImportRequest): Promise<ImportResult> {
    if (this.busy) throw new ImportError('IMAGE_IMPORT_BUSY', 'another image import is running: try again once it has finished');
    this.busy = true;
    const file = join(this.dir, `upload-${Math.floor(this.o.random() * 2 ** 48).toString(36)}.tar`);
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      const spooled = await this.spool(req, file).catch((err: unknown) => {
        // The disk filled under the spool (another writer): the same 507 as a refusal up front.
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') throw new OverLimit('space', `the disk filled while the image archive was written to ${this.dir}`);
        throw err;
      });
      if (req.sha256 !== undefined && spooled.sha256 !== req.sha256) {
        throw new ImportError('IMAGE_IMPORT_DIGEST_MISMATCH', `sha256: the archive's is ${spooled.sha256}, expected ${req.sha256}: nothing was loaded (copy the file again)`);
      }
      const loaded = await this.load(file, spooled.images);
      const result = { loaded, bytes: spooled.bytes, sha256: spooled.sha256 };
      this.o.logger.info(result, `imported ${loaded.length} image(s) from an archive: ${loaded.join(', ')}`);
      this.o.imported?.(result);
      return result;
    } finally {
      rmSync(file, { force: true });
      this.busy = false;
    }
  }

  /** The body to the temp file, counted, hashed and its tar read on the way. */
  private async spool(req: ImportRequest, file: string): Promise<{ bytes: number; sha256: string; images: ArchiveImage[] }> {
    const { maxBytes } = this.o;
    const room = this.room();
    const setting = 'workloads.maxImageImportBytes';
    if (req.declaredBytes !== undefined && req.declaredBytes > maxBytes) throw new OverLimit('limit', `the image archive (${req.declaredBytes} bytes) is larger than ${setting} (${maxBytes} bytes)`);
    if (req.declaredBytes !== undefined ? req.declaredBytes > room : room <= 0) throw new OverLimit('space', `the image archive (${req.declaredBytes ?? '?'} bytes) does not fit on the disk: ${Math.max(0, room)} bytes free above the free-disk watermark`);
    const meter = new ImportMeter({ maxBytes, setting, roomBytes: room });
    await spoolTo(req.body, meter, file);
    // Read back for the tar check: a gzip'd archive is unpacked on the way (the engine takes it as it is).
    const scanner = new TarManifestScanner();
    const source = createReadStream(file);
    try {
      await pipeline(meter.gzipped ? source.pipe(createGunzip()) : source, async (chunks: AsyncIterable<Buffer>) => {
        for await (const c of chunks) scanner.write(c);
      });
    } catch (err) {
      if (err instanceof BadArchive) throw err;
      throw new BadArchive(`the body starts as gzip but does not unpack: ${errorMessage(err)}`);
    } finally {
      source.destroy();
    }
    return { bytes: meter.bytes, sha256: meter.digest(), images: scanner.finish() };
  }

  private room(): number {
    try {
      return (this.o.freeBytes ?? statfsFree)(this.o.dataDir) - this.o.minFreeBytes;
    } catch {
      // Unknown: the size limit alone bounds it.
      return Number.MAX_SAFE_INTEGER;
    }
  }

  /** The engine's image load, from the verified file; its error messages (a bad layer) are the 400's. */
  private async load(file: string, images: ArchiveImage[]): Promise<string[]> {
    let docker: Docker;
    let res: Readable;
    try {
      docker = await this.o.engine();
      res = (await docker.loadImage(file, { quiet: true } as object)) as unknown as Readable;
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      if (status !== undefined && status < 500) throw new BadArchive(`the engine refused the archive: ${errorMessage(err)}`);
      throw new ImportError('IMAGE_IMPORT_ENGINE_DOWN', `the container engine cannot load images now: ${errorMessage(err)}`);
    }
    let text = '';
    for await (const c of res) text += String(c);
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      let msg: { error?: string; errorDetail?: { message?: string } };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        continue;
      }
      if (msg.error) throw new BadArchive(`the engine refused the archive: ${msg.errorDetail?.message ?? msg.error}`);
    }
    return images.flatMap((i) => i.repoTags);
  }
}

/**
 * Pipes the body through the meter to the file. Not `pipeline(body, ...)`: that destroys the body on
 * a refusal, and with it the connection the refusal (413, 507) must be answered on.
 */
async function spoolTo(body: Readable, meter: ImportMeter, file: string): Promise<void> {
  // Opened now, not by the stream: an open still pending when a refusal removes the file would make it again.
  const fd = openSync(file, 'wx', 0o600);
  const done = pipeline(meter, createWriteStream('', { fd }));
  const gone = (err?: Error): void => {
    if (!body.readableEnded) meter.destroy(new ImportError('IMAGE_IMPORT_CLIENT_GONE', `the client closed the connection before the archive ended${err ? `: ${err.message}` : ''}`));
  };
  body.once('error', gone);
  body.once('close', gone);
  body.pipe(meter);
  try {
    await done;
  } finally {
    body.unpipe(meter);
    body.off('error', gone);
    body.off('close', gone);
  }
}

function statfsFree(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}
