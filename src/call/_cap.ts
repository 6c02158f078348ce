/** Awaiting something with a cap, cancelling the timer either way (no leaked timers). */
import type { Logger } from "../observe/log.ts";

/**
 * Resolves `true` when `promise` settles within `ms`, `false` when the cap is hit first or
 * `signal` aborts first.
 */
export async function settlesWithin(
  promise: Promise<unknown>,
  ms: number,
  signal?: AbortSignal,
): Promise<boolean> {
  if (signal?.aborted) return false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const capped = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
    onAbort = () => resolve(false);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([promise.then(() => true, () => true), capped]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
  }
}

/** Cap on each shutdown step (agent, speech session), ms. */
export const CLOSE_STEP_CAP_MS = 2000;

/** Runs one shutdown step, awaited up to `CLOSE_STEP_CAP_MS`; failures are logged, not thrown. */
export async function closeCapped(
  what: string,
  close: () => Promise<void>,
  log: Logger,
): Promise<void> {
  let run: Promise<void>;
  try {
    run = close();
  } catch (error) {
    run = Promise.reject(error);
  }
  run.catch((error) => log.warn("CALL", `${what} close failed`, { error: String(error) }));
  if (!(await settlesWithin(run, CLOSE_STEP_CAP_MS))) {
    log.warn("CALL", `${what} close timed out`, { cap_ms: CLOSE_STEP_CAP_MS });
  }
}
