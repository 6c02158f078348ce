/**
 * Deletes calls (and their turns, events and CRM outbox rows, delivered or not: personal data
 * past retention goes) that started before a cutoff. Works in small transactions so a daily sweep
 * never holds the event loop for long.
 */
import type { DatabaseSync } from "node:sqlite";

/** Calls deleted per transaction. */
export const RETENTION_CHUNK = 200;

/**
 * Deletes up to `limit` ended calls started before `cutoffMs` (epoch ms); returns how many were
 * deleted. Call again while it returns `limit`.
 */
export function sweepRetentionChunk(
  db: DatabaseSync,
  cutoffMs: number,
  limit = RETENTION_CHUNK,
): number {
  const sids = db.prepare(
    "SELECT call_sid FROM calls WHERE started_at < ? AND ended_at IS NOT NULL LIMIT ?",
  ).all(cutoffMs, limit).map((row) => String(row.call_sid));
  if (sids.length === 0) return 0;
  const statements = ["turns", "events", "tool_calls", "transfers", "crm_outbox", "calls"].map((
    table,
  ) => db.prepare(`DELETE FROM ${table} WHERE call_sid = ?`));
  db.exec("BEGIN IMMEDIATE");
  try {
    for (const sid of sids) for (const statement of statements) statement.run(sid);
    db.exec("COMMIT");
  } catch (error) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw error;
  }
  return sids.length;
}

/** Deletes turns and events older than the cutoff whose call row was never written. */
export function sweepRetentionOrphans(db: DatabaseSync, cutoffMs: number): number {
  const turns = db.prepare(
    "DELETE FROM turns WHERE ended_at < ? AND call_sid NOT IN (SELECT call_sid FROM calls)",
  ).run(cutoffMs);
  const events = db.prepare(
    "DELETE FROM events WHERE at < ? AND call_sid NOT IN (SELECT call_sid FROM calls)",
  ).run(cutoffMs);
  return Number(turns.changes) + Number(events.changes);
}
