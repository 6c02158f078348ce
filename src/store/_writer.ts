/**
 * Applies queued store operations with prepared statements. Every method is synchronous and runs
 * inside a transaction opened by the caller, so a call's end, its percentiles and its CRM outbox row
 * commit together.
 */
import type { DatabaseSync, SQLInputValue, StatementSync } from "node:sqlite";
import type {
  CallEvent,
  CallStarted,
  DialEndedRecord,
  EndRecord,
  ToolCallRecord,
  TransferRecord,
  TurnRecord,
} from "./types.ts";
import type { Logger } from "../observe/log.ts";
import { LATENCY_NAMES } from "./_schema.ts";
import { summarize } from "./_stats.ts";
import { CallReader } from "./read.ts";
import { buildCrmSummary } from "./crm_summary.ts";

/** One queued write. */
export type StoreOp =
  | { readonly kind: "start"; readonly call: CallStarted }
  | { readonly kind: "turn"; readonly callSid: string; readonly turn: TurnRecord }
  | { readonly kind: "event"; readonly callSid: string; readonly event: CallEvent }
  | { readonly kind: "end"; readonly callSid: string; readonly ended: EndRecord }
  | { readonly kind: "tool"; readonly callSid: string; readonly tool: ToolCallRecord }
  | { readonly kind: "transfer"; readonly callSid: string; readonly transfer: TransferRecord }
  | { readonly kind: "dial"; readonly callSid: string; readonly dial: DialEndedRecord };

/**
 * The end statement's values, in both stores' parameter order: when, outcome, reason, the counters
 * (null when the call's worker died with them), then the CallSid.
 */
export function endCallValues(
  callSid: string,
  ended: EndRecord,
): [number, string, string, ...(number | null)[], string] {
  const c = ended.counters;
  return [
    ended.endedAt,
    ended.outcome,
    ended.reason,
    c?.rx_frames ?? null,
    c?.rx_drops ?? null,
    c?.tx_frames ?? null,
    c?.tx_drops ?? null,
    c?.tx_late ?? null,
    c?.malformed ?? null,
    callSid,
  ];
}

/** Every kind of `StoreOp` (the journal checks what it reads back against it). */
export const STORE_OP_KINDS: ReadonlySet<string> = new Set([
  "start",
  "turn",
  "event",
  "end",
  "tool",
  "transfer",
  "dial",
]);

export interface StoreWriterOptions {
  readonly log: Logger;
  /** Whether ending a call also inserts a CRM outbox row. */
  readonly crm: boolean;
  /** `server.node_id`, written on each call row; null leaves it empty. */
  readonly nodeId?: string | null;
  readonly newId?: () => string;
}

const INTERRUPTED_REASON = "process stopped before the call ended";

export class StoreWriter {
  readonly #log: Logger;
  readonly #crm: boolean;
  readonly #newId: () => string;
  readonly #nodeId: string | null;
  readonly #reader: CallReader;
  readonly #insertCall: StatementSync;
  readonly #reopenCall: StatementSync;
  readonly #insertTool: StatementSync;
  readonly #insertTransfer: StatementSync;
  readonly #dialEnded: StatementSync;
  readonly #endedAt: StatementSync;
  readonly #summaries: StatementSync;
  readonly #upsertTurn: StatementSync;
  readonly #insertEvent: StatementSync;
  readonly #endCall: StatementSync;
  readonly #turnTimings: StatementSync;
  readonly #setPercentiles: StatementSync;
  readonly #insertOutbox: StatementSync;
  readonly #openCalls: StatementSync;
  readonly #interrupt: StatementSync;
  /** Outbox rows inserted since the last `takeOutboxInserts()`. */
  #outboxInserts = 0;

  constructor(db: DatabaseSync, options: StoreWriterOptions) {
    this.#log = options.log;
    this.#crm = options.crm;
    this.#newId = options.newId ?? (() => crypto.randomUUID());
    this.#nodeId = options.nodeId ?? null;
    this.#reader = new CallReader(db);
    this.#insertCall = db.prepare(
      `INSERT INTO calls (call_sid, stream_sid, account_sid, from_number, to_number,
        custom_parameters, started_at, node_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (call_sid) DO NOTHING`,
    );
    // A caller connected back after a failed transfer: the same call goes on (SPEC 6).
    this.#reopenCall = db.prepare(
      `UPDATE calls SET ended_at = NULL, outcome = NULL, reason = NULL, stream_sid = ?
       WHERE call_sid = ? AND outcome = 'transferred'`,
    );
    this.#insertTool = db.prepare(
      `INSERT INTO tool_calls (call_sid, at, tool_call_id, name, arguments, result, error, ms)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#insertTransfer = db.prepare(
      "INSERT INTO transfers (call_sid, at, department, target) VALUES (?, ?, ?, ?)",
    );
    this.#dialEnded = db.prepare(
      `UPDATE transfers SET dial_status = ?, dial_ended_at = ?, dial_duration_s = ?
       WHERE id = (SELECT id FROM transfers WHERE call_sid = ? AND dial_status IS NULL
         ORDER BY at DESC, id DESC LIMIT 1)`,
    );
    this.#endedAt = db.prepare("SELECT ended_at FROM calls WHERE call_sid = ?");
    this.#summaries = db.prepare("SELECT count(*) AS n FROM crm_outbox WHERE call_sid = ?");
    const timingColumns = LATENCY_NAMES.join(", ");
    this.#upsertTurn = db.prepare(
      `INSERT OR REPLACE INTO turns (call_sid, idx, speaker, text, generated, cut, started_at,
        ended_at, has_timings, ${timingColumns}, input) VALUES (${"?, ".repeat(15)}?)`,
    );
    this.#insertEvent = db.prepare(
      "INSERT INTO events (call_sid, at, kind, detail) VALUES (?, ?, ?, ?)",
    );
    this.#endCall = db.prepare(
      `UPDATE calls SET ended_at = ?, outcome = ?, reason = ?, rx_frames = ?, rx_drops = ?,
        tx_frames = ?, tx_drops = ?, tx_late = ?, malformed = ?
       WHERE call_sid = ? AND ended_at IS NULL`,
    );
    this.#turnTimings = db.prepare(`SELECT ${timingColumns} FROM turns WHERE call_sid = ?`);
    this.#setPercentiles = db.prepare(
      `UPDATE calls SET ${
        LATENCY_NAMES.map((n) => `${n}_p50 = ?, ${n}_p90 = ?`).join(", ")
      } WHERE call_sid = ?`,
    );
    this.#insertOutbox = db.prepare(
      `INSERT INTO crm_outbox (id, call_sid, body, created_at, next_attempt_at)
       VALUES (?, ?, ?, ?, ?)`,
    );
    this.#openCalls = db.prepare(
      `SELECT c.call_sid, max(c.started_at,
         coalesce((SELECT max(t.ended_at) FROM turns t WHERE t.call_sid = c.call_sid), 0),
         coalesce((SELECT max(e.at) FROM events e WHERE e.call_sid = c.call_sid), 0)) AS last_at
       FROM calls c WHERE c.ended_at IS NULL`,
    );
    this.#interrupt = db.prepare(
      "UPDATE calls SET ended_at = ?, outcome = 'interrupted', reason = ? WHERE call_sid = ?",
    );
  }

  /** Applies one operation; the caller holds the transaction. */
  apply(op: StoreOp, now: number): void {
    switch (op.kind) {
      case "start": {
        const c = op.call;
        const result = this.#insertCall.run(
          c.callSid,
          c.streamSid,
          c.accountSid,
          c.from,
          c.to,
          JSON.stringify(c.customParameters),
          c.startedAt,
          this.#nodeId,
        );
        if (result.changes === 0 && this.#reopenCall.run(c.streamSid, c.callSid).changes === 0) {
          this.#log.warn("STORE", "call already recorded", { call: c.callSid });
        }
        return;
      }
      case "turn": {
        const t = op.turn;
        const timings: SQLInputValue[] = LATENCY_NAMES.map((name) => t.timings?.[name] ?? null);
        this.#upsertTurn.run(
          op.callSid,
          t.index,
          t.speaker,
          t.text,
          t.generated,
          t.cut ? 1 : 0,
          t.startedAt,
          t.endedAt,
          t.timings ? 1 : 0,
          ...timings,
          t.input === "keypad" ? "keypad" : null,
        );
        return;
      }
      case "tool": {
        const t = op.tool;
        this.#insertTool.run(
          op.callSid,
          t.at,
          t.toolCallId,
          t.name,
          t.arguments,
          t.result,
          t.error,
          t.ms,
        );
        return;
      }
      case "transfer":
        this.#insertTransfer.run(
          op.callSid,
          op.transfer.at,
          op.transfer.department,
          op.transfer.target,
        );
        return;
      case "dial": {
        const d = op.dial;
        const result = this.#dialEnded.run(d.status, d.at, d.durationS, op.callSid);
        if (result.changes === 0) {
          this.#log.warn("STORE", "dial outcome without a transfer ignored", { call: op.callSid });
          return;
        }
        // The summary sent when the stream closed had no outcome yet: send it again with it.
        if (this.#endedAt.get(op.callSid)?.ended_at != null) this.#summarize(op.callSid, now);
        return;
      }
      case "event":
        this.#insertEvent.run(op.callSid, op.event.at, op.event.kind, op.event.detail);
        return;
      case "end": {
        const result = this.#endCall.run(...endCallValues(op.callSid, op.ended));
        if (result.changes === 0) {
          this.#log.warn("STORE", "end of unknown or ended call ignored", { call: op.callSid });
          return;
        }
        this.#finish(op.callSid, now);
        return;
      }
      default: {
        const unreachable: never = op;
        throw new TypeError(`Cannot apply store operation ${JSON.stringify(unreachable)}`);
      }
    }
  }

  /** Closes calls left open by a killed process as `interrupted`; returns their sids. */
  closeInterrupted(now: number): string[] {
    const open = this.#openCalls.all() as Record<string, unknown>[];
    const closed: string[] = [];
    for (const row of open) {
      const callSid = String(row.call_sid);
      const lastAt = Number(row.last_at);
      this.#interrupt.run(lastAt, INTERRUPTED_REASON, callSid);
      this.#finish(callSid, now);
      closed.push(callSid);
    }
    return closed;
  }

  /** How many outbox rows were inserted since the last call; resets the count. */
  takeOutboxInserts(): number {
    const count = this.#outboxInserts;
    this.#outboxInserts = 0;
    return count;
  }

  /** Percentiles into the call row, then (with CRM on) the summary into the outbox. */
  #finish(callSid: string, now: number): void {
    const rows = this.#turnTimings.all(callSid) as Record<string, unknown>[];
    const params: SQLInputValue[] = [];
    for (const name of LATENCY_NAMES) {
      const { p50, p90 } = summarize(
        rows.map((row) => typeof row[name] === "number" ? row[name] as number : null),
      );
      params.push(p50, p90);
    }
    this.#setPercentiles.run(...params, callSid);
    this.#summarize(callSid, now);
  }

  /** With CRM on, the call's summary as it stands into the outbox. */
  #summarize(callSid: string, now: number): void {
    if (!this.#crm) return;
    const detail = this.#reader.getCall(callSid);
    if (!detail) return;
    const id = this.#newId();
    const revision = Number(this.#summaries.get(callSid)?.n ?? 0) + 1;
    const body = JSON.stringify(buildCrmSummary(detail, id, revision));
    this.#insertOutbox.run(id, callSid, body, now, now);
    this.#outboxInserts++;
  }
}
