import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/util/random.js';
import { BadArchive, ImportMeter, TarManifestScanner, parseManifest } from '../../src/workloads/image-archive.js';
import { ImageImporter, parseSha256 } from '../../src/workloads/image-import.js';
import { silentLogger } from '../helpers/logger.js';
import { pax, tar, type TarMember } from '../helpers/tar-writer.js';
import { tempDirs } from '../helpers/tmp.js';

const dirs = tempDirs();
afterAll(() => dirs.cleanup());

const MANIFEST = JSON.stringify([
  { Config: 'blobs/sha256/aa', RepoTags: ['127.0.0.1:5000/app:1', 'app:latest'], Layers: ['blobs/sha256/bb'] },
  { Config: 'blobs/sha256/cc', RepoTags: null, Layers: [] },
]);

const saved = (extra: TarMember[] = []): Buffer =>
  tar([{ name: 'blobs/', type: '5' }, { name: 'blobs/sha256/bb', data: Buffer.alloc(3000, 7) }, ...extra, { name: 'manifest.json', data: MANIFEST }, { name: 'index.json', data: '{}' }]);

/** Feeds `bytes` to a scanner in chunks of `size`. */
function scan(bytes: Buffer, size: number): ReturnType<TarManifestScanner['finish']> {
  const s = new TarManifestScanner();
  for (let i = 0; i < bytes.length; i += size) s.write(bytes.subarray(i, i + size));
  return s.finish();
}

describe('reading a docker save archive as it streams', () => {
  it('finds manifest.json and its references, whatever the chunking', () => {
    for (const size of [1, 7, 511, 512, 513, 4096, 1 << 20]) {
      expect(scan(saved(), size)).toEqual([
        { config: 'blobs/sha256/aa', repoTags: ['127.0.0.1:5000/app:1', 'app:latest'] },
        { config: 'blobs/sha256/cc', repoTags: [] },
      ]);
    }
  });

  it('follows pax and GNU long names (a manifest.json after them is still found; a long name ending so is not it)', () => {
    const long = `${'d/'.repeat(80)}manifest.json`;
    const bytes = saved([
      { name: 'PaxHeader', type: 'x', data: pax({ path: long }) },
      { name: 'short', data: 'not the manifest' },
      { name: '././@LongLink', type: 'L', data: `${long}\0` },
      { name: 'short2', data: 'nor this' },
    ]);
    expect(scan(bytes, 100)[0]?.repoTags).toContain('app:latest');
  });

  it('names what is wrong: not a tar, no manifest, cut short, a bad manifest', () => {
    expect(() => scan(Buffer.from('hello world\n'.repeat(100)), 64)).toThrow(/not a tar archive/);
    expect(() => scan(Buffer.alloc(2048), 64)).toThrow(/empty or not a tar archive/);
    expect(() => scan(tar([{ name: 'etc/hosts', data: 'x' }]), 64)).toThrow(/no manifest.json/);
    const whole = saved();
    expect(() => scan(whole.subarray(0, 2000), 64)).toThrow(/cut short/);
    const damaged = Buffer.from(whole);
    damaged[600] = 0x41;
    damaged[601] = 0x41;
    expect(() => scan(damaged, 64)).toThrow(BadArchive);
    expect(() => parseManifest(Buffer.from('{'))).toThrow('manifest.json is not valid JSON');
    expect(() => parseManifest(Buffer.from('[]'))).toThrow(/non-empty array/);
    expect(() => parseManifest(Buffer.from('[{"Config":"c","Layers":[],"RepoTags":[3]}]'))).toThrow('manifest.json[0].RepoTags: expected an array of image references, got [3]');
    expect(() => parseManifest(Buffer.from('[{"Layers":[]}]'))).toThrow('manifest.json[0].Config');
  });
});

describe('the import meter', () => {
  const run = async (bytes: Buffer, bounds: { maxBytes: number; roomBytes: number }) => {
    const m = new ImportMeter({ ...bounds, setting: 'workloads.maxImageImportBytes' });
    const out: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      m.on('data', (c: Buffer) => out.push(c));
      m.on('end', resolve);
      m.on('error', reject);
      Readable.from([bytes.subarray(0, 10), bytes.subarray(10)]).pipe(m);
    });
    return { m, out: Buffer.concat(out) };
  };

  it('passes the bytes through, counts and hashes them, and sees gzip', async () => {
    const body = gzipSync(Buffer.alloc(5000, 1));
    const { m, out } = await run(body, { maxBytes: 1e6, roomBytes: 1e6 });
    expect(out.equals(body)).toBe(true);
    expect(m.bytes).toBe(body.length);
    expect(m.digest()).toBe(createHash('sha256').update(body).digest('hex'));
    expect(m.gzipped).toBe(true);
  });

  it('fails as soon as the size limit or the free room is passed, naming which', async () => {
    await expect(run(Buffer.alloc(2000), { maxBytes: 1000, roomBytes: 1e6 })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_TOO_LARGE', message: expect.stringContaining('workloads.maxImageImportBytes (1000 bytes)') });
    await expect(run(Buffer.alloc(2000), { maxBytes: 1e6, roomBytes: 1500 })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_NO_SPACE' });
  });
});

describe('the importer (up to the engine)', () => {
  const importer = (dataDir: string, o: { maxBytes?: number; free?: number } = {}) =>
    new ImageImporter({
      dataDir,
      maxBytes: o.maxBytes ?? 1e6,
      minFreeBytes: 1000,
      freeBytes: () => o.free ?? 1e9,
      // Reached only by a verified archive; these tests stop before.
      engine: () => Promise.reject(Object.assign(new Error('connect ENOENT /nowhere'), { code: 'ENOENT' })),
      logger: silentLogger(),
      random: seededRandom(1),
    });

  it('checks the sha256 before the engine sees a byte, and leaves no temp file', async () => {
    const dir = dirs.make();
    const body = saved();
    await expect(importer(dir).import({ body: Readable.from([body]), sha256: 'f'.repeat(64) })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_DIGEST_MISMATCH' });
    expect(readdirSync(join(dir, 'image-import'))).toEqual([]);
    // The right one gets as far as the engine (here: none).
    const sha256 = createHash('sha256').update(body).digest('hex');
    await expect(importer(dir).import({ body: Readable.from([body]), sha256 })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_ENGINE_DOWN' });
    await expect(importer(dir).import({ body: Readable.from([gzipSync(body)]) })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_ENGINE_DOWN' });
    expect(readdirSync(join(dir, 'image-import'))).toEqual([]);
  });

  it('refuses by the declared length at once, and by the disk\'s room', async () => {
    const dir = dirs.make();
    await expect(importer(dir, { maxBytes: 2_000_000 }).import({ body: Readable.from([]), declaredBytes: 3_000_000 })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_TOO_LARGE' });
    await expect(importer(dir, { free: 5000 }).import({ body: Readable.from([]), declaredBytes: 4500 })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_NO_SPACE', message: expect.stringContaining('4000 bytes free') });
    await expect(importer(dir, { free: 5000 }).import({ body: Readable.from([Buffer.alloc(6000)]) })).rejects.toMatchObject({ code: 'IMAGE_IMPORT_NO_SPACE' });
    await expect(importer(dir).import({ body: Readable.from([gzipSync(Buffer.from('not a tar'.repeat(100)))]) })).rejects.toMatchObject({ code: 'IMAGE_ARCHIVE_INVALID' });
    await expect(importer(dir).import({ body: Readable.from([Buffer.from([0x1f, 0x8b, 1, 2, 3])]) })).rejects.toThrow(/starts as gzip but does not unpack/);
    expect(readdirSync(join(dir, 'image-import'))).toEqual([]);
  });

  it('removes what a killed import left at start', () => {
    const dir = dirs.make();
    mkdirSync(join(dir, 'image-import'));
    writeFileSync(join(dir, 'image-import', 'upload-x.tar'), 'partial');
    expect(importer(dir).cleanStale()).toBe(1);
    expect(existsSync(join(dir, 'image-import', 'upload-x.tar'))).toBe(false);
  });

  it('takes a sha256 as hex, sha256:hex or sha-256=hex, and names a bad one', () => {
    const hex = 'ab'.repeat(32);
    expect(parseSha256(`sha256:${hex.toUpperCase()}`, 'sha256')).toBe(hex);
    expect(parseSha256(`sha-256=${hex}`, 'sha256')).toBe(hex);
    expect(() => parseSha256('abc', 'sha256')).toThrow('sha256: expected 64 hex digits (the archive\'s sha256), got "abc"');
  });
});
