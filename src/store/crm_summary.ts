/**
 * The JSON body POSTed to the CRM when a call ends. Times are ISO 8601 (UTC), durations and
 * latencies in ms. The body is built once, stored in the outbox and re-sent byte for byte, so the
 * signature and the delivery id stay stable across retries.
 */
import type { CallDetail, LatencySummary } from "./read.ts";
import type { CallCounters, CallOutcome, TurnTimings } from "./types.ts";

/** Version of the body's shape; bumped on incompatible changes. */
export const CRM_SUMMARY_VERSION = 1;

/** A tool the agent ran; `result` is the tool's JSON answer (parsed), null when it failed. */
export interface CrmSummaryToolCall {
  readonly at: string;
  readonly name: string;
  /** The arguments as the model sent them (JSON text, kept as text: it may be invalid). */
  readonly arguments: string;
  readonly result: unknown;
  readonly error: string | null;
  readonly ms: number;
}

/** A transfer; `dial_status` is null until Twilio reported the dial's outcome. */
export interface CrmSummaryTransfer {
  readonly at: string;
  readonly department: string;
  readonly target: string;
  readonly dial_status: string | null;
  readonly dial_duration_s: number | null;
}

export interface CrmSummaryTurn {
  readonly index: number;
  readonly speaker: "caller" | "agent";
  /** What was heard: the caller's final transcript, or the agent text actually played. */
  readonly text: string;
  /** Agent only: the generated text when barge-in cut it short. */
  readonly generated: string | null;
  readonly cut: boolean;
  readonly started_at: string;
  readonly ended_at: string;
  readonly timings: TurnTimings | null;
  /** "keypad" for digits the caller typed, "speech" otherwise. */
  readonly input: "speech" | "keypad";
}

export interface CrmSummary {
  readonly version: number;
  readonly delivery_id: string;
  /**
   * 1 for a call's first summary; a call summarized again (a transfer's dial outcome, a caller
   * connected back) counts up. Deliveries may arrive out of order: keep the highest.
   */
  readonly revision: number;
  readonly call: {
    readonly call_sid: string;
    readonly stream_sid: string;
    readonly account_sid: string;
    readonly from: string | null;
    readonly to: string | null;
    readonly custom_parameters: Readonly<Record<string, string>>;
    readonly started_at: string;
    readonly ended_at: string | null;
    readonly duration_ms: number | null;
    readonly outcome: CallOutcome | null;
    readonly reason: string | null;
    readonly counters: CallCounters | null;
  };
  readonly transcript: readonly CrmSummaryTurn[];
  readonly tool_calls: readonly CrmSummaryToolCall[];
  readonly transfers: readonly CrmSummaryTransfer[];
  /** Per-call p50/p90 of each turn latency, ms. */
  readonly latency: LatencySummary;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** A stored JSON answer as data; null stays null (it was checked to be JSON when received). */
function parseJson(text: string | null): unknown {
  if (text === null) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Builds the summary for `detail` (a call that has ended); `revision` counts from 1. */
export function buildCrmSummary(
  detail: CallDetail,
  deliveryId: string,
  revision = 1,
): CrmSummary {
  const { call } = detail;
  return {
    version: CRM_SUMMARY_VERSION,
    delivery_id: deliveryId,
    revision,
    call: {
      call_sid: call.callSid,
      stream_sid: call.streamSid,
      account_sid: call.accountSid,
      from: call.from,
      to: call.to,
      custom_parameters: call.customParameters,
      started_at: iso(call.startedAt),
      ended_at: call.endedAt === null ? null : iso(call.endedAt),
      duration_ms: call.endedAt === null ? null : call.endedAt - call.startedAt,
      outcome: call.outcome,
      reason: call.reason,
      counters: call.counters,
    },
    transcript: detail.turns.map((turn) => ({
      index: turn.index,
      speaker: turn.speaker,
      text: turn.text,
      generated: turn.generated,
      cut: turn.cut,
      started_at: iso(turn.startedAt),
      ended_at: iso(turn.endedAt),
      timings: turn.timings,
      input: turn.input ?? "speech",
    })),
    tool_calls: detail.toolCalls.map((tool) => ({
      at: iso(tool.at),
      name: tool.name,
      arguments: tool.arguments,
      result: parseJson(tool.result),
      error: tool.error,
      ms: Math.round(tool.ms * 10) / 10,
    })),
    transfers: detail.transfers.map((transfer) => ({
      at: iso(transfer.at),
      department: transfer.department,
      target: transfer.target,
      dial_status: transfer.dialStatus,
      dial_duration_s: transfer.dialDurationS,
    })),
    latency: call.latency,
  };
}
