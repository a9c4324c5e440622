import type { Database, Statement } from 'better-sqlite3';

/** A packet as aedes hands it to its persistence and takes it back (aedes-packet's fields). */
export interface StoredPacket {
  cmd: string;
  topic: string;
  payload: Buffer | string;
  qos: number;
  retain: boolean;
  dup?: boolean;
  messageId?: number | undefined;
  brokerId?: string;
  brokerCounter?: number;
  clientId?: string;
}

export interface OutgoingRow {
  seq: number;
  cmd: string;
  broker_id: string | null;
  broker_counter: number | null;
  message_id: number | null;
  topic: string | null;
  payload: Buffer | null;
  qos: number;
  retain: number;
}

export function toBuffer(payload: Buffer | string | undefined): Buffer {
  if (payload === undefined) return Buffer.alloc(0);
  return typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
}

/**
 * Whether the MQTT topic filter `filter` matches `topic` (`+` one level, `#` the rest, including the
 * parent level). A wildcard in the first level does not match a topic starting with `$` (MQTT 4.7.2).
 */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === '#') return i === f.length - 1;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/** Every statement of the broker's persistence, prepared once. */
export function brokerStatements(db: Database) {
  const p = (sql: string): Statement => db.prepare(sql);
  const outgoingColumns = 'seq, cmd, broker_id, broker_counter, message_id, topic, payload, qos, retain';
  return {
    retainedTopics: p('SELECT topic FROM broker_retained ORDER BY topic'),
    getRetained: p('SELECT payload, qos FROM broker_retained WHERE topic = ?'),
    retainedCount: p('SELECT count(*) AS n FROM broker_retained'),
    hasRetained: p('SELECT 1 FROM broker_retained WHERE topic = ?'),
    upsertRetained: p(
      `INSERT INTO broker_retained (topic, payload, qos, stored_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos, stored_at = excluded.stored_at`,
    ),
    deleteRetained: p('DELETE FROM broker_retained WHERE topic = ?'),
    allSubs: p('SELECT client_id, topic, qos FROM broker_subscriptions'),
    upsertSub: p('INSERT INTO broker_subscriptions (client_id, topic, qos) VALUES (?, ?, ?) ON CONFLICT (client_id, topic) DO UPDATE SET qos = excluded.qos'),
    deleteSub: p('DELETE FROM broker_subscriptions WHERE client_id = ? AND topic = ?'),
    deleteSubsOf: p('DELETE FROM broker_subscriptions WHERE client_id = ?'),
    queuedCounts: p('SELECT client_id, count(*) AS n FROM broker_outgoing GROUP BY client_id'),
    insertOutgoing: p(
      `INSERT INTO broker_outgoing (client_id, cmd, broker_id, broker_counter, message_id, topic, payload, qos, retain, stored_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    deleteOldestOf: p('DELETE FROM broker_outgoing WHERE seq = (SELECT seq FROM broker_outgoing WHERE client_id = ? ORDER BY seq LIMIT 1)'),
    setMessageId: p(
      `UPDATE broker_outgoing SET message_id = ?
       WHERE seq = (SELECT seq FROM broker_outgoing WHERE client_id = ? AND broker_id IS ? AND broker_counter IS ? ORDER BY seq LIMIT 1)`,
    ),
    replaceByMessageId: p(
      `UPDATE broker_outgoing SET cmd = ?, broker_id = ?, broker_counter = ?, topic = ?, payload = ?, qos = ?, retain = ?
       WHERE seq = (SELECT seq FROM broker_outgoing WHERE client_id = ? AND message_id = ? AND broker_id IS NOT ? ORDER BY seq LIMIT 1)`,
    ),
    outgoingByMessageId: p(`SELECT ${outgoingColumns} FROM broker_outgoing WHERE client_id = ? AND message_id = ? ORDER BY seq LIMIT 1`),
    deleteOutgoing: p('DELETE FROM broker_outgoing WHERE seq = ?'),
    deleteOutgoingOf: p('DELETE FROM broker_outgoing WHERE client_id = ?'),
    outgoingSeqsOf: p('SELECT seq FROM broker_outgoing WHERE client_id = ? ORDER BY seq'),
    outgoingBySeq: p(`SELECT ${outgoingColumns} FROM broker_outgoing WHERE seq = ?`),
    upsertIncoming: p('INSERT OR REPLACE INTO broker_incoming (client_id, message_id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)'),
    getIncoming: p('SELECT topic, payload, qos, retain FROM broker_incoming WHERE client_id = ? AND message_id = ?'),
    deleteIncoming: p('DELETE FROM broker_incoming WHERE client_id = ? AND message_id = ?'),
    deleteIncomingOf: p('DELETE FROM broker_incoming WHERE client_id = ?'),
    upsertWill: p('INSERT OR REPLACE INTO broker_wills (client_id, broker_id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)'),
    getWill: p('SELECT client_id, broker_id, topic, payload, qos, retain FROM broker_wills WHERE client_id = ?'),
    deleteWill: p('DELETE FROM broker_wills WHERE client_id = ?'),
    allWills: p('SELECT client_id, broker_id, topic, payload, qos, retain FROM broker_wills'),
  };
}

export type BrokerStatements = ReturnType<typeof brokerStatements>;
