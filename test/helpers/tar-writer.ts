import { gzipSync } from 'node:zlib';

/** A member of a hand-made tar archive: tests build hostile ones the system tar would not write. */
export interface TarMember {
  name: string;
  /** '0' file (default), '5' directory, '1' hard link, '2' symlink, '3' char device, 'x' pax header... */
  type?: string;
  data?: string | Buffer;
  mode?: number;
  /** Overrides the size field (a lie about the data's length). */
  size?: number;
  linkname?: string;
}

function header(m: TarMember, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(m.name.slice(0, 100), 0, 'utf8');
  h.write(`${(m.mode ?? 0o644).toString(8).padStart(7, '0')}\0`, 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write('00000000000\0', 136, 'latin1');
  h.write('        ', 148, 'latin1');
  h.write(m.type ?? '0', 156, 'latin1');
  if (m.linkname) h.write(m.linkname, 157, 'utf8');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** An uncompressed tar of `members` (with its two zero blocks). */
export function tar(members: TarMember[]): Buffer {
  const parts: Buffer[] = [];
  for (const m of members) {
    const data = Buffer.isBuffer(m.data) ? m.data : Buffer.from(m.data ?? '');
    parts.push(header(m, m.size ?? data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

export const tarGz = (members: TarMember[]): Buffer => gzipSync(tar(members));

/** A pax extended header record set: "<len> key=value\n" each. */
export function pax(records: Record<string, string>): string {
  return Object.entries(records)
    .map(([k, v]) => {
      const body = ` ${k}=${v}\n`;
      let len = body.length + 1;
      while (String(len).length + body.length !== len) len = String(len).length + body.length;
      return `${len}${body}`;
    })
    .join('');
}
