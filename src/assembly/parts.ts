import type { LogCollector } from '../logs/collector.js';
import type { MqttSession } from '../mqtt/session.js';
import type { LocalBroker } from '../telemetry/local-broker.js';
import type { AgentStatus } from '../views/agent-status.js';
import type { LocalTarget } from '../workloads/local-target.js';
import type { ActionParts } from './actions.js';
import type { CloudParts } from './cloud.js';
import type { Core } from './core.js';
import type { Queueing } from './outbox.js';
import type { ShadowParts } from './shadow.js';
import type { Workloads } from './workloads.js';

/** Every part of a running agent, as the factories built them; optional ones are off in the config. */
export interface AgentParts {
  core: Core;
  workloads: Workloads;
  queueing: Queueing;
  logs: LogCollector;
  shadow: ShadowParts | undefined;
  localBroker: LocalBroker | undefined;
  mqtt: MqttSession | undefined;
  status: AgentStatus;
  cloud: CloudParts | undefined;
  localTarget: LocalTarget;
  actions: ActionParts;
}
