/** Text rendering and redaction for `kav calls` / `kav call`. */
import type { CallDetail, CallRow, LatencyName, TransferDetail } from "./read.ts";
import type { CallEvent, ToolCallRecord, TurnRecord } from "./types.ts";
import { LATENCY_NAMES } from "./_schema.ts";

const REDACTED = "[redacted]";

function redactText(text: string): string {
  return `[${[...text].length} chars]`;
}

/** The row without phone numbers or custom parameter values. */
export function redactCall(call: CallRow): CallRow {
  const customParameters: Record<string, string> = {};
  for (const key of Object.keys(call.customParameters)) customParameters[key] = REDACTED;
  return {
    ...call,
    from: call.from === null ? null : REDACTED,
    to: call.to === null ? null : REDACTED,
    customParameters,
  };
}

/** Numbers and text removed; timings, flags and structure kept. */
export function redactDetail(detail: CallDetail): CallDetail {
  return {
    call: redactCall(detail.call),
    turns: detail.turns.map((turn): TurnRecord => ({
      ...turn,
      text: redactText(turn.text),
      generated: turn.generated === null ? null : redactText(turn.generated),
    })),
    // Mark names are ours; any other detail may quote the caller (DTMF digits, partials).
    events: detail.events.map((event): CallEvent =>
      event.kind === "mark" ? event : { ...event, detail: event.detail === "" ? "" : REDACTED }
    ),
    // Tool names and timings are the operator's; arguments and answers may quote the caller.
    toolCalls: detail.toolCalls.map((tool) => ({
      ...tool,
      arguments: redactText(tool.arguments),
      result: tool.result === null ? null : redactText(tool.result),
    })),
    transfers: detail.transfers.map((transfer) => ({ ...transfer, target: REDACTED })),
  };
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** Local wall-clock time, "2025-01-15 12:00:00". */
export function formatTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${
    pad(d.getMinutes())
  }:${pad(d.getSeconds())}`;
}

function formatToolCall(call: CallRow, tool: ToolCallRecord): string {
  const outcome = tool.error === null
    ? `-> ${tool.result ?? ""}`
    : `ERROR ${JSON.stringify(tool.error)}`;
  return `  ${offset(call, tool.at).padStart(7)}  ${tool.name}(${tool.arguments})  ${
    formatMs(Math.round(tool.ms * 10) / 10)
  } ms  ${outcome}`;
}

function formatTransfer(call: CallRow, transfer: TransferDetail): string {
  const dial = transfer.dialStatus === null
    ? "dial outcome not reported yet"
    : `dial ${transfer.dialStatus}${
      transfer.dialDurationS === null ? "" : ` after ${transfer.dialDurationS} s`
    }`;
  return `  ${
    offset(call, transfer.at).padStart(7)
  }  to ${transfer.department} (${transfer.target}): ${dial}`;
}

/** "9.5s", "1m05s", "2h03m". */
export function formatDuration(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`;
}

function formatMs(ms: number | null): string {
  if (ms === null) return "-";
  return Number.isInteger(ms) ? `${ms}` : ms.toFixed(1);
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => [...row[i]].length)));
  return rows.map((row) =>
    row.map((cell, i) => i === row.length - 1 ? cell : cell.padEnd(widths[i])).join("  ").trimEnd()
  );
}

/** The `kav calls` table, one line per call plus a header; NODE when calls come from several nodes. */
export function formatCallTable(calls: readonly CallRow[]): string[] {
  if (calls.length === 0) return ["No calls in that period"];
  const nodes = new Set(calls.map((call) => call.node)).size > 1;
  const rows = [[
    "TIME",
    "CALL",
    ...(nodes ? ["NODE"] : []),
    "FROM",
    "DURATION",
    "TURNS",
    "OUTCOME",
    "E2E P50",
  ]];
  for (const call of calls) {
    const p50 = call.latency.e2e_latency.p50;
    rows.push([
      formatTime(call.startedAt),
      call.callSid,
      ...(nodes ? [call.node ?? "-"] : []),
      call.from ?? "-",
      call.endedAt === null ? "-" : formatDuration(call.endedAt - call.startedAt),
      String(call.turns),
      call.outcome ?? "active",
      p50 === null ? "-" : `${formatMs(p50)} ms`,
    ]);
  }
  return table(rows);
}

const SHORT: Readonly<Record<LatencyName, string>> = {
  end_of_turn_delay: "eot",
  stt_final_delay: "stt",
  llm_ttft: "ttft",
  tts_ttfb: "ttfb",
  e2e_latency: "e2e",
  server_latency: "server",
};

function offset(call: CallRow, at: number): string {
  return `+${((at - call.startedAt) / 1000).toFixed(1)}s`;
}

function formatTurn(call: CallRow, turn: TurnRecord): string[] {
  const head = `  #${turn.index}  ${offset(call, turn.startedAt).padStart(7)}  ${
    turn.speaker.padEnd(6)
  }  ${turn.input === "keypad" ? "[keypad] " : ""}${JSON.stringify(turn.text)}${
    turn.cut ? "  [cut by barge-in]" : ""
  }`;
  const lines = [head];
  if (turn.generated !== null) {
    const rest = turn.generated.startsWith(turn.text)
      ? turn.generated.slice(turn.text.length)
      : turn.generated;
    lines.push(`              not played: ${JSON.stringify(rest)}`);
  }
  if (turn.timings) {
    const timings = turn.timings;
    const parts = LATENCY_NAMES.filter((name) => timings[name] !== null)
      .map((name) => `${SHORT[name]}=${formatMs(timings[name])}`);
    if (parts.length > 0) lines.push(`              ms: ${parts.join(" ")}`);
  }
  return lines;
}

/** The `kav call` report: header, per-call latency, transcript, then events other than marks. */
export function formatCallDetail(detail: CallDetail): string[] {
  const { call } = detail;
  const lines = [
    `Call ${call.callSid} (stream ${call.streamSid}, account ${call.accountSid})`,
    `From ${call.from ?? "-"} to ${call.to ?? "-"}`,
  ];
  if (call.node !== null) lines.push(`Answered by node ${call.node}`);
  const ended = call.endedAt === null
    ? "still open"
    : `ended ${formatTime(call.endedAt)} (${formatDuration(call.endedAt - call.startedAt)})`;
  const outcome = call.outcome === null ? "" : `, outcome ${call.outcome}`;
  const reason = call.reason ? `: ${call.reason}` : "";
  lines.push(`Started ${formatTime(call.startedAt)}, ${ended}${outcome}${reason}`);
  const params = Object.entries(call.customParameters);
  if (params.length > 0) {
    lines.push(`Parameters: ${params.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")}`);
  }
  if (call.counters) {
    lines.push(
      `Counters: ${Object.entries(call.counters).map(([k, v]) => `${k}=${v}`).join(" ")}`,
    );
  }
  lines.push("Latency (ms)          p50      p90");
  for (const name of LATENCY_NAMES) {
    const { p50, p90 } = call.latency[name];
    lines.push(`  ${name.padEnd(18)}  ${formatMs(p50).padStart(7)}  ${formatMs(p90).padStart(7)}`);
  }
  lines.push(`Transcript (${detail.turns.length} turns)`);
  for (const turn of detail.turns) lines.push(...formatTurn(call, turn));
  if (detail.toolCalls.length > 0) lines.push(`Tool calls (${detail.toolCalls.length})`);
  for (const tool of detail.toolCalls) lines.push(formatToolCall(call, tool));
  if (detail.transfers.length > 0) lines.push(`Transfers (${detail.transfers.length})`);
  for (const transfer of detail.transfers) lines.push(formatTransfer(call, transfer));
  const marks = detail.events.filter((e) => e.kind === "mark").length;
  const others = detail.events.filter((e) => e.kind !== "mark");
  lines.push(`Events (${marks} marks not listed)`);
  for (const event of others) {
    const detailText = event.detail === "" ? "" : `  ${event.detail}`;
    lines.push(`  ${offset(call, event.at).padStart(7)}  ${event.kind}${detailText}`);
  }
  return lines;
}
