/**
 * The SQLite store's history for the console: reads on a worker thread (`_read_worker.ts`) with
 * its own read-only connection, so a slow search never holds the main thread. Where the worker
 * cannot run (an in-memory store, or a build without the worker module) reads run in-thread on the
 * store's own connection: correct, at the cost of that stall.
 */
import type { Logger } from "../observe/log.ts";
import type { CallDetail, CallReader, CallRow } from "./read.ts";
import type { CallHistory } from "./history.ts";
import type { HistoryQuery } from "./_history_sql.ts";
import type { ReadReply, ReadRequest } from "./_read_worker.ts";

/** A read taking longer than this is answered with an error (the worker keeps going). */
const READ_TIMEOUT_MS = 10_000;
/** Reads waiting at once; more are refused rather than queued without bound. */
const MAX_PENDING = 32;

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };

/** Opens the history of the store at `path`; `fallback` reads in-thread when no worker can. */
export async function openSqliteHistory(options: {
  path: string;
  log: Logger;
  fallback: CallReader;
  /** Tests point this at a missing module to exercise the fallback. */
  workerUrl?: string;
}): Promise<CallHistory> {
  const { path, log, fallback } = options;
  if (path === ":memory:") return inThread(fallback);
  let worker: Worker;
  try {
    const url = options.workerUrl ?? new URL("./_read_worker.ts", import.meta.url).href;
    worker = new Worker(url, { type: "module" });
  } catch (error) {
    log.warn("STORE", "history reads on the main thread", { reason: String(error) });
    return inThread(fallback);
  }
  const history = new WorkerHistory(worker);
  try {
    await history.request({ op: "open", path });
  } catch (error) {
    worker.terminate();
    log.warn("STORE", "history reads on the main thread", { reason: String(error) });
    return inThread(fallback);
  }
  return history;
}

function inThread(reader: CallReader): CallHistory {
  return {
    searchCalls: (query) => Promise.resolve(reader.searchCalls(query)),
    getCall: (callSid) => Promise.resolve(reader.getCall(callSid)),
    close: () => Promise.resolve(),
  };
}

class WorkerHistory implements CallHistory {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  #failed: Error | null = null;
  #closed: Promise<void> | null = null;

  constructor(worker: Worker) {
    this.#worker = worker;
    worker.addEventListener("message", (event: MessageEvent<ReadReply>) => {
      const reply = event.data;
      const pending = this.#pending.get(reply.id);
      if (pending === undefined) return;
      this.#pending.delete(reply.id);
      if (reply.ok) pending.resolve(reply.value);
      else pending.reject(new Error(`Cannot read the call history: ${reply.error}`));
    });
    worker.addEventListener("error", (event) => {
      // Without preventDefault a worker's error would take the whole process down.
      event.preventDefault();
      this.#failed = new Error(`Cannot read the call history: ${event.message}`);
      for (const pending of this.#pending.values()) pending.reject(this.#failed);
      this.#pending.clear();
    });
  }

  async searchCalls(query: HistoryQuery): Promise<CallRow[]> {
    return await this.request({ op: "search", query }) as CallRow[];
  }

  async getCall(callSid: string): Promise<CallDetail | null> {
    return await this.request({ op: "get", callSid }) as CallDetail | null;
  }

  close(): Promise<void> {
    this.#closed ??= this.request({ op: "close" }).catch(() => {}).then(() => {
      this.#worker.terminate();
    });
    return this.#closed;
  }

  /** Sends one request; rejects on the worker's error, a timeout, or too many waiting. */
  request(body: ReadRequestBody): Promise<unknown> {
    if (this.#failed !== null) return Promise.reject(this.#failed);
    if (this.#pending.size >= MAX_PENDING) {
      return Promise.reject(new Error("Cannot read the call history: too many reads waiting"));
    }
    const id = ++this.#nextId;
    const { promise, resolve, reject } = Promise.withResolvers<unknown>();
    const timer = setTimeout(() => {
      this.#pending.delete(id);
      reject(new Error(`Cannot read the call history: no answer within ${READ_TIMEOUT_MS} ms`));
    }, READ_TIMEOUT_MS);
    this.#pending.set(id, {
      resolve: (value) => (clearTimeout(timer), resolve(value)),
      reject: (error) => (clearTimeout(timer), reject(error)),
    });
    this.#worker.postMessage({ id, ...body } as ReadRequest);
    return promise;
  }
}

type ReadRequestBody = ReadRequest extends infer R ? R extends unknown ? Omit<R, "id"> : never
  : never;
