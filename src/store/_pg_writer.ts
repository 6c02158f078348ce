/**
 * Applies queued store operations to PostgreSQL inside a transaction the caller holds. Every write
 * is idempotent (see `_pg_schema.ts`), so a batch replayed after an unclear commit or from the disk
 * journal lands once. A call's end, its percentiles and its CRM outbox row commit together.
 */
import type { Logger } from "../observe/log.ts";
import { endCallValues, type StoreOp } from "./_writer.ts";
import { LATENCY_NAMES } from "./_schema.ts";
import { summarize } from "./_stats.ts";
import { buildCrmSummary } from "./crm_summary.ts";
import { PgCallReader } from "./_pg_read.ts";
import type { PgQueryable } from "./_pg_client.ts";

/** One queued write with the boot and sequence number of the node process that queued it. */
export interface QueuedOp {
  /** Random id of the process (one "boot" of a node). */
  readonly boot: string;
  /** 1, 2, 3… within the boot, in push order. */
  readonly seq: number;
  readonly op: StoreOp;
}

const INTERRUPTED_REASON = "process stopped before the call ended";

const params = (from: number, count: number) =>
  Array.from({ length: count }, (_, i) => `$${from + i}`).join(", ");

const INSERT_CALL = `INSERT INTO calls (call_sid, node_id, boot_id, stream_sid, account_sid,
  from_number, to_number, custom_parameters, started_at) VALUES (${params(1, 9)})
  ON CONFLICT (call_sid) DO NOTHING`;
const UPSERT_TURN = `INSERT INTO turns (call_sid, idx, speaker, text, generated, cut, started_at,
  ended_at, has_timings, ${LATENCY_NAMES.join(", ")}, input) VALUES (${params(1, 16)})
  ON CONFLICT (call_sid, idx) DO UPDATE SET ${
  [
    "speaker",
    "text",
    "generated",
    "cut",
    "started_at",
    "ended_at",
    "has_timings",
    ...LATENCY_NAMES,
    "input",
  ].map((c) => `${c} = EXCLUDED.${c}`).join(", ")
}`;
/** A caller connected back after a failed transfer: the same call goes on (SPEC 6). */
const REOPEN_CALL = `UPDATE calls SET ended_at = NULL, outcome = NULL, reason = NULL,
  stream_sid = $1, boot_id = $2, node_id = $3 WHERE call_sid = $4 AND outcome = 'transferred'`;
const INSERT_TOOL = `INSERT INTO tool_calls (op_key, call_sid, at, tool_call_id, name, arguments,
  result, error, ms) VALUES (${params(1, 9)}) ON CONFLICT (op_key) DO NOTHING`;
const INSERT_TRANSFER = `INSERT INTO transfers (op_key, call_sid, at, department, target)
  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (op_key) DO NOTHING`;
const DIAL_ENDED = `UPDATE transfers SET dial_status = $1, dial_ended_at = $2, dial_duration_s = $3
  WHERE id = (SELECT id FROM transfers WHERE call_sid = $4 AND dial_status IS NULL
    ORDER BY at DESC, id DESC LIMIT 1)`;
const INSERT_EVENT = `INSERT INTO events (op_key, call_sid, at, kind, detail)
  VALUES ($1, $2, $3, $4, $5) ON CONFLICT (op_key) DO NOTHING`;
const END_CALL = `UPDATE calls SET ended_at = $1, outcome = $2, reason = $3, rx_frames = $4,
  rx_drops = $5, tx_frames = $6, tx_drops = $7, tx_late = $8, malformed = $9
  WHERE call_sid = $10 AND ended_at IS NULL`;
const TURN_TIMINGS = `SELECT ${LATENCY_NAMES.join(", ")} FROM turns WHERE call_sid = $1`;
const SET_PERCENTILES = `UPDATE calls SET ${
  LATENCY_NAMES.map((n, i) => `${n}_p50 = $${2 * i + 1}, ${n}_p90 = $${2 * i + 2}`).join(", ")
} WHERE call_sid = $${2 * LATENCY_NAMES.length + 1}`;
const INSERT_OUTBOX = `INSERT INTO crm_outbox (id, call_sid, node_id, body, created_at,
  next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6)`;
/** This node's calls left open by an earlier boot, closed at their last known activity. */
const OPEN_CALLS = `SELECT c.call_sid, greatest(c.started_at,
    coalesce((SELECT max(t.ended_at) FROM turns t WHERE t.call_sid = c.call_sid), 0),
    coalesce((SELECT max(e.at) FROM events e WHERE e.call_sid = c.call_sid), 0)) AS last_at
  FROM calls c WHERE c.node_id = $1 AND c.boot_id <> $2 AND c.ended_at IS NULL
  FOR UPDATE OF c`;
const INTERRUPT = `UPDATE calls SET ended_at = $1, outcome = 'interrupted', reason = $2
  WHERE call_sid = $3 AND ended_at IS NULL`;

/** PostgreSQL rejects NUL in text; a transcript must not be lost over one. */
function clean(text: string): string {
  return text.includes("\0") ? text.replaceAll("\0", "\uFFFD") : text;
}

function cleanOrNull(text: string | null): string | null {
  return text === null ? null : clean(text);
}

export interface PgWriterOptions {
  readonly nodeId: string;
  readonly log: Logger;
  /** Whether ending a call also inserts a CRM outbox row. */
  readonly crm: boolean;
  readonly newId?: () => string;
}

export class PgWriter {
  readonly #nodeId: string;
  readonly #log: Logger;
  readonly #crm: boolean;
  readonly #newId: () => string;
  #outboxInserts = 0;

  constructor(options: PgWriterOptions) {
    this.#nodeId = options.nodeId;
    this.#log = options.log;
    this.#crm = options.crm;
    this.#newId = options.newId ?? (() => crypto.randomUUID());
  }

  /** Applies one operation in `tx`. */
  async apply(tx: PgQueryable, queued: QueuedOp, now: number): Promise<void> {
    const { op } = queued;
    switch (op.kind) {
      case "start": {
        const c = op.call;
        const result = await tx.unsafe(INSERT_CALL, [
          c.callSid,
          this.#nodeId,
          queued.boot,
          c.streamSid,
          c.accountSid,
          c.from,
          c.to,
          clean(JSON.stringify(c.customParameters)),
          c.startedAt,
        ]);
        if (result.count === 0) {
          const reopened = await tx.unsafe(REOPEN_CALL, [
            c.streamSid,
            queued.boot,
            this.#nodeId,
            c.callSid,
          ]);
          if (reopened.count > 0) return;
          const [row] = await tx`SELECT boot_id FROM calls WHERE call_sid = ${c.callSid}`;
          // The same boot's start again is a replay (journal, unclear commit), not a duplicate.
          if (row?.boot_id !== queued.boot) {
            this.#log.warn("STORE", "call already recorded", { call: c.callSid });
          }
        }
        return;
      }
      case "turn": {
        const t = op.turn;
        await tx.unsafe(UPSERT_TURN, [
          op.callSid,
          t.index,
          t.speaker,
          clean(t.text),
          cleanOrNull(t.generated),
          t.cut ? 1 : 0,
          t.startedAt,
          t.endedAt,
          t.timings ? 1 : 0,
          ...LATENCY_NAMES.map((name) => t.timings?.[name] ?? null),
          t.input === "keypad" ? "keypad" : null,
        ]);
        return;
      }
      case "tool": {
        const t = op.tool;
        await tx.unsafe(INSERT_TOOL, [
          `${queued.boot}.${queued.seq}`,
          op.callSid,
          t.at,
          clean(t.toolCallId),
          clean(t.name),
          clean(t.arguments),
          cleanOrNull(t.result),
          cleanOrNull(t.error),
          t.ms,
        ]);
        return;
      }
      case "transfer":
        await tx.unsafe(INSERT_TRANSFER, [
          `${queued.boot}.${queued.seq}`,
          op.callSid,
          op.transfer.at,
          clean(op.transfer.department),
          clean(op.transfer.target),
        ]);
        return;
      case "dial": {
        const d = op.dial;
        const result = await tx.unsafe(DIAL_ENDED, [d.status, d.at, d.durationS, op.callSid]);
        if (result.count === 0) {
          this.#log.warn("STORE", "dial outcome without a transfer ignored", { call: op.callSid });
          return;
        }
        // The summary sent when the stream closed had no outcome yet: send it again with it.
        const [row] = await tx`SELECT ended_at FROM calls WHERE call_sid = ${op.callSid}`;
        if (row?.ended_at != null) await this.#summarize(tx, op.callSid, now);
        return;
      }
      case "event":
        await tx.unsafe(INSERT_EVENT, [
          `${queued.boot}.${queued.seq}`,
          op.callSid,
          op.event.at,
          op.event.kind,
          clean(op.event.detail),
        ]);
        return;
      case "end": {
        const result = await tx.unsafe(
          END_CALL,
          endCallValues(op.callSid, { ...op.ended, reason: clean(op.ended.reason) }),
        );
        if (result.count === 0) {
          this.#log.warn("STORE", "end of unknown or ended call ignored", { call: op.callSid });
          return;
        }
        await this.#finish(tx, op.callSid, now);
        return;
      }
      default: {
        const unreachable: never = op;
        throw new TypeError(`Cannot apply store operation ${JSON.stringify(unreachable)}`);
      }
    }
  }

  /** Closes this node's calls that an earlier boot left open as `interrupted`; returns their sids. */
  async closeInterrupted(tx: PgQueryable, boot: string, now: number): Promise<string[]> {
    const open = await tx.unsafe(OPEN_CALLS, [this.#nodeId, boot]);
    const closed: string[] = [];
    for (const row of open) {
      const callSid = String(row.call_sid);
      await tx.unsafe(INTERRUPT, [Number(row.last_at), INTERRUPTED_REASON, callSid]);
      await this.#finish(tx, callSid, now);
      closed.push(callSid);
    }
    return closed;
  }

  /** Outbox rows inserted since the last call; resets the count. */
  takeOutboxInserts(): number {
    const count = this.#outboxInserts;
    this.#outboxInserts = 0;
    return count;
  }

  async #finish(tx: PgQueryable, callSid: string, now: number): Promise<void> {
    const rows = await tx.unsafe(TURN_TIMINGS, [callSid]);
    const values: (number | null)[] = [];
    for (const name of LATENCY_NAMES) {
      const { p50, p90 } = summarize(
        rows.map((row) => typeof row[name] === "number" ? row[name] as number : null),
      );
      values.push(p50, p90);
    }
    await tx.unsafe(SET_PERCENTILES, [...values, callSid]);
    await this.#summarize(tx, callSid, now);
  }

  /** With CRM on, the call's summary as it stands into the outbox. */
  async #summarize(tx: PgQueryable, callSid: string, now: number): Promise<void> {
    if (!this.#crm) return;
    const detail = await new PgCallReader(tx).getCall(callSid);
    if (detail === null) return;
    const id = this.#newId();
    const [{ n }] = await tx`SELECT count(*) AS n FROM crm_outbox WHERE call_sid = ${callSid}`;
    const body = JSON.stringify(buildCrmSummary(detail, id, Number(n) + 1));
    await tx.unsafe(INSERT_OUTBOX, [id, callSid, this.#nodeId, body, now, now]);
    this.#outboxInserts++;
  }
}
