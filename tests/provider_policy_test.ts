/**
 * The provider policy (src/providers/policy.ts): retry only what is retryable, a doubling backoff
 * up to its cap with its jitter inside the cap, an abort that stops retrying at once, and provider
 * errors and latencies recorded in one place, each error once.
 */
import assert from "node:assert/strict";
import { ProviderError } from "../src/errors.ts";
import * as metrics from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import {
  abortableSleep,
  backoffMs,
  countError,
  observe,
  observeStream,
  retry,
} from "../src/providers/policy.ts";

const unavailable = () => new ProviderError("tts", "connectivity", "Cannot connect");
const refused = () => new ProviderError("tts", "invalid_request", "Voice refused");

function metric(name: string, labels: Record<string, string> = {}): number {
  return sampleValue(parsePrometheusText(metrics.renderMetrics()), name, labels) ?? 0;
}

/** A function that fails with `failures` in turn, then answers "ok"; counts its calls. */
function scripted(failures: unknown[]) {
  const calls: number[] = [];
  const fn = (attempt: number): Promise<string> => {
    calls.push(attempt);
    const failure = failures[calls.length - 1];
    return failure === undefined ? Promise.resolve("ok") : Promise.reject(failure);
  };
  return { fn, calls };
}

const FAST = { attempts: 5, firstMs: 1, maxMs: 4 };

Deno.test("retry() tries a retryable ProviderError again until it succeeds", async () => {
  const { fn, calls } = scripted([unavailable(), unavailable()]);
  assert.equal(await retry(fn, FAST), "ok");
  assert.deepEqual(calls, [1, 2, 3], "each call gets its attempt number");
});

Deno.test("retry() passes a non-retryable failure on at once, untouched", async () => {
  for (const failure of [refused(), new TypeError("bug"), "a string"]) {
    const { fn, calls } = scripted([failure]);
    const retried: number[] = [];
    await assert.rejects(
      retry(fn, { ...FAST, onRetry: (_e, attempt) => retried.push(attempt) }),
      (error) => error === failure,
    );
    assert.equal(calls.length, 1, `${String(failure)} is not retried`);
    assert.deepEqual(retried, []);
  }
  const auth = new ProviderError("llm", "server", "Server says no", { retryable: false });
  const { fn, calls } = scripted([auth]);
  await assert.rejects(retry(fn, FAST), (error) => error === auth);
  assert.equal(calls.length, 1, "the error's own retryable flag decides, not its category");
});

Deno.test("retry() stops after `attempts` and rejects with the last failure", async () => {
  const failures = [unavailable(), unavailable(), unavailable()];
  const { fn, calls } = scripted(failures);
  await assert.rejects(retry(fn, { ...FAST, attempts: 3 }), (error) => error === failures[2]);
  assert.equal(calls.length, 3);
  const once = scripted([unavailable()]);
  await assert.rejects(retry(once.fn, { ...FAST, attempts: 1 }), ProviderError);
  assert.equal(once.calls.length, 1, "one attempt is no retry");
});

Deno.test("retry() waits a backoff that doubles up to the cap", async () => {
  const { fn } = scripted([unavailable(), unavailable(), unavailable(), unavailable()]);
  const waits: number[] = [];
  await retry(fn, {
    attempts: 5,
    firstMs: 2,
    maxMs: 8,
    jitter: 0,
    onRetry: (error, attempt, waitMs) => {
      assert.ok(error instanceof ProviderError && attempt === waits.length + 1);
      waits.push(waitMs);
    },
  });
  assert.deepEqual(waits, [2, 4, 8, 8]);
});

Deno.test("backoffMs() doubles to the cap, and its jitter only ever shortens a wait", () => {
  const policy = { firstMs: 250, maxMs: 2000 };
  assert.deepEqual([1, 2, 3, 4, 5, 9, 60].map((n) => backoffMs(n, policy)), [
    250,
    500,
    1000,
    2000,
    2000,
    2000,
    2000,
  ]);
  const jittered = { ...policy, jitter: 0.2 };
  assert.equal(backoffMs(2, jittered, () => 0), 500, "random 0: the full wait");
  assert.equal(backoffMs(2, jittered, () => 0.5), 450);
  assert.equal(backoffMs(5, jittered, () => 0.999_999), 1600, "never below (1 - jitter) x cap");
  for (let i = 0; i < 200; i++) {
    const wait = backoffMs(4, jittered);
    assert.ok(wait >= 1600 && wait <= 2000, `${wait} ms`);
  }
  assert.equal(backoffMs(3, { firstMs: 200, maxMs: 200 }), 200, "a constant backoff");
  assert.throws(() => backoffMs(0, policy), RangeError);
});

Deno.test("retry() stops waiting at once when aborted, and never calls again", async () => {
  const controller = new AbortController();
  const reason = new DOMException("call ended", "AbortError");
  const { fn, calls } = scripted([unavailable(), unavailable()]);
  const run = retry(fn, {
    attempts: 10,
    firstMs: 60_000, // the test's timer sanitizer fails if this wait were left running
    maxMs: 60_000,
    signal: controller.signal,
    onRetry: () => controller.abort(reason),
  });
  await assert.rejects(run, (error) => error === reason);
  assert.equal(calls.length, 1);

  const before = scripted([]);
  await assert.rejects(retry(before.fn, { ...FAST, signal: AbortSignal.abort(reason) }));
  assert.equal(before.calls.length, 0, "an aborted signal makes no call");

  // A failure that comes after the abort is the last: no wait, no new call.
  const during = new AbortController();
  let n = 0;
  const failing = () => {
    n++;
    during.abort(reason);
    return Promise.reject(unavailable());
  };
  await assert.rejects(retry(failing, { ...FAST, signal: during.signal }), ProviderError);
  assert.equal(n, 1);
});

Deno.test("abortableSleep() resolves after its time or rejects with the abort reason", async () => {
  await abortableSleep(1);
  const controller = new AbortController();
  const sleeping = abortableSleep(60_000, controller.signal);
  controller.abort(new Error("stop"));
  await assert.rejects(sleeping, /stop/);
});

Deno.test("observe() records the latency of an answer and counts a failure once, by category", async () => {
  const latency = () =>
    metric("kav_provider_latency_seconds_count", { provider: "tts", kind: "t" });
  const errors = () =>
    metric("kav_provider_errors_total", { provider: "tts", category: "timeout" });
  const latencyBefore = latency();
  const errorsBefore = errors();
  assert.equal(await observe("tts", "t", () => Promise.resolve(7)), 7);
  assert.equal(latency(), latencyBefore + 1);

  const timeout = new ProviderError("tts", "timeout", "Too slow");
  // The same failure seen by three layers (adapter, fallback loop, retry) is one failure.
  const layered = () =>
    observe("tts", "t", () => observe("tts", "t", () => Promise.reject(timeout)));
  await assert.rejects(retry(layered, { ...FAST, attempts: 1 }), (e) => e === timeout);
  countError(timeout);
  assert.equal(errors(), errorsBefore + 1, "counted once");
  assert.equal(latency(), latencyBefore + 1, "a failure is no latency sample");

  // Each distinct failure counts; an abort's reason is no provider failure.
  const other = new ProviderError("tts", "timeout", "Too slow again");
  await assert.rejects(observe("tts", "t", () => Promise.reject(other)));
  await assert.rejects(observe("tts", "t", () => Promise.reject(new DOMException("cut"))));
  assert.equal(errors(), errorsBefore + 2);
});

Deno.test("observeStream() times the first item of a stream that ends well, counts a failure once, and stops its stream early", async () => {
  const kind = "stream";
  const latency = () => metric("kav_provider_latency_seconds_count", { provider: "llm", kind });
  const errors = () => metric("kav_provider_errors_total", { provider: "llm", category: "server" });
  const latencyBefore = latency();
  const errorsBefore = errors();
  let closed = false;
  async function* tokens() {
    try {
      yield "a";
      yield "b";
      yield "c";
    } finally {
      closed = true;
    }
  }
  let started = false;
  const observed = observeStream("llm", kind, () => {
    started = true;
    return tokens();
  });
  assert.equal(started, false, "nothing starts before the first next()");
  const seen: string[] = [];
  for await (const token of observed) {
    seen.push(token);
    if (seen.length === 2) break;
  }
  assert.deepEqual(seen, ["a", "b"]);
  assert.ok(closed, "the consumer's break reached the stream under it");
  assert.equal(latency(), latencyBefore + 1, "one sample per stream");

  const broken = new ProviderError("llm", "server", "Broke off");
  async function* failing() {
    yield "a";
    throw broken;
  }
  const read: string[] = [];
  await assert.rejects(async () => {
    for await (const token of observeStream("llm", kind, failing)) read.push(token);
  }, (e) => e === broken);
  countError(broken);
  assert.deepEqual(read, ["a"]);
  assert.equal(errors(), errorsBefore + 1);

  // Cancelled (the abort's reason thrown): neither an error nor a latency sample.
  const reason = new DOMException("barge-in", "AbortError");
  async function* cancelled() {
    yield "a";
    throw reason;
  }
  await assert.rejects(async () => {
    for await (const _ of observeStream("llm", kind, cancelled)) continue;
  }, (e) => e === reason);
  assert.equal(errors(), errorsBefore + 1);
  assert.equal(latency(), latencyBefore + 1, "only the stream that ended well was timed");
});
