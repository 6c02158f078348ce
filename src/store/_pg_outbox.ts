/**
 * The CRM outbox table in PostgreSQL, shared by every node. A node takes one due row at a time:
 * `FOR UPDATE SKIP LOCKED` keeps two nodes from taking the same row at once, and the lease it then
 * writes (`lease_owner`, `lease_until` on the database's clock, so node clocks do not matter) keeps
 * the others off it while the POST is in flight. A node that dies mid-delivery leaves its lease to
 * expire, and another node sends the row again with the same delivery id.
 */
import type { OutboxRow, OutboxTable } from "./crm_outbox.ts";
import type { PgSql } from "./_pg_client.ts";

/** The database's clock in epoch ms. */
const DB_NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

const CLAIM = `UPDATE crm_outbox SET lease_owner = $1, lease_until = ${DB_NOW} + $2
  WHERE id IN (
    SELECT id FROM crm_outbox
    WHERE delivered_at IS NULL AND next_attempt_at <= $3
      AND (lease_until IS NULL OR lease_until <= ${DB_NOW})
    ORDER BY next_attempt_at, id LIMIT $4
    FOR UPDATE SKIP LOCKED)
  RETURNING id, call_sid, body, attempts`;
/** Pending rows and when the next one is due; a leased row is due again when its lease ends. */
const NEXT = `SELECT count(*) AS n, min(greatest(next_attempt_at,
    coalesce(lease_until - ${DB_NOW} + $1, 0))) AS next
  FROM crm_outbox WHERE delivered_at IS NULL`;
const DELIVERED = `UPDATE crm_outbox SET attempts = $1, delivered_at = $2, delivered_by = $3,
  last_status = $4, last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $5`;
const FAILED = `UPDATE crm_outbox SET attempts = $1, next_attempt_at = $2, last_status = $3,
  last_error = $4, lease_owner = NULL, lease_until = NULL WHERE id = $5 AND lease_owner = $6`;

export interface PgOutboxOptions {
  readonly pool: () => PgSql;
  readonly nodeId: string;
  /** How long a taken row stays this node's; longer than one attempt (request timeout). */
  readonly leaseMs: number;
  readonly now: () => number;
}

export function pgOutboxTable(options: PgOutboxOptions): OutboxTable {
  const { nodeId, leaseMs } = options;
  let pending = 0;
  return {
    async claimDue(now, limit) {
      const rows = await options.pool().unsafe(CLAIM, [nodeId, leaseMs, now, limit]);
      return rows.map((row): OutboxRow => ({
        id: String(row.id),
        callSid: String(row.call_sid),
        body: String(row.body),
        attempts: Number(row.attempts),
      }));
    },
    async nextDueAt() {
      // The lease end is on the database's clock; `$1` turns it into this node's.
      const [row] = await options.pool().unsafe(NEXT, [options.now()]);
      pending = Number(row?.n ?? 0);
      return row?.next === null || row?.next === undefined ? null : Number(row.next);
    },
    pending: () => pending,
    async delivered(row, r) {
      // Delivered is delivered, even if the lease ran out meanwhile: do not send it again.
      await options.pool().unsafe(DELIVERED, [r.attempts, r.at, nodeId, r.status, row.id]);
    },
    async failed(row, r) {
      // A row whose lease ran out belongs to whoever took it next.
      await options.pool().unsafe(FAILED, [
        r.attempts,
        r.nextAttemptAt,
        r.status,
        r.error,
        row.id,
        nodeId,
      ]);
    },
  };
}
