/**
 * The messages between the main thread and a call worker (structured-cloned by `postMessage`),
 * and the one request/reply channel both sides use. Everything a worker needs from the process
 * (the store's single writer, the summed `/metrics`, the hand-off board, reload and drain) goes
 * through here; `shared_state.ts` carries what must be read without a message.
 */
import type { CallAction, HandOff, Resume } from "../call/hand_off.ts";
import type { LiveSnapshot } from "../call/live.ts";
import type { Config } from "../config/types.ts";
import type { MetricsSnapshot } from "../observe/metrics.ts";
import type { StoreOp } from "../store/_writer.ts";

/** What a call worker gets at start (`workerData`). */
export interface WorkerInit {
  /** The worker's slot in the shared state (0 … workers-1). */
  readonly slot: number;
  /** How many times this slot's worker was started (1 for the first). */
  readonly generation: number;
  /** The config Kav booted with (providers, limits, listen address). */
  readonly config: Config;
  /** The config new calls take their script from (the last reload's). */
  readonly script: Config;
  /** The fixed phrases' audio for `script`. */
  readonly phrases: readonly (readonly [string, Uint8Array])[];
  readonly shared: SharedArrayBuffer;
  /** The port every worker listens on (worker 0 may bind port 0 and report the real one). */
  readonly port: number;
  /** `KAV_TEST_HOOKS=1`: the `/__test/worker` route exists. */
  readonly testHooks: boolean;
  /** The operator console is on: send the live calls every `LIVE_PUSH_MS`. */
  readonly console: boolean;
}

/** One call-record write, as `CallStore`'s methods take it. */
export type RecordOp = StoreOp;

export type LogLevel = "info" | "warn" | "error";

/** How the test hook ends a worker (`KAV_TEST_HOOKS=1` only). */
export type CrashKind = "terminate" | "throw" | "oom" | "hang";

/** Requests a worker sends to the main thread. */
export type WorkerRequest =
  | { readonly kind: "metrics-text" }
  | { readonly kind: "records-flush" }
  | { readonly kind: "handoff-set"; readonly callSid: string; readonly handOff: HandOff }
  | { readonly kind: "handoff-action"; readonly callSid: string }
  | { readonly kind: "handoff-dial-ended"; readonly callSid: string; readonly status: string }
  | { readonly kind: "handoff-take-resume"; readonly callSid: string }
  | { readonly kind: "test-crash"; readonly slot: number; readonly how: CrashKind };

/** Requests the main thread sends to a worker. */
export type MainRequest =
  | {
    readonly kind: "reload";
    readonly script: Config;
    readonly phrases: readonly (readonly [string, Uint8Array])[];
  }
  | { readonly kind: "drain"; readonly timeoutMs: number }
  | { readonly kind: "stop" }
  | { readonly kind: "metrics" };

export type DrainDone = { readonly finished: number; readonly forced: number };

/** Messages from a worker. */
export type FromWorker =
  | {
    readonly type: "out";
    readonly logs: readonly (readonly [LogLevel, string])[];
    readonly records: readonly RecordOp[];
  }
  | { readonly type: "metrics"; readonly snapshot: MetricsSnapshot }
  | { readonly type: "live"; readonly snapshot: LiveSnapshot }
  | { readonly type: "listening"; readonly port: number; readonly hostname: string }
  | { readonly type: "failed"; readonly error: string }
  | { readonly type: "request"; readonly id: number; readonly body: WorkerRequest }
  | Reply;

/** Messages to a worker. */
export type ToWorker =
  | { readonly type: "request"; readonly id: number; readonly body: MainRequest }
  | { readonly type: "crash"; readonly how: Exclude<CrashKind, "terminate"> }
  | Reply;

export type Reply =
  | { readonly type: "reply"; readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly type: "reply"; readonly id: number; readonly ok: false; readonly error: string };

/** What each request resolves to, by kind. */
export interface MainReplies {
  readonly reload: null;
  readonly drain: DrainDone;
  readonly stop: null;
  readonly metrics: MetricsSnapshot;
}

export interface WorkerReplies {
  readonly "metrics-text": string;
  readonly "records-flush": null;
  readonly "handoff-set": null;
  readonly "handoff-action": CallAction | null;
  readonly "handoff-dial-ended": string | null;
  readonly "handoff-take-resume": Resume | null;
  readonly "test-crash": null;
}

type Timer = ReturnType<typeof setTimeout>;

/** One end of a `postMessage` link: a node `Worker` or the worker's `parentPort`. */
export interface MessageLink {
  postMessage(message: unknown): void;
}

/**
 * Request/reply over a link: `request` resolves with the other side's answer, or rejects when it
 * answered an error, did not answer within `timeoutMs`, or the link closed.
 */
export class Requests<Body extends { kind: string }, Replies> {
  readonly #link: MessageLink;
  readonly #pending = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (error: Error) => void; timer?: Timer }
  >();
  #next = 0;
  #closed: string | null = null;
  /** Runs before each message is posted (the worker flushes its logs and records first). */
  readonly #beforePost: () => void;

  constructor(link: MessageLink, beforePost: () => void = () => {}) {
    this.#link = link;
    this.#beforePost = beforePost;
  }

  request<B extends Body>(
    body: B,
    options: { timeoutMs?: number } = {},
  ): Promise<B["kind"] extends keyof Replies ? Replies[B["kind"]] : never> {
    type Answer = B["kind"] extends keyof Replies ? Replies[B["kind"]] : never;
    if (this.#closed !== null) return Promise.reject(new Error(this.#closed));
    const id = ++this.#next;
    const { promise, resolve, reject } = Promise.withResolvers<Answer>();
    const entry: { resolve: (v: unknown) => void; reject: (e: Error) => void; timer?: Timer } = {
      resolve: (value) => resolve(value as Answer),
      reject,
    };
    if (options.timeoutMs !== undefined) {
      entry.timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`No answer to ${body.kind} within ${options.timeoutMs} ms`));
      }, options.timeoutMs);
    }
    this.#pending.set(id, entry);
    this.#beforePost();
    this.#link.postMessage({ type: "request", id, body });
    return promise;
  }

  /** Settles the request a reply answers; false when it is not one of ours (late, timed out). */
  settle(reply: Reply): boolean {
    const entry = this.#pending.get(reply.id);
    if (entry === undefined) return false;
    this.#pending.delete(reply.id);
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    if (reply.ok) entry.resolve(reply.value);
    else entry.reject(new Error(reply.error));
    return true;
  }

  /** Answers a request from the other side with `answer`'s value or error. */
  answer(id: number, answer: () => unknown): void {
    let result: Promise<unknown>;
    try {
      result = Promise.resolve(answer());
    } catch (error) {
      result = Promise.reject(error);
    }
    result.then(
      (value) => this.#post({ type: "reply", id, ok: true, value }),
      (error) =>
        this.#post({
          type: "reply",
          id,
          ok: false,
          error: error instanceof Error ? error.message : String(error),
        }),
    );
  }

  /** Rejects every pending request (the other side is gone). */
  close(reason: string): void {
    this.#closed = reason;
    for (const [id, entry] of this.#pending) {
      this.#pending.delete(id);
      if (entry.timer !== undefined) clearTimeout(entry.timer);
      entry.reject(new Error(reason));
    }
  }

  #post(message: Reply): void {
    if (this.#closed !== null) return;
    this.#beforePost();
    try {
      this.#link.postMessage(message);
    } catch {
      // The other side is gone; its requests die with it.
    }
  }
}
