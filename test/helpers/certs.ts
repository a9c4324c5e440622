import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Certificates for TLS tests, made with the `openssl` CLI in a temp dir: a CA, a server
 * certificate for 127.0.0.1 / localhost and client certificates, all signed by that CA. EC P-256
 * keys, because RSA key generation is slow on a small machine. Valid for two days.
 */

export interface CertPair {
  certFile: string;
  keyFile: string;
}

export interface TestCa {
  dir: string;
  caFile: string;
  caKeyFile: string;
  /** A server certificate with CN 127.0.0.1 and SAN IP:127.0.0.1, DNS:localhost. */
  server: CertPair;
  /** A client certificate with CN `cn` (extendedKeyUsage clientAuth). */
  client(cn: string): CertPair;
  dispose(): void;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: Buffer };
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr?.toString('utf8') ?? String(err)}`);
  }
}

const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A new CA in its own temp dir; `name` goes into its CN, so two CAs are told apart in errors. */
export function makeCa(name = 'Iotistic Test CA'): TestCa {
  const dir = mkdtempSync(join(tmpdir(), 'certs-'));
  const caFile = join(dir, 'ca.crt');
  const caKeyFile = join(dir, 'ca.key');
  openssl(
    ['req', '-x509', ...KEY, '-keyout', caKeyFile, '-out', caFile, '-days', '2', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  let serial = 1;
  const issue = (base: string, cn: string, extensions: string): CertPair => {
    const keyFile = join(dir, `${base}.key`);
    const csr = join(dir, `${base}.csr`);
    const certFile = join(dir, `${base}.crt`);
    const ext = join(dir, `${base}.ext`);
    writeFileSync(ext, extensions);
    openssl(['req', '-new', ...KEY, '-keyout', keyFile, '-out', csr, '-subj', `/CN=${cn}`], dir);
    openssl(['x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKeyFile, '-set_serial', String(serial++), '-days', '2', '-out', certFile, '-extfile', ext], dir);
    return { certFile, keyFile };
  };
  const server = issue(
    'server',
    '127.0.0.1',
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n',
  );
  let clients = 0;
  return {
    dir,
    caFile,
    caKeyFile,
    server,
    client: (cn) => issue(`client-${++clients}`, cn, 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'),
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * A server certificate for 127.0.0.1 signed by `ca` that is valid only from 2030 on: what a device
 * whose clock reads 1970 (or any time before 2030) sees as "not yet valid". `openssl ca`, as
 * `x509 -req` of OpenSSL 3.0 cannot set the start date.
 */
export function notYetValidServer(ca: TestCa): CertPair {
  const dir = ca.dir;
  const keyFile = join(dir, 'future.key');
  const csr = join(dir, 'future.csr');
  const certFile = join(dir, 'future.crt');
  const conf = join(dir, 'future-ca.cnf');
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '1000\n');
  writeFileSync(
    conf,
    [
      '[ca]', 'default_ca = d', '[d]', `dir = ${dir}`, 'database = $dir/index.txt', 'new_certs_dir = $dir', 'serial = $dir/serial',
      'default_md = sha256', 'policy = any', 'unique_subject = no', '[any]', 'commonName = supplied',
      '[ext]', 'basicConstraints = CA:FALSE', 'keyUsage = critical,digitalSignature', 'extendedKeyUsage = serverAuth', 'subjectAltName = IP:127.0.0.1,DNS:localhost', '',
    ].join('\n'),
  );
  openssl(['req', '-new', ...KEY, '-keyout', keyFile, '-out', csr, '-subj', '/CN=127.0.0.1'], dir);
  openssl(['ca', '-batch', '-config', conf, '-cert', ca.caFile, '-keyfile', ca.caKeyFile, '-in', csr, '-out', certFile, '-startdate', '20300101000000Z', '-enddate', '20310101000000Z', '-extensions', 'ext', '-notext'], dir);
  return { certFile, keyFile };
}
