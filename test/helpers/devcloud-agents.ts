import { afterAll, afterEach, beforeAll } from 'vitest';
import { startDevCloud, type DevCloud } from '../../devcloud/server.js';
import type { StoredMessage } from '../../devcloud/store.js';
import { requireBuilt, spawnAgent, type AgentProcess, type SpawnAgentOptions } from './agent-process.js';
import { tempDirs } from './tmp.js';

/**
 * For a test file of built agents against one in-process devcloud: the devcloud starts before the
 * file's tests (after checking the agent is built); after each test every agent started through
 * `spawn` (or pushed on `agents`) is killed and the devcloud's faults are cleared; after the file the
 * devcloud stops and the temp dirs go.
 */
export function agentsWithDevCloud() {
  const dirs = tempDirs();
  const agents: AgentProcess[] = [];
  let devcloud: DevCloud | undefined;
  beforeAll(async () => {
    requireBuilt();
    devcloud = await startDevCloud();
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) await a.stop('SIGKILL');
    await devcloud?.admin.clearFaults();
  });
  afterAll(async () => {
    await devcloud?.close();
    dirs.cleanup();
  });
  return {
    dirs,
    agents,
    /** The devcloud (from beforeAll on). */
    get cloud(): DevCloud {
      if (!devcloud) throw new Error('the devcloud starts in beforeAll: use it inside a test');
      return devcloud;
    },
    /** Every message the devcloud stored for `uuid`, in arrival order (all pages of the admin answer). */
    storedMessages(uuid: string): StoredMessage[] {
      const out: StoredMessage[] = [];
      for (let after = 0; ; ) {
        const page = this.cloud.admin.messages(uuid, { after, limit: 1000 });
        out.push(...page.messages);
        if (!page.more) return out;
        after = page.nextAfter;
      }
    },
    /** Starts the built agent; it is killed after the test. */
    async spawn(opts: SpawnAgentOptions): Promise<AgentProcess> {
      const agent = await spawnAgent(opts);
      agents.push(agent);
      return agent;
    },
  };
}
