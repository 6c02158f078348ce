/**
 * Retention in the fleet store: runs once across the fleet per interval. Each node's timer asks;
 * the node whose update of the `kav_chores` row succeeds does the sweep (the row lock makes the
 * others see its new `last_run_at` and skip). Deletes go in small chunks, like SQLite's.
 */
import type { PgSql } from "./_pg_client.ts";
import { RETENTION_CHUNK } from "./_retention.ts";

const CLAIM = `INSERT INTO kav_chores (name, last_run_at, node_id) VALUES ($1, $2, $3)
  ON CONFLICT (name) DO UPDATE SET last_run_at = EXCLUDED.last_run_at, node_id = EXCLUDED.node_id
  WHERE kav_chores.last_run_at <= $4
  RETURNING name`;

const SWEEP_CHUNK = `WITH doomed AS (
    SELECT call_sid FROM calls WHERE started_at < $1 AND ended_at IS NOT NULL LIMIT $2),
  t AS (DELETE FROM turns WHERE call_sid IN (SELECT call_sid FROM doomed)),
  e AS (DELETE FROM events WHERE call_sid IN (SELECT call_sid FROM doomed)),
  o AS (DELETE FROM crm_outbox WHERE call_sid IN (SELECT call_sid FROM doomed)),
  tc AS (DELETE FROM tool_calls WHERE call_sid IN (SELECT call_sid FROM doomed)),
  tr AS (DELETE FROM transfers WHERE call_sid IN (SELECT call_sid FROM doomed))
  DELETE FROM calls WHERE call_sid IN (SELECT call_sid FROM doomed) RETURNING call_sid`;

const ORPHAN_TURNS = `DELETE FROM turns WHERE ended_at < $1
  AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.call_sid = turns.call_sid)`;
const ORPHAN_EVENTS = `DELETE FROM events WHERE at < $1
  AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.call_sid = events.call_sid)`;

/**
 * Whether this node runs the chore `name` now: true for exactly one caller per `intervalMs` across
 * the fleet (a run that starts a little early, within a tenth of the interval, still counts).
 */
export async function claimChore(
  sql: PgSql,
  chore: { name: string; nodeId: string; now: number; intervalMs: number },
): Promise<boolean> {
  const rows = await sql.unsafe(CLAIM, [
    chore.name,
    chore.now,
    chore.nodeId,
    chore.now - chore.intervalMs * 0.9,
  ]);
  return rows.length > 0;
}

/** Deletes ended calls started before `cutoffMs`, chunk by chunk; returns how many. */
export async function sweepPgRetention(sql: PgSql, cutoffMs: number): Promise<number> {
  let total = 0;
  for (;;) {
    const deleted = (await sql.unsafe(SWEEP_CHUNK, [cutoffMs, RETENTION_CHUNK])).length;
    total += deleted;
    if (deleted < RETENTION_CHUNK) break;
  }
  await sql.unsafe(ORPHAN_TURNS, [cutoffMs]);
  await sql.unsafe(ORPHAN_EVENTS, [cutoffMs]);
  return total;
}
