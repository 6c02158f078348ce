/**
 * Typed reads of the call store, for the CLI, the CRM summary and tests. Reads see what is on disk:
 * writes still queued in a live store are not visible until its next flush.
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import type {
  CallCounters,
  CallEvent,
  CallEventKind,
  CallOutcome,
  ToolCallRecord,
  TurnRecord,
  TurnTimings,
} from "./types.ts";
import { LATENCY_NAMES, SCHEMA_VERSION, schemaVersion } from "./_schema.ts";
import { type HistoryQuery, historyWhere, MAX_PAGE } from "./_history_sql.ts";

export type LatencyName = typeof LATENCY_NAMES[number];

/** p50/p90 of one latency over a call's turns, in ms; null when no turn measured it. */
export interface LatencyPercentiles {
  readonly p50: number | null;
  readonly p90: number | null;
}

export type LatencySummary = { readonly [K in LatencyName]: LatencyPercentiles };

/** One call as stored. Times are epoch ms; `endedAt`/`outcome` are null while the call is open. */
export interface CallRow {
  readonly callSid: string;
  /** The node that answered (`server.node_id`); null for calls recorded before nodes were named. */
  readonly node: string | null;
  readonly streamSid: string;
  readonly accountSid: string;
  readonly from: string | null;
  readonly to: string | null;
  readonly customParameters: Readonly<Record<string, string>>;
  readonly startedAt: number;
  readonly endedAt: number | null;
  readonly outcome: CallOutcome | null;
  readonly reason: string | null;
  /** Null while open and for calls closed as `interrupted` (the counters died with the process). */
  readonly counters: CallCounters | null;
  /** Number of stored turns. */
  readonly turns: number;
  /** Per-call percentiles, computed when the call ended; all null while open. */
  readonly latency: LatencySummary;
}

/** A transfer with Twilio's dial outcome (null until `/webhook/dial_ended` reported it). */
export interface TransferDetail {
  readonly at: number;
  readonly department: string;
  readonly target: string;
  readonly dialStatus: string | null;
  readonly dialEndedAt: number | null;
  readonly dialDurationS: number | null;
}

/** A call with its transcript (by turn index), events, tool calls and transfers (by time). */
export interface CallDetail {
  readonly call: CallRow;
  readonly turns: readonly TurnRecord[];
  readonly events: readonly CallEvent[];
  readonly toolCalls: readonly ToolCallRecord[];
  readonly transfers: readonly TransferDetail[];
}

// Records keyed by the unions: adding an outcome or event kind to types.ts fails to compile here
// until it is listed, instead of being silently filtered out on read.
const OUTCOME_NAMES: Readonly<Record<CallOutcome, true>> = {
  completed: true,
  interrupted: true,
  idle: true,
  max_duration: true,
  drained: true,
  error: true,
  rejected: true,
  transferred: true,
  agent_hangup: true,
};
const EVENT_KIND_NAMES: Readonly<Record<CallEventKind, true>> = {
  mark: true,
  clear: true,
  dtmf: true,
  stt_restart: true,
  provider_error: true,
  malformed: true,
  barge_in: true,
  limit: true,
  stream_status: true,
  action_cancelled: true,
  caller_context: true,
};
const OUTCOMES: ReadonlySet<string> = new Set(Object.keys(OUTCOME_NAMES));
const EVENT_KINDS: ReadonlySet<string> = new Set(Object.keys(EVENT_KIND_NAMES));

export type Row = Record<string, unknown>;

function text(row: Row, key: string): string {
  const value = row[key];
  if (typeof value !== "string") throw new TypeError(`Cannot read column "${key}": not text`);
  return value;
}

function optText(row: Row, key: string): string | null {
  return row[key] === null ? null : text(row, key);
}

function num(row: Row, key: string): number {
  const value = row[key];
  if (typeof value !== "number") throw new TypeError(`Cannot read column "${key}": not a number`);
  return value;
}

function optNum(row: Row, key: string): number | null {
  return row[key] === null ? null : num(row, key);
}

function parseParameters(json: string): Record<string, string> {
  const parsed: unknown = JSON.parse(json);
  const out: Record<string, string> = {};
  if (typeof parsed !== "object" || parsed === null) return out;
  for (const [key, value] of Object.entries(parsed)) {
    if (typeof value === "string") out[key] = value;
  }
  return out;
}

/** A `calls` row (with `turn_count`) as a `CallRow`; SQLite and PostgreSQL rows read alike. */
export function toCallRow(row: Row): CallRow {
  const outcome = optText(row, "outcome");
  const latency = {} as Record<LatencyName, LatencyPercentiles>;
  for (const name of LATENCY_NAMES) {
    latency[name] = { p50: optNum(row, `${name}_p50`), p90: optNum(row, `${name}_p90`) };
  }
  return {
    callSid: text(row, "call_sid"),
    node: optText(row, "node_id"),
    streamSid: text(row, "stream_sid"),
    accountSid: text(row, "account_sid"),
    from: optText(row, "from_number"),
    to: optText(row, "to_number"),
    customParameters: parseParameters(text(row, "custom_parameters")),
    startedAt: num(row, "started_at"),
    endedAt: optNum(row, "ended_at"),
    outcome: outcome !== null && OUTCOMES.has(outcome) ? outcome as CallOutcome : null,
    reason: optText(row, "reason"),
    counters: row.rx_frames === null ? null : {
      rx_frames: num(row, "rx_frames"),
      rx_drops: num(row, "rx_drops"),
      tx_frames: num(row, "tx_frames"),
      tx_drops: num(row, "tx_drops"),
      tx_late: num(row, "tx_late"),
      malformed: num(row, "malformed"),
    },
    turns: num(row, "turn_count"),
    latency,
  };
}

/** A `turns` row as a `TurnRecord`. */
export function toTurn(row: Row): TurnRecord {
  let timings: TurnTimings | null = null;
  if (num(row, "has_timings") === 1) {
    const t = {} as Record<LatencyName, number | null>;
    for (const name of LATENCY_NAMES) t[name] = optNum(row, name);
    timings = t;
  }
  const speaker = text(row, "speaker");
  return {
    index: num(row, "idx"),
    speaker: speaker === "agent" ? "agent" : "caller",
    text: text(row, "text"),
    generated: optText(row, "generated"),
    cut: num(row, "cut") === 1,
    startedAt: num(row, "started_at"),
    endedAt: num(row, "ended_at"),
    timings,
    ...(row.input === "keypad" ? { input: "keypad" as const } : {}),
  };
}

/** A `tool_calls` row as a `ToolCallRecord`. */
export function toToolCall(row: Row): ToolCallRecord {
  return {
    at: num(row, "at"),
    toolCallId: text(row, "tool_call_id"),
    name: text(row, "name"),
    arguments: text(row, "arguments"),
    result: optText(row, "result"),
    error: optText(row, "error"),
    ms: num(row, "ms"),
  };
}

/** A `transfers` row as a `TransferDetail`. */
export function toTransfer(row: Row): TransferDetail {
  return {
    at: num(row, "at"),
    department: text(row, "department"),
    target: text(row, "target"),
    dialStatus: optText(row, "dial_status"),
    dialEndedAt: optNum(row, "dial_ended_at"),
    dialDurationS: optNum(row, "dial_duration_s"),
  };
}

/** An `events` row as a `CallEvent`; null for a kind this build does not know. */
export function toEvent(row: Row): CallEvent | null {
  const kind = text(row, "kind");
  if (!EVENT_KINDS.has(kind)) return null;
  return { kind: kind as CallEventKind, at: num(row, "at"), detail: text(row, "detail") };
}

const CALL_SELECT =
  "SELECT c.*, (SELECT count(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turn_count FROM calls c";

/** `limit` as a whole number within 1 to {@link MAX_PAGE}. */
export function pageSize(limit: number): number {
  return Math.max(1, Math.min(MAX_PAGE, Math.trunc(limit) || 1));
}

const SQLITE_DIALECT = {
  placeholder: (index: number) => `?${index}`,
  textMatch: (words: readonly string[], param: (value: string) => string) =>
    "c.call_sid IN (SELECT t.call_sid FROM turns_fts f JOIN turns t ON t.rowid = f.rowid " +
    `WHERE turns_fts MATCH ${param(words.map((word) => `"${word}"*`).join(" "))})`,
};

/** Prepared read queries over one connection. */
export class CallReader {
  readonly #db: DatabaseSync;
  readonly #list: StatementSync;
  readonly #call: StatementSync;
  readonly #turns: StatementSync;
  readonly #events: StatementSync;
  readonly #tools: StatementSync;
  readonly #transfers: StatementSync;

  constructor(db: DatabaseSync) {
    this.#db = db;
    this.#list = db.prepare(
      `${CALL_SELECT} WHERE c.started_at >= ? ORDER BY c.started_at DESC, c.call_sid DESC LIMIT ?`,
    );
    this.#call = db.prepare(`${CALL_SELECT} WHERE c.call_sid = ?`);
    this.#turns = db.prepare("SELECT * FROM turns WHERE call_sid = ? ORDER BY idx");
    this.#events = db.prepare("SELECT * FROM events WHERE call_sid = ? ORDER BY at, id");
    this.#tools = db.prepare("SELECT * FROM tool_calls WHERE call_sid = ? ORDER BY at, id");
    this.#transfers = db.prepare("SELECT * FROM transfers WHERE call_sid = ? ORDER BY at, id");
  }

  /**
   * Calls started at or after `sinceMs` (epoch ms), oldest first; at most `limit` (default 1000), the
   * most recent ones when there are more.
   */
  listCalls(options: { sinceMs: number; limit?: number }): CallRow[] {
    const rows = this.#list.all(options.sinceMs, options.limit ?? 1000) as Row[];
    return rows.map(toCallRow).reverse();
  }

  /** Calls matching `query`, newest first (FTS5 for the words; see `history.ts`). */
  searchCalls(query: HistoryQuery): CallRow[] {
    const { where, params } = historyWhere(query, SQLITE_DIALECT);
    const sql = `${CALL_SELECT} WHERE ${where} ` +
      `ORDER BY c.started_at DESC, c.call_sid DESC LIMIT ${pageSize(query.limit)}`;
    return (this.#db.prepare(sql).all(...params) as Row[]).map(toCallRow);
  }

  /** The call row alone, or null. */
  getCallRow(callSid: string): CallRow | null {
    const row = this.#call.get(callSid) as Row | undefined;
    return row ? toCallRow(row) : null;
  }

  /** The call with its turns and events, or null when no such call is stored. */
  getCall(callSid: string): CallDetail | null {
    const call = this.getCallRow(callSid);
    if (!call) return null;
    return {
      call,
      turns: this.turns(callSid),
      events: this.events(callSid),
      toolCalls: (this.#tools.all(callSid) as Row[]).map(toToolCall),
      transfers: (this.#transfers.all(callSid) as Row[]).map(toTransfer),
    };
  }

  turns(callSid: string): TurnRecord[] {
    return (this.#turns.all(callSid) as Row[]).map(toTurn);
  }

  events(callSid: string): CallEvent[] {
    const out: CallEvent[] = [];
    for (const row of this.#events.all(callSid) as Row[]) {
      const event = toEvent(row);
      if (event) out.push(event);
    }
    return out;
  }

  /** One-off query for tests and tools; `params` are positional. */
  query(sql: string, ...params: SQLInputValue[]): Record<string, unknown>[] {
    return this.#db.prepare(sql).all(...params) as Row[];
  }
}

/** A read-only reader for `path`, for the CLI: never creates the file or migrates it. */
export function openCallReader(path: string): CallReader & { close(): void } {
  let db: DatabaseSync;
  try {
    Deno.statSync(path);
    db = new DatabaseSync(path, { readOnly: true });
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound ? "no such file" : String(error);
    throw new Error(`Cannot open call store "${path}": ${why}`, { cause: error });
  }
  const version = schemaVersion(db);
  if (version !== SCHEMA_VERSION) {
    db.close();
    throw new RangeError(
      `Cannot read call store "${path}": schema version ${version}, this build reads ${SCHEMA_VERSION}`,
    );
  }
  const reader = new CallReader(db);
  return Object.assign(reader, { close: () => db.close() });
}
