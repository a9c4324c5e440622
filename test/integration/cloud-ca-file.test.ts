import { readFileSync } from 'node:fs';
import { connect, type Server } from 'node:net';
import { createServer as createTlsServer, rootCertificates } from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import { trustWithDefaults } from '../../src/util/tls-trust.js';
import { makeCa, type TestCa } from '../helpers/certs.js';
import { requireBuilt, spawnAgent, waitFor, type AgentProcess } from '../helpers/agent-process.js';
import { tempDirs } from '../helpers/tmp.js';

// `cloud.caFile` adds a CA to the ones the agent trusts; it must not take the others away. The
// devcloud speaks plain HTTP, so a TLS terminator in front of it stands in for an HTTPS cloud.
// "The others": Node's bundled roots and NODE_EXTRA_CA_CERTS; the second is what a test can sign with.
const dirs = tempDirs();
let cloud: DevCloud;
let added: TestCa;
let system: TestCa;
const servers: Server[] = [];
const agents: AgentProcess[] = [];

beforeAll(async () => {
  requireBuilt();
  cloud = await startDevCloud();
  added = makeCa('Added CA');
  system = makeCa('System CA');
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop('SIGKILL');
});
afterAll(async () => {
  for (const s of servers) s.close();
  await cloud.close();
  added.dispose();
  system.dispose();
  dirs.cleanup();
});

/** HTTPS on 127.0.0.1 with the CA's server certificate, forwarding to the devcloud. */
async function httpsFront(ca: TestCa): Promise<string> {
  const port = Number(new URL(cloud.url).port);
  const srv = createTlsServer({ cert: readFileSync(ca.server.certFile), key: readFileSync(ca.server.keyFile) }, (tls) => {
    const up = connect(port, '127.0.0.1');
    tls.pipe(up).pipe(tls);
    tls.on('error', () => up.destroy());
    up.on('error', () => tls.destroy());
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return `https://127.0.0.1:${(srv.address() as { port: number }).port}`;
}

let n = 0;
async function agentOn(apiUrl: string, env: NodeJS.ProcessEnv = {}): Promise<{ agent: AgentProcess; uuid: string }> {
  const dev = { uuid: `ca-${process.pid}-${++n}`, apiKey: `ca-key-${n}-0123456789` };
  cloud.admin.createDevice(dev);
  cloud.admin.setTarget(dev.uuid, { version: 7, apps: {} });
  const agent = await spawnAgent({
    dataDir: dirs.make(),
    env,
    config: { device: dev, cloud: { apiUrl, caFile: added.caFile, requestTimeoutMs: 3_000 }, features: { metrics: false, jobs: false, shadow: false } },
  });
  agents.push(agent);
  return { agent, uuid: dev.uuid };
}

const targetVersion = async (a: AgentProcess): Promise<number | undefined> =>
  ((await a.get('/v2/state')).body as { target: { version: number } | null }).target?.version;

describe('cloud.caFile', () => {
  it('lets the agent reach an HTTPS cloud whose certificate that CA signed', async () => {
    const { agent } = await agentOn(await httpsFront(added));
    expect(await waitFor('the target from the HTTPS cloud', () => targetVersion(agent), 20_000)).toBe(7);
  });

  it('keeps trusting the CAs the agent trusts without it', async () => {
    const { agent } = await agentOn(await httpsFront(system), { NODE_EXTRA_CA_CERTS: system.caFile });
    expect(await waitFor('the target from a cloud signed by another trusted CA', () => targetVersion(agent), 20_000)).toBe(7);
    const records = agent.records().filter((r) => String(r.err ?? r.msg).includes('certificate'));
    expect(records).toEqual([]);
  });

  it('passes the bundled roots, NODE_EXTRA_CA_CERTS and the file, in that order', () => {
    const pem = readFileSync(added.caFile, 'utf8');
    const cas = trustWithDefaults(pem, { NODE_EXTRA_CA_CERTS: system.caFile });
    expect(cas.slice(0, rootCertificates.length)).toEqual([...rootCertificates]);
    expect(cas.slice(rootCertificates.length)).toEqual([readFileSync(system.caFile, 'utf8'), pem]);
    expect(trustWithDefaults(pem, {})).toEqual([...rootCertificates, pem]);
  });
});
