/**
 * Runs the console's history reads on their own thread and read-only connection: a search over a
 * large store can take many milliseconds, which the 20 ms media paths on the main thread must not
 * wait for.
 *
 * Protocol: `{ id, op: "open", path }`, `{ id, op: "search", query }`, `{ id, op: "get", callSid }`
 * and `{ id, op: "close" }`, each answered `{ id, ok: true, value }` or `{ id, ok: false, error }`.
 */
import { DatabaseSync } from "node:sqlite";
import { CallReader } from "./read.ts";
import type { HistoryQuery } from "./_history_sql.ts";

export type ReadRequest =
  & { readonly id: number }
  & (
    | { readonly op: "open"; readonly path: string }
    | { readonly op: "search"; readonly query: HistoryQuery }
    | { readonly op: "get"; readonly callSid: string }
    | { readonly op: "close" }
  );

export type ReadReply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: string };

interface WorkerScope {
  onmessage: ((event: MessageEvent<ReadRequest>) => void) | null;
  postMessage(message: ReadReply): void;
}

const scope = globalThis as unknown as WorkerScope;
let db: DatabaseSync | null = null;
let reader: CallReader | null = null;

function answer(request: ReadRequest): unknown {
  switch (request.op) {
    case "open":
      db = new DatabaseSync(request.path, { readOnly: true });
      // The writer holds the lock for a batch at most: wait for it rather than fail.
      db.exec("PRAGMA busy_timeout = 2000");
      reader = new CallReader(db);
      return null;
    case "search":
      if (reader === null) throw new Error("Cannot search: the history is not open");
      return reader.searchCalls(request.query);
    case "get":
      if (reader === null) throw new Error("Cannot read a call: the history is not open");
      return reader.getCall(request.callSid);
    case "close":
      db?.close();
      db = reader = null;
      return null;
    default: {
      const unreachable: never = request;
      throw new TypeError(`Cannot answer ${JSON.stringify(unreachable)}`);
    }
  }
}

scope.onmessage = (event) => {
  const request = event.data;
  try {
    scope.postMessage({ id: request.id, ok: true, value: answer(request) });
  } catch (error) {
    scope.postMessage({
      id: request.id,
      ok: false,
      error: error instanceof Error ? error.message : String(error),
    });
  }
};
