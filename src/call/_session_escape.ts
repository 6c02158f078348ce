/**
 * The last line of containment. Every per-call task runs under the call's AbortSignal and reports
 * its errors to its own call; an error that escapes anyway (an unhandled rejection or an uncaught
 * exception, typically inside a provider library) reaches the process-level handlers installed
 * here. They keep the process up (`preventDefault()`), count the error
 * (`kav_unhandled_errors_total{kind}`), log it with the call sid when the runtime still knows which
 * call's async context it came from, and end that call (outcome `error`, with a record).
 *
 * Attribution uses `AsyncLocalStorage`: the session runs its socket handlers, its start-up and its
 * speech loop inside `inCallScope`, so promises and timers they create inherit the call. Deno
 * dispatches `unhandledrejection` inside the rejecting task's context; an exception thrown straight
 * out of a timer callback loses it, so it is logged with `call=-` (still counted, process still up).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { Logger } from "../observe/log.ts";
import { unhandledError } from "../observe/metrics.ts";

/** What the escape handlers need from the call an error came from. */
export interface CallScope {
  /** The call's current name: the CallSid once `start` arrived, else the connection id. */
  readonly sid: () => string;
  /** Ends the call with outcome `error` (idempotent). */
  readonly fail: (error: unknown) => void;
}

const scope = new AsyncLocalStorage<CallScope>();

/** Runs `fn(...args)` (and everything async it starts) as part of `call`. */
export function inCallScope<A extends unknown[], T>(
  call: CallScope,
  fn: (...args: A) => T,
  ...args: A
): T {
  return scope.run(call, fn, ...args);
}

/** The call whose async context is running, if any. */
export function currentCallScope(): CallScope | undefined {
  return scope.getStore();
}

/** Loggers of the installs still active; the newest gets the lines (one Kav per process in production). */
const loggers: Logger[] = [];

function describe(error: unknown): string {
  try {
    const text = error instanceof Error ? error.message : String(error);
    return text.length > 200 ? `${text.slice(0, 200)}…` : text;
  } catch {
    return "unprintable error";
  }
}

function report(kind: "rejection" | "exception", error: unknown): void {
  unhandledError(kind);
  const call = scope.getStore();
  const log = loggers[loggers.length - 1];
  let sid: string | null = null;
  try {
    sid = call?.sid() ?? null;
  } catch {
    sid = null;
  }
  log?.error("CALL", "unhandled error", { call: sid, kind, error: describe(error) });
  if (call === undefined) return;
  try {
    call.fail(new Error(`Unhandled ${kind}: ${describe(error)}`, { cause: error }));
  } catch {
    // Failing the call is best effort: the process must stay up whatever happens here.
  }
}

function onRejection(event: PromiseRejectionEvent): void {
  event.preventDefault();
  report("rejection", event.reason);
}

function onError(event: ErrorEvent): void {
  event.preventDefault();
  report("exception", event.error ?? event.message);
}

/**
 * Installs the process-level `unhandledrejection` and `error` handlers (once, however many Kavs run
 * in the process) and logs through `log` while installed. Returns the uninstaller.
 */
export function installEscapeHandlers(log: Logger): () => void {
  if (loggers.length === 0) {
    globalThis.addEventListener("unhandledrejection", onRejection);
    globalThis.addEventListener("error", onError);
  }
  loggers.push(log);
  let installed = true;
  return () => {
    if (!installed) return;
    installed = false;
    loggers.splice(loggers.lastIndexOf(log), 1);
    if (loggers.length === 0) {
      globalThis.removeEventListener("unhandledrejection", onRejection);
      globalThis.removeEventListener("error", onError);
    }
  };
}
