/**
 * The fleet store's schema in PostgreSQL, versioned in `kav_schema`. Migrations run at start inside
 * one transaction that first takes a transaction-level advisory lock, so nodes starting together
 * apply each migration once, in order; DDL is transactional, so a failed migration leaves nothing.
 *
 * Every write is idempotent (a record replayed from the journal after an unclear commit lands once):
 * calls by `call_sid`, turns by `(call_sid, idx)`, events by `op_key` (boot id and sequence of the
 * node that queued them), the CRM summary by the call's end (only the update that ends a call adds it).
 */
import { LATENCY_NAMES } from "./_schema.ts";
import type { PgQueryable, PgSql } from "./_pg_client.ts";

/** `pg_advisory_xact_lock` key of the migrations ("Kav" in ASCII). */
const MIGRATION_LOCK = 0x4b6176;

const percentileColumns = LATENCY_NAMES.map((n) =>
  `${n}_p50 DOUBLE PRECISION, ${n}_p90 DOUBLE PRECISION`
).join(",\n  ");
const turnColumns = LATENCY_NAMES.map((name) => `${name} DOUBLE PRECISION`).join(",\n  ");

const MIGRATIONS: readonly string[] = [
  // 1: as SQLite's, plus the node and boot that answered each call, idempotent event keys, CRM
  // delivery leases and the fleet's chores. No foreign keys: a late event must still be written.
  `
CREATE TABLE calls (
  call_sid TEXT PRIMARY KEY,
  node_id TEXT NOT NULL,
  boot_id TEXT NOT NULL,
  stream_sid TEXT NOT NULL,
  account_sid TEXT NOT NULL,
  from_number TEXT,
  to_number TEXT,
  custom_parameters TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  ended_at BIGINT,
  outcome TEXT,
  reason TEXT,
  rx_frames BIGINT,
  rx_drops BIGINT,
  tx_frames BIGINT,
  tx_drops BIGINT,
  tx_late BIGINT,
  malformed BIGINT,
  ${percentileColumns}
);
CREATE INDEX calls_started_at ON calls (started_at);
CREATE INDEX calls_open ON calls (node_id) WHERE ended_at IS NULL;
CREATE TABLE turns (
  call_sid TEXT NOT NULL,
  idx INTEGER NOT NULL,
  speaker TEXT NOT NULL,
  text TEXT NOT NULL,
  generated TEXT,
  cut SMALLINT NOT NULL,
  started_at BIGINT NOT NULL,
  ended_at BIGINT NOT NULL,
  has_timings SMALLINT NOT NULL,
  ${turnColumns},
  PRIMARY KEY (call_sid, idx)
);
CREATE TABLE events (
  id BIGSERIAL PRIMARY KEY,
  op_key TEXT NOT NULL UNIQUE,
  call_sid TEXT NOT NULL,
  at BIGINT NOT NULL,
  kind TEXT NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX events_call ON events (call_sid, at);
CREATE TABLE crm_outbox (
  id TEXT PRIMARY KEY,
  call_sid TEXT NOT NULL,
  node_id TEXT NOT NULL,
  body TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at BIGINT NOT NULL,
  lease_owner TEXT,
  lease_until BIGINT,
  delivered_at BIGINT,
  delivered_by TEXT,
  last_status INTEGER,
  last_error TEXT
);
CREATE INDEX crm_outbox_due ON crm_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX crm_outbox_call ON crm_outbox (call_sid);
CREATE TABLE kav_chores (
  name TEXT PRIMARY KEY,
  last_run_at BIGINT NOT NULL,
  node_id TEXT NOT NULL
);
`,
  // 2: full-text search of transcripts for the console's history ('simple': no stemming or stop
  // words, so Hebrew and English words match as written).
  "CREATE INDEX turns_text_search ON turns USING gin (to_tsvector('simple', text));",
  // 3: the agent acts (SPEC 6): tool calls, transfers and keypad turns, idempotent by op_key.
  `
CREATE TABLE tool_calls (
  id BIGSERIAL PRIMARY KEY,
  op_key TEXT NOT NULL UNIQUE,
  call_sid TEXT NOT NULL,
  at BIGINT NOT NULL,
  tool_call_id TEXT NOT NULL,
  name TEXT NOT NULL,
  arguments TEXT NOT NULL,
  result TEXT,
  error TEXT,
  ms DOUBLE PRECISION NOT NULL
);
CREATE INDEX tool_calls_call ON tool_calls (call_sid, at);
CREATE TABLE transfers (
  id BIGSERIAL PRIMARY KEY,
  op_key TEXT NOT NULL UNIQUE,
  call_sid TEXT NOT NULL,
  at BIGINT NOT NULL,
  department TEXT NOT NULL,
  target TEXT NOT NULL,
  dial_status TEXT,
  dial_ended_at BIGINT,
  dial_duration_s INTEGER
);
CREATE INDEX transfers_call ON transfers (call_sid, at);
ALTER TABLE turns ADD COLUMN input TEXT;
`,
];

/** The schema version this build writes and reads. */
export const PG_SCHEMA_VERSION = MIGRATIONS.length;

/** The version in the database; 0 when Kav never ran on it. */
export async function pgSchemaVersion(sql: PgQueryable): Promise<number> {
  const [{ present }] = await sql`SELECT to_regclass('kav_schema') IS NOT NULL AS present`;
  if (present !== true) return 0;
  const [{ version }] = await sql`SELECT coalesce(max(version), 0) AS version FROM kav_schema`;
  return Number(version);
}

/**
 * Brings the database to {@link PG_SCHEMA_VERSION}; resolves to the version found before. Rejects
 * with a `RangeError` when a newer Kav wrote it.
 */
export async function migratePostgres(sql: PgSql, nodeId: string): Promise<number> {
  return await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await tx`CREATE TABLE IF NOT EXISTS kav_schema (
      version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL, node_id TEXT NOT NULL)`;
    const found = await pgSchemaVersion(tx);
    if (found > PG_SCHEMA_VERSION) {
      throw new RangeError(
        `Cannot use the PostgreSQL store: schema version ${found} is newer than this build's ${PG_SCHEMA_VERSION}`,
      );
    }
    for (let version = found + 1; version <= PG_SCHEMA_VERSION; version++) {
      await tx.unsafe(MIGRATIONS[version - 1]).simple();
      await tx`INSERT INTO kav_schema (version, applied_at, node_id)
        VALUES (${version}, ${Date.now()}, ${nodeId})`;
    }
    return found;
  });
}
