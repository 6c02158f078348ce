/** The `/api/calls` query string as a `HistoryQuery`; bad parameters are a `QueryError` (400). */
import type { CallOutcome } from "../store/types.ts";
import { type HistoryQuery, MAX_PAGE, numberDigits } from "../store/history.ts";

/** A query parameter the API cannot use; its message names the parameter and the value. */
export class QueryError extends Error {
  override name = "QueryError";
}

/** Calls on one page unless `limit` says otherwise. */
export const DEFAULT_PAGE = 50;
/** Longest search text accepted. */
const MAX_TEXT = 200;

const OUTCOMES: ReadonlySet<string> = new Set<CallOutcome | "open">([
  "completed",
  "interrupted",
  "idle",
  "max_duration",
  "drained",
  "error",
  "rejected",
  "open",
]);

function bad(name: string, value: string, expected: string): QueryError {
  return new QueryError(`Cannot use ${name}=${JSON.stringify(value.slice(0, 80))}: ${expected}`);
}

/** Epoch ms, or an ISO 8601 date/time ("2025-01-15", "2025-01-15T10:00:00Z"). */
function time(name: string, value: string): number {
  if (/^\d{1,15}$/.test(value)) return Number(value);
  const ms = /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : NaN;
  if (Number.isNaN(ms)) throw bad(name, value, "expected epoch milliseconds or an ISO date");
  return ms;
}

export function historyQuery(params: URLSearchParams): HistoryQuery {
  const get = (name: string) => {
    const value = params.get(name);
    return value === null || value.trim() === "" ? null : value.trim();
  };
  const limitText = get("limit");
  const limit = limitText === null ? DEFAULT_PAGE : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) {
    throw bad("limit", limitText ?? "", `expected a whole number from 1 to ${MAX_PAGE}`);
  }
  const since = get("since");
  const until = get("until");
  const number = get("number");
  if (number !== null && numberDigits(number) === "") {
    throw bad("number", number, "expected digits of a phone number");
  }
  const outcome = get("outcome");
  if (outcome !== null && !OUTCOMES.has(outcome)) {
    throw bad("outcome", outcome, `expected one of ${[...OUTCOMES].join(", ")}`);
  }
  const text = get("q");
  if (text !== null && text.length > MAX_TEXT) {
    throw bad("q", text, `expected at most ${MAX_TEXT} characters`);
  }
  const before = get("before");
  let cursor: HistoryQuery["before"] = null;
  if (before !== null) {
    const match = /^(\d{1,15}):([A-Za-z0-9_-]{1,64})$/.exec(before);
    if (match === null) throw bad("before", before, "expected the `next` of a previous page");
    cursor = { startedAt: Number(match[1]), callSid: match[2] };
  }
  return {
    limit,
    sinceMs: since === null ? null : time("since", since),
    untilMs: until === null ? null : time("until", until),
    number,
    outcome: outcome as CallOutcome | "open" | null,
    text,
    before: cursor,
  };
}
