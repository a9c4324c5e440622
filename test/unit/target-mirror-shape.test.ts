import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readTargetMirror, writeTargetMirror, type MirroredTarget } from '../../src/store/target-mirror.js';
import { captureLogger } from '../helpers/logger.js';
import { tempDirs } from '../helpers/tmp.js';

/** The copy of the target is taken back only in the shape it was written; anything else says why. */

const dirs = tempDirs();
afterEach(() => dirs.cleanup());
const GOOD: MirroredTarget = { etag: '"t9"', version: 9, document: { version: 9, apps: {} }, source: 'cloud', receivedAt: 1_700 };
const WHY = 'the copy does not have the expected fields (format 1: etag, version, document, source, receivedAt)';

function readBack(value: unknown): ReturnType<typeof readTargetMirror> {
  const path = join(dirs.make(), 'target.json');
  writeFileSync(path, JSON.stringify(value));
  return readTargetMirror(path);
}

describe('reading the copy of the target', () => {
  const accepted: [string, MirroredTarget][] = [
    ['from the cloud', GOOD],
    ['made locally, no etag, no version', { ...GOOD, source: 'local', etag: null, version: null }],
  ];
  for (const [what, target] of accepted) {
    it(`takes back a copy ${what}`, () => {
      expect(readBack({ format: 1, ...target })).toEqual({ ok: true, target });
    });
  }

  const { document: _document, ...noDocument } = GOOD;
  const refused: [string, unknown][] = [
    ['null', null],
    ['a string', 'target'],
    ['another format', { ...GOOD, format: 2 }],
    ['no document', { format: 1, ...noDocument }],
    ['an unknown source', { format: 1, ...GOOD, source: 'usb' }],
    ['an etag that is a number', { format: 1, ...GOOD, etag: 9 }],
    ['a fractional version', { format: 1, ...GOOD, version: 9.5 }],
    ['a version that is a string', { format: 1, ...GOOD, version: '9' }],
    ['no receivedAt', { format: 1, ...GOOD, receivedAt: null }],
  ];
  for (const [what, value] of refused) {
    it(`refuses ${what}, saying which fields it expects`, () => {
      expect(readBack(value)).toEqual({ ok: false, why: WHY });
    });
  }
});

describe('writing the copy of the target', () => {
  it('a copy that cannot be written is logged with its file and why, never thrown', () => {
    const path = join(dirs.make(), 'no-such-dir', 'target.json');
    const log = captureLogger();
    expect(() => writeTargetMirror(path, GOOD, log.logger)).not.toThrow();
    const line = log.records().find((r) => r.level === 'warn' || r.level === 40)!;
    expect(line).toMatchObject({ file: path, err: expect.stringMatching(/ENOENT/) as unknown });
    expect(String(line.msg)).toMatch(new RegExp(`^could not write the copy of the target to ${path}: .*ENOENT`));
    expect(() => writeTargetMirror(path, GOOD, undefined)).not.toThrow();
  });
});
