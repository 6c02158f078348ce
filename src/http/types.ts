/** What the HTTP layer needs from the rest of Kav. */

import type { Config } from "../config/types.ts";
import type { Logger } from "../observe/log.ts";
import type { HandOffs } from "../call/hand_off.ts";

/**
 * What the agent decided for a call, read by the action routes (SPEC 6): from memory
 * (`src/call/hand_off.ts`'s `HandOffBoard`), or on a call worker from the main thread's board.
 */
export type CallControl = Pick<HandOffs, "action" | "dialEnded">;

/** Takes accepted media WebSockets; `src/call/manager.ts`'s `CallManager` implements it. */
export interface MediaCallAcceptor {
  /** False when at `server.max_calls` or draining: the upgrade is answered 503. */
  canAccept(): boolean;
  /** Owns `socket` from here on (it may still be CONNECTING). `remoteAddr` is "host:port". */
  attach(socket: WebSocket, meta: { readonly remoteAddr: string }): void;
}

/** Which stream webhook delivered a status event. */
export type StreamWebhook = "stream_status" | "stream_ended";

/** Form fields of a status callback (a repeated name keeps its last value). */
export type StatusParams = Readonly<Record<string, string>>;

export interface HandlerDeps {
  readonly config: Config;
  readonly log: Logger;
  readonly calls: MediaCallAcceptor;
  /**
   * A verified stream status callback, delivered after its 204 is built and never awaited; a
   * throw or rejection is logged.
   */
  onStatusEvent(params: StatusParams, webhook: StreamWebhook): void | Promise<void>;
  /** True once shutdown began: /healthz says 503 and new calls are refused. */
  isDraining(): boolean;
  /** True until every call worker listens: /healthz says 503 "starting". Default never. */
  isStarting?(): boolean;
  /** The `/metrics` body: the process's series, summed over call workers. Default this thread's. */
  metricsText?(): string | Promise<string>;
  /** `POST /__test/worker` (only with `KAV_TEST_HOOKS=1`): ends a call worker (tests). */
  testHook?(form: URLSearchParams): Promise<Response>;
  /** The call worker serving these routes (named in refusal lines); none on a single thread. */
  readonly worker?: number;
  /** Time allowed to receive a webhook body, ms (default `BODY_TIMEOUT_MS`, 10 s); then 408. */
  readonly bodyTimeoutMs?: number;
  /** Agent transfers and hang-ups (SPEC 6); without it every call's action request gets 204. */
  readonly callControl?: CallControl;
  /** A verified `/webhook/dial_ended`, delivered after its answer is built, never awaited. */
  onDialEnded?(params: StatusParams): void;
}
