import { JOBS_MIGRATION } from './jobs/migration.js';
import { LOGS_MIGRATION } from './logs/log-store.js';
import { MQTT_MIGRATION } from './mqtt/migration.js';
import { OUTBOX_LANE_TOTALS_MIGRATION, OUTBOX_LEDGER_MIGRATION, OUTBOX_MIGRATION, OUTBOX_STREAMS_MIGRATION, OUTBOX_TIME_MIGRATION } from './outbox/migration.js';
import { LINK_BUDGET_MIGRATION } from './resilience/link-budget-store.js';
import { SHADOW_MIGRATION } from './shadow/migration.js';
import { STORE_MIGRATION, type Migration } from './store/migrations.js';
import { BROKER_MIGRATION } from './telemetry/broker-migration.js';

/**
 * The agent's database schema: the migrations of every part with tables, in version order. It sits
 * above the parts so the store needs to know none of them; whatever opens the agent's database (boot,
 * benchmarks, tests) passes this list. Versions are never reused (4 was never shipped).
 */
export const MIGRATIONS: readonly Migration[] = [STORE_MIGRATION, OUTBOX_MIGRATION, MQTT_MIGRATION, JOBS_MIGRATION, SHADOW_MIGRATION, OUTBOX_LANE_TOTALS_MIGRATION, BROKER_MIGRATION, OUTBOX_TIME_MIGRATION, OUTBOX_LEDGER_MIGRATION, OUTBOX_STREAMS_MIGRATION, LINK_BUDGET_MIGRATION, LOGS_MIGRATION];
