/**
 * Google TTS provider and the boot-time phrase cache against the local gRPC TextToSpeech server
 * (tools/sandbox/tts_server.ts), with the real `@google-cloud/text-to-speech` client over loopback.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import alawmulaw from "alawmulaw";
import { ProviderError } from "../src/errors.ts";
import { createLogger } from "../src/observe/log.ts";
import { PhraseCache } from "../src/tts/cache.ts";
import { createGoogleTts, stripWavHeader } from "../src/tts/google.ts";
import type { TtsProvider } from "../src/tts/types.ts";
import { startTtsServer, synthWaveform, type TtsServer, wav } from "../tools/sandbox/tts_server.ts";

function ttsConfig(endpoint: string): Parameters<typeof createGoogleTts>[0] {
  return {
    provider: "google",
    voice: "he-IL-Wavenet-A",
    google: { endpoint, insecure: true },
    language: "he-IL",
  };
}

async function withTts(
  fn: (tts: TtsProvider, server: TtsServer) => Promise<void>,
  options: { timeoutMs?: number } = {},
): Promise<void> {
  const server = await startTtsServer();
  const tts = createGoogleTts(ttsConfig(server.address), { timeoutMs: options.timeoutMs });
  try {
    await fn(tts, server);
  } finally {
    await tts.close();
    await server.close();
  }
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new assert.AssertionError({ message: "Expected a rejection" });
}

function expectedMulaw(text: string, msPerChar = 60): Uint8Array {
  return alawmulaw.mulaw.encode(synthWaveform(text, msPerChar, 8000));
}

Deno.test("synthesize() returns header-stripped μ-law 8000 Hz of the expected length", async () => {
  await withTts(async (tts, server) => {
    const text = "שלום, הגעתם לקב";
    const audio = await tts.synthesize(text, {});
    const chars = [...text].length;
    assert.equal(audio.length, chars * 60 * 8, "60 ms per character at 8 bytes per ms");
    assert.deepEqual(audio, expectedMulaw(text), "exactly the samples, no header bytes");
    assert.notEqual(new TextDecoder().decode(audio.subarray(0, 4)), "RIFF");
    assert.deepEqual(server.requests, [{
      text,
      languageCode: "he-IL",
      voice: "he-IL-Wavenet-A",
      encoding: "MULAW",
      sampleRateHertz: 8000,
    }]);
  });
});

Deno.test("synthesize() honours a per-request voice and skips empty text", async () => {
  await withTts(async (tts, server) => {
    const audio = await tts.synthesize("כן", { voice: "he-IL-Standard-B" });
    assert.equal(audio.length, 2 * 480);
    assert.equal(server.requests[0].voice, "he-IL-Standard-B");
    assert.equal((await tts.synthesize("  ", {})).length, 0);
    assert.equal(server.requests.length, 1, "no request for empty text");
  });
});

Deno.test("synthesize() maps UNAVAILABLE to a retryable ProviderError after one attempt", async () => {
  await withTts(async (tts, server) => {
    server.failNext(1, grpc.status.UNAVAILABLE, "The service is unavailable.");
    const error = await rejection(tts.synthesize("תודה", {}));
    assert.ok(error instanceof ProviderError);
    assert.equal(error.provider, "tts");
    assert.equal(error.category, "connectivity");
    assert.equal(error.retryable, true);
    assert.match(error.message, /^Cannot synthesize speech at "127\.0\.0\.1:\d+": UNAVAILABLE/);
    assert.equal(server.requests.length, 1, "google-gax did not retry on its own");
    assert.equal((await tts.synthesize("תודה", {})).length, 4 * 480, "the next request works");
  });
});

Deno.test("synthesize() maps gRPC codes to categories", async () => {
  const cases: [grpc.status, string, boolean][] = [
    [grpc.status.RESOURCE_EXHAUSTED, "rate_limit", true],
    [grpc.status.INVALID_ARGUMENT, "invalid_request", false],
    [grpc.status.PERMISSION_DENIED, "authentication", false],
    [grpc.status.UNAUTHENTICATED, "authentication", false],
    [grpc.status.INTERNAL, "server", true],
  ];
  await withTts(async (tts, server) => {
    for (const [code, category, retryable] of cases) {
      server.failNext(1, code, "Scripted failure");
      const error = await rejection(tts.synthesize("שלום", {}));
      assert.ok(error instanceof ProviderError, grpc.status[code]);
      assert.equal(error.category, category, grpc.status[code]);
      assert.equal(error.retryable, retryable, grpc.status[code]);
    }
  });
});

Deno.test("synthesize() rejects an unknown voice as a non-retryable invalid request", async () => {
  await withTts(async (tts) => {
    const error = await rejection(tts.synthesize("שלום", { voice: "en-US-Wavenet-A" }));
    assert.ok(error instanceof ProviderError);
    assert.equal(error.category, "invalid_request");
    assert.equal(error.retryable, false);
  });
});

Deno.test("synthesize() times out as a retryable timeout", async () => {
  await withTts(async (tts, server) => {
    server.script.latencyMs = 2000;
    const error = await rejection(tts.synthesize("שלום", {}));
    assert.ok(error instanceof ProviderError);
    assert.equal(error.category, "timeout");
    assert.equal(error.retryable, true);
  }, { timeoutMs: 200 });
});

Deno.test("synthesize() rejects with the signal's reason when aborted", async () => {
  await withTts(async (tts, server) => {
    server.script.latencyMs = 500;
    const controller = new AbortController();
    const pending = tts.synthesize("שלום", { signal: controller.signal });
    setTimeout(() => controller.abort(new Error("barge-in")), 50);
    const error = await rejection(pending);
    assert.ok(error instanceof Error && error.message === "barge-in");
    const late = await rejection(tts.synthesize("שלום", { signal: controller.signal }));
    assert.ok(late instanceof Error && late.message === "barge-in");
  });
});

Deno.test("synthesize() against an unreachable endpoint is a connectivity error", async () => {
  const tts = createGoogleTts(ttsConfig("127.0.0.1:1"), { timeoutMs: 3000 });
  try {
    const error = await rejection(tts.synthesize("שלום", {}));
    assert.ok(error instanceof ProviderError);
    assert.equal(error.category, "connectivity");
  } finally {
    await tts.close();
  }
});

Deno.test("stripWavHeader() walks RIFF chunks and refuses formats it would have to convert", () => {
  const samples = new Uint8Array([1, 2, 3, 4, 5]);
  assert.deepEqual(stripWavHeader(wav(samples, 7, 8000, 8, false)), samples);
  assert.deepEqual(stripWavHeader(wav(samples, 7, 8000, 8, true)), samples, "skips fact/LIST");
  assert.deepEqual(stripWavHeader(samples), samples, "raw bytes pass through");
  const even = samples.subarray(0, 4); // no pad byte after the data
  const streamed = wav(even, 7, 8000, 8, false);
  new DataView(streamed.buffer).setUint32(streamed.length - even.length - 4, 0xffffffff, true);
  assert.deepEqual(stripWavHeader(streamed), even, "an open-ended data chunk runs to the end");
  for (const [format, rate, bits] of [[1, 8000, 16], [7, 24000, 8]]) {
    assert.throws(() => stripWavHeader(wav(samples, format, rate, bits, false)), ProviderError);
  }
  assert.throws(
    () => stripWavHeader(wav(samples, 1, 8000, 16, false)),
    (e: unknown) => e instanceof ProviderError && e.category === "invalid_request" && !e.retryable,
  );
  const noData = wav(samples, 7, 8000, 8, false).subarray(0, 12 + 26);
  assert.throws(() => stripWavHeader(noData), ProviderError);
});

Deno.test("PhraseCache loads at boot with retry and serves phrases synchronously", async () => {
  await withTts(async (tts, server) => {
    const lines: string[] = [];
    server.failNext(2, grpc.status.UNAVAILABLE);
    const cache = new PhraseCache(tts, { greeting: "שלום", apology: "סליחה" }, {
      retry: { backoffMs: 20 },
      log: createLogger((line) => lines.push(line)),
    });
    assert.equal(cache.get("greeting"), null, "nothing before load");
    const report = await cache.load();
    assert.deepEqual([...report.loaded].sort(), ["apology", "greeting"]);
    assert.deepEqual(report.failed, []);
    assert.deepEqual(cache.get("greeting"), expectedMulaw("שלום"));
    assert.deepEqual(cache.get("apology"), expectedMulaw("סליחה"));
    assert.equal(cache.get("missing"), null);
    assert.equal(server.requests.length, 4, "two failures retried");
    assert.ok(lines.some((l) => l.includes("phrase synthesis retry")));
  });
});

Deno.test("PhraseCache reports a phrase that cannot be synthesized, and reload keeps old audio", async () => {
  await withTts(async (tts, server) => {
    const cache = new PhraseCache(tts, { greeting: "שלום", apology: "סליחה" }, {
      retry: { attempts: 2, backoffMs: 10 },
    });
    server.failNext(1, grpc.status.PERMISSION_DENIED);
    const first = await cache.load();
    assert.equal(first.failed.length, 1);
    assert.ok(first.failed[0].error instanceof ProviderError);
    assert.equal(server.requests.length, 2, "a non-retryable failure is not retried");
    const failedName = first.failed[0].name;
    assert.equal(cache.get(failedName), null);

    await cache.reload();
    assert.deepEqual(cache.names.sort(), ["apology", "greeting"]);
    const greeting = cache.get("greeting");

    // Both first attempts fail, then one of the two retries: that phrase keeps its old audio.
    server.failNext(3, grpc.status.UNAVAILABLE);
    const report = await cache.reload({ phrases: { greeting: "שלום!", apology: "סליחה" } });
    assert.equal(report.failed.length, 1);
    assert.ok(cache.get("greeting") !== null && cache.get("apology") !== null);
    if (report.failed[0].name === "greeting") assert.deepEqual(cache.get("greeting"), greeting);
    else assert.deepEqual(cache.get("greeting"), expectedMulaw("שלום!"));
  });
});
