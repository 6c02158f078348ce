/**
 * The call history as the operator console reads it (SPEC 7): newest first, filtered by time range,
 * number, outcome and words said, one page at a time; the same contract over SQLite (FTS5) and the
 * fleet's PostgreSQL (full-text search with the `simple` configuration).
 *
 * Search semantics, alike on both: the text is cut into words (runs of letters and digits, any
 * script); a call matches when one of its turns holds every word as the start of a word ("תור"
 * finds "תורים", not "המתור"), case-insensitively.
 */
import type { CallDetail, CallRow } from "./read.ts";
import type { HistoryQuery } from "./_history_sql.ts";

export {
  type HistoryCursor,
  type HistoryQuery,
  MAX_PAGE,
  MAX_SEARCH_WORDS,
  numberDigits,
  searchWords,
} from "./_history_sql.ts";

/** Reads of the call history. Sees only what the store has written (not its queue). */
export interface CallHistory {
  /** Calls matching `query`, newest first. */
  searchCalls(query: HistoryQuery): Promise<CallRow[]>;
  /** One call with its turns and events, or null. */
  getCall(callSid: string): Promise<CallDetail | null>;
  /** Releases what the reads hold (a reader thread). */
  close(): Promise<void>;
}

/** A store that can open its history. */
export interface HistorySource {
  openHistory(): Promise<CallHistory>;
}

/** Whether `store` can open a history (the SQLite and PostgreSQL stores can; a null store cannot). */
export function hasHistory<T extends object>(store: T): store is T & HistorySource {
  return typeof (store as Partial<HistorySource>).openHistory === "function";
}
