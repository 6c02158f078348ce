/**
 * Kav's one provider policy (STYLE pattern 7), used by STT, TTS and the LLM: `retry` tries again
 * only a `ProviderError` marked retryable, waiting a jittered doubling backoff up to a cap; and
 * `observe` / `observeStream` / `countError` are the one place that records provider latencies and
 * counts provider errors (`kav_provider_latency_seconds`, `kav_provider_errors_total`), each error
 * once however many layers it passes through. Adapters map failures to `ProviderError`; what to do
 * after the last attempt (an apology, a fallback endpoint, a resend later) stays with the caller.
 */
import { ProviderError, type ProviderName } from "../errors.ts";
import * as metrics from "../observe/metrics.ts";

/** How often and how patiently to try. Frozen objects of these live beside each caller. */
export interface RetryPolicy {
  /** Attempts in all, the first included; `Infinity` tries until success or a final failure. */
  readonly attempts: number;
  /** Wait after the first failure (ms); doubled after each next one. */
  readonly firstMs: number;
  /** Longest wait (ms). */
  readonly maxMs: number;
  /**
   * Share of each wait drawn at random, 0 to 1: a wait is `ceiling × (1 − jitter × random)`, so it
   * never exceeds the cap, and calls that failed together do not all come back at once. 0: exact.
   */
  readonly jitter?: number;
}

/**
 * The wait after `failures` failures in a row (1 for the first): `firstMs` doubled per failure
 * up to `maxMs`, less its random share. `random` returns [0, 1) (tests pass their own).
 */
export function backoffMs(
  failures: number,
  policy: Pick<RetryPolicy, "firstMs" | "maxMs" | "jitter">,
  random: () => number = Math.random,
): number {
  if (!(failures >= 1)) throw new RangeError(`Cannot back off after "${failures}" failures`);
  const ceiling = Math.min(policy.maxMs, policy.firstMs * 2 ** (failures - 1));
  const jitter = Math.min(1, Math.max(0, policy.jitter ?? 0));
  return Math.round(ceiling * (1 - jitter * random()));
}

export interface RetryOptions extends RetryPolicy {
  /** Stops the waiting at once (rejecting with `signal.reason`); `fn` gets it too. */
  readonly signal?: AbortSignal;
  /** Before each wait: the failure, the attempt that failed (from 1) and the wait (ms). */
  readonly onRetry?: (error: ProviderError, attempt: number, waitMs: number) => void;
  /** [0, 1) for the jitter (tests). */
  readonly random?: () => number;
}

/**
 * Runs `fn` until it resolves. A rejection is final, and passed on as it is, unless it is a
 * retryable `ProviderError` with attempts left and `signal` not aborted; then `fn` runs again after
 * `backoffMs`. `fn` gets the attempt number (from 1).
 */
export async function retry<T>(
  fn: (attempt: number) => Promise<T>,
  options: RetryOptions,
): Promise<T> {
  const { signal } = options;
  for (let attempt = 1;; attempt++) {
    signal?.throwIfAborted();
    try {
      return await fn(attempt);
    } catch (error) {
      const retryable = error instanceof ProviderError && error.retryable;
      if (!retryable || attempt >= options.attempts || signal?.aborted) throw error;
      const waitMs = backoffMs(attempt, options, options.random);
      options.onRetry?.(error, attempt, waitMs);
      await abortableSleep(waitMs, signal);
    }
  }
}

/** Resolves after `ms`, or rejects with `signal.reason` once aborted; the timer is cleared. */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Errors already in `kav_provider_errors_total`: one failure seen by several layers counts once. */
const counted = new WeakSet<ProviderError>();

/**
 * Counts `error` in `kav_provider_errors_total{provider,category}`, unless it was counted already;
 * anything but a `ProviderError` (an abort's reason) is not a provider failure and is not counted.
 */
export function countError(error: unknown): void {
  if (!(error instanceof ProviderError) || counted.has(error)) return;
  counted.add(error);
  metrics.providerError(error.provider, error.category);
}

/**
 * One provider request: `fn`'s time to resolve goes to `kav_provider_latency_seconds{provider,kind}`
 * (`kind` names the request: "recognize", "synthesize"...), its `ProviderError` to the error count.
 */
export async function observe<T>(
  provider: ProviderName,
  kind: string,
  fn: () => Promise<T>,
): Promise<T> {
  const startedAt = performance.now();
  try {
    const result = await fn();
    metrics.providerLatencyObserved(provider, kind, (performance.now() - startedAt) / 1000);
    return result;
  } catch (error) {
    countError(error);
    throw error;
  }
}

/**
 * One streamed provider request, as `observe`: its latency is the time to the first item (time to
 * first token or first audio), measured from the first `next()`, which is when the request starts;
 * it is recorded once the stream ends without failing or being cancelled (a consumer that stops
 * early is no failure, and stops the stream under it).
 */
export async function* observeStream<T>(
  provider: ProviderName,
  kind: string,
  stream: () => AsyncIterable<T>,
): AsyncGenerator<T> {
  const startedAt = performance.now();
  let firstAt: number | null = null;
  let failed = false;
  try {
    for await (const item of stream()) {
      firstAt ??= performance.now();
      yield item;
    }
  } catch (error) {
    failed = true;
    countError(error);
    throw error;
  } finally {
    if (!failed && firstAt !== null) {
      metrics.providerLatencyObserved(provider, kind, (firstAt - startedAt) / 1000);
    }
  }
}
