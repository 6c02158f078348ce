/**
 * Reads of the fleet store: the same `CallRow`/`CallDetail` as SQLite's `CallReader`, from every
 * node's calls. Used by `kav calls`, the CRM summary (inside the transaction that ends a call) and
 * tests. Sees only what is committed.
 */
import type { CallEvent, TurnRecord } from "./types.ts";
import {
  type CallDetail,
  type CallRow,
  pageSize,
  type Row,
  toCallRow,
  toEvent,
  toToolCall,
  toTransfer,
  toTurn,
} from "./read.ts";
import { type HistoryQuery, historyWhere } from "./_history_sql.ts";
import type { PgQueryable } from "./_pg_client.ts";

const CALL_SELECT =
  "SELECT c.*, (SELECT count(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turn_count FROM calls c";
const LIST =
  `${CALL_SELECT} WHERE c.started_at >= $1 ORDER BY c.started_at DESC, c.call_sid DESC LIMIT $2`;
const ONE = `${CALL_SELECT} WHERE c.call_sid = $1`;
const TURNS = "SELECT * FROM turns WHERE call_sid = $1 ORDER BY idx";
const EVENTS = "SELECT * FROM events WHERE call_sid = $1 ORDER BY at, id";
const TOOLS = "SELECT * FROM tool_calls WHERE call_sid = $1 ORDER BY at, id";
const TRANSFERS = "SELECT * FROM transfers WHERE call_sid = $1 ORDER BY at, id";

const PG_DIALECT = {
  placeholder: (index: number) => `$${index}`,
  // The expression of the turns_text_search index, so the planner can use it.
  textMatch: (words: readonly string[], param: (value: string) => string) =>
    "EXISTS (SELECT 1 FROM turns t WHERE t.call_sid = c.call_sid AND " +
    `to_tsvector('simple', t.text) @@ to_tsquery('simple', ${
      param(words.map((word) => `${word}:*`).join(" & "))
    }))`,
};

/** Typed reads over a pool or a transaction. */
export class PgCallReader {
  readonly #sql: PgQueryable;

  constructor(sql: PgQueryable) {
    this.#sql = sql;
  }

  /** Calls started at or after `sinceMs`, oldest first; the most recent `limit` (default 1000). */
  async listCalls(options: { sinceMs: number; limit?: number }): Promise<CallRow[]> {
    const rows = await this.#sql.unsafe<Row[]>(LIST, [options.sinceMs, options.limit ?? 1000]);
    return rows.map(toCallRow).reverse();
  }

  /** Calls matching `query`, newest first (see `history.ts`). */
  async searchCalls(query: HistoryQuery): Promise<CallRow[]> {
    const { where, params } = historyWhere(query, PG_DIALECT);
    const sql = `${CALL_SELECT} WHERE ${where} ` +
      `ORDER BY c.started_at DESC, c.call_sid DESC LIMIT ${pageSize(query.limit)}`;
    return (await this.#sql.unsafe<Row[]>(sql, params)).map(toCallRow);
  }

  async getCallRow(callSid: string): Promise<CallRow | null> {
    const [row] = await this.#sql.unsafe<Row[]>(ONE, [callSid]);
    return row === undefined ? null : toCallRow(row);
  }

  /** The call with its turns and events, or null when no such call is stored. */
  async getCall(callSid: string): Promise<CallDetail | null> {
    const call = await this.getCallRow(callSid);
    if (call === null) return null;
    return {
      call,
      turns: await this.turns(callSid),
      events: await this.events(callSid),
      toolCalls: (await this.#sql.unsafe<Row[]>(TOOLS, [callSid])).map(toToolCall),
      transfers: (await this.#sql.unsafe<Row[]>(TRANSFERS, [callSid])).map(toTransfer),
    };
  }

  async turns(callSid: string): Promise<TurnRecord[]> {
    return (await this.#sql.unsafe<Row[]>(TURNS, [callSid])).map(toTurn);
  }

  async events(callSid: string): Promise<CallEvent[]> {
    const out: CallEvent[] = [];
    for (const row of await this.#sql.unsafe<Row[]>(EVENTS, [callSid])) {
      const event = toEvent(row);
      if (event) out.push(event);
    }
    return out;
  }
}
