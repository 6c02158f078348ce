/**
 * The history query (`history.ts`) as SQL for both stores: the filters, the page cursor, and the
 * words of a search, each store matching them its own way (FTS5, PostgreSQL full-text).
 */
import type { CallOutcome } from "./types.ts";

/** Most calls one page may hold. */
export const MAX_PAGE = 200;
/** Most words one search may hold. */
export const MAX_SEARCH_WORDS = 8;

/** Where a page ends: the last call's start and CallSid (pages are newest first). */
export interface HistoryCursor {
  readonly startedAt: number;
  readonly callSid: string;
}

export interface HistoryQuery {
  /** 1 to {@link MAX_PAGE}. */
  readonly limit: number;
  /** Calls started at or after this epoch ms. */
  readonly sinceMs?: number | null;
  /** Calls started before this epoch ms. */
  readonly untilMs?: number | null;
  /** Digits found in the caller's or the called number. */
  readonly number?: string | null;
  /** One outcome, or "open" for calls not ended. */
  readonly outcome?: CallOutcome | "open" | null;
  /** Words said in the call (see `history.ts`). */
  readonly text?: string | null;
  /** Calls older than this one (the next page). */
  readonly before?: HistoryCursor | null;
}

/** The words of a search, lowercased, at most {@link MAX_SEARCH_WORDS}; [] when none. */
export function searchWords(text: string): string[] {
  const words = text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
  return [...new Set(words)].slice(0, MAX_SEARCH_WORDS);
}

/** The digits of a number filter ("+972 54-123" → "97254123"). */
export function numberDigits(text: string): string {
  return text.replace(/\D/g, "");
}

/** A parameterized WHERE clause (without "WHERE"); `placeholder(i)` names the i-th parameter. */
export function historyWhere(
  query: HistoryQuery,
  dialect: {
    placeholder: (index: number) => string;
    /** The clause that keeps calls with a turn holding every word; `param` binds a value. */
    textMatch: (words: readonly string[], param: (value: string) => string) => string;
  },
): { where: string; params: (string | number)[] } {
  const clauses: string[] = [];
  const params: (string | number)[] = [];
  const param = (value: string | number): string => {
    params.push(value);
    return dialect.placeholder(params.length);
  };
  if (query.sinceMs != null) clauses.push(`c.started_at >= ${param(query.sinceMs)}`);
  if (query.untilMs != null) clauses.push(`c.started_at < ${param(query.untilMs)}`);
  const digits = numberDigits(query.number ?? "");
  if (digits !== "") {
    const like = param(`%${digits}%`);
    clauses.push(`(c.from_number LIKE ${like} OR c.to_number LIKE ${like})`);
  }
  if (query.outcome === "open") clauses.push("c.ended_at IS NULL");
  else if (query.outcome != null) clauses.push(`c.outcome = ${param(query.outcome)}`);
  const words = searchWords(query.text ?? "");
  if (words.length > 0) clauses.push(dialect.textMatch(words, param));
  if (query.before != null) {
    const at = param(query.before.startedAt);
    const sid = param(query.before.callSid);
    clauses.push(`(c.started_at < ${at} OR (c.started_at = ${at} AND c.call_sid < ${sid}))`);
  }
  return { where: clauses.length === 0 ? "TRUE" : clauses.join(" AND "), params };
}
