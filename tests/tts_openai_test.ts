/**
 * The OpenAI-compatible TTS provider against the local speech server
 * (tools/sandbox/openai_speech_server.ts), with the real `npm:openai` client over loopback: the
 * request, streaming (audio handed on before the answer is complete), the conversion of 24 kHz
 * PCM or WAV to 8 kHz μ-law (frequency, attenuation above 4 kHz, duration), errors in OpenAI's
 * shape, and the phrase cache on top.
 */
import assert from "node:assert/strict";
import { decodeMulaw } from "../tools/bytes.ts";
import { parseConfig } from "../src/config/load.ts";
import type { TtsOpenAiConfig } from "../src/config/types.ts";
import { ProviderError } from "../src/errors.ts";
import * as metrics from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import { SpeechAudioDecoder } from "../src/tts/_speech_audio.ts";
import { PhraseCache } from "../src/tts/cache.ts";
import { createOpenAiTts } from "../src/tts/openai.ts";
import type { TtsProvider } from "../src/tts/types.ts";
import {
  type OpenAiSpeechServer,
  type OpenAiSpeechServerOptions,
  startOpenAiSpeechServer,
} from "../tools/sandbox/openai_speech_server.ts";
import { measureTone, rms, sine } from "./support/tones.ts";

/** `[tts.openai]` through the real config loader. */
function ttsConfig(baseUrl: string, extra = ""): TtsOpenAiConfig {
  return parseConfig(
    `[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n` +
      `[tts]\nprovider = "openai"\n[tts.openai]\nbase_url = "${baseUrl}"\n${extra}`,
    { env: { OPENAI_TTS_API_KEY: "sk-tts-test" }, credentialsDir: null },
  ).tts.openai;
}

async function withTts(
  options: Partial<OpenAiSpeechServerOptions> & { toml?: string },
  fn: (tts: TtsProvider, server: OpenAiSpeechServer) => Promise<void>,
): Promise<void> {
  const server = await startOpenAiSpeechServer({ clips: [], ...options });
  const tts = createOpenAiTts(ttsConfig(server.baseUrl, options.toml));
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

/** A tone of `ms` for every text, at the rate the server is asked to speak. */
function tone(hz: number, ms: number): (text: string, rate: number) => Int16Array {
  return (_text, rate) => sine({ hz, rate, ms, amplitude: 16_000 });
}

Deno.test("OpenAI TTS posts model, voice, input, pcm and instructions with the key", async () => {
  await withTts({ toml: 'instructions = "Speak calmly"\n' }, async (tts, server) => {
    const audio = await tts.synthesize("שלום", {});
    assert.equal(audio.length, 4 * 60 * 8, "60 ms per character, at 8 bytes per ms");
    await tts.synthesize("כן", { voice: "nova" });
    assert.deepEqual(server.speeches.map((s) => s.body), [
      {
        model: "gpt-4o-mini-tts",
        voice: "alloy",
        input: "שלום",
        response_format: "pcm",
        instructions: "Speak calmly",
      },
      {
        model: "gpt-4o-mini-tts",
        voice: "nova",
        input: "כן",
        response_format: "pcm",
        instructions: "Speak calmly",
      },
    ]);
    assert.equal(await tts.synthesize("   ", {}).then((a) => a.length), 0, "nothing to say");
    assert.equal(server.speeches.length, 2, "blank text sends no request");
  });
});

Deno.test("OpenAI TTS streams: whole frames reach the caller before the answer is complete", async () => {
  // 1 s of speech in 100 ms chunks, 60 ms apart: the answer takes about 600 ms to arrive.
  await withTts(
    { speechAudio: tone(440, 1000), chunkBytes: 4800, chunkDelayMs: 60 },
    async (tts, server) => {
      assert.ok(tts.stream, "streaming is on by default");
      const chunks: Uint8Array[] = [];
      let sentAtFirst = -1;
      for await (const chunk of tts.stream("x", {})) {
        if (chunks.length === 0) sentAtFirst = server.speeches[0].bytesSent;
        chunks.push(chunk);
      }
      const total = 24_000 * 2;
      assert.ok(
        sentAtFirst > 0 && sentAtFirst < total / 2,
        `first audio after ${sentAtFirst} of ${total} bytes`,
      );
      assert.ok(chunks.length >= 5, `${chunks.length} chunks`);
      for (const chunk of chunks.slice(0, -1)) assert.equal(chunk.length % 160, 0, "whole frames");
      assert.equal(chunks.reduce((n, c) => n + c.length, 0), 8000, "1 s at 8 kHz, no drift");
    },
  );
});

for (
  const [format, sizes, chunkBytes] of [
    ["pcm", "streaming", 1001],
    ["wav", "streaming", 7],
    ["wav", "exact", 4096],
  ] as const
) {
  Deno.test(`OpenAI TTS turns a 24 kHz 1 kHz tone (${format}, ${sizes} sizes) into 1 kHz at 8 kHz μ-law`, async () => {
    await withTts(
      {
        speechAudio: tone(1000, 1500),
        chunkBytes,
        wavSizes: sizes,
        toml: `response_format = "${format}"\n`,
      },
      async (tts, server) => {
        const audio = await tts.synthesize("tone", {});
        assert.equal(server.speeches[0].responseFormat, format);
        const heard = decodeMulaw(audio);
        const measured = measureTone(heard, 8000);
        const errorPct = (measured.hz - 1000) / 10;
        assert.ok(Math.abs(errorPct) < 1, `${measured.hz} Hz (${errorPct}%)`);
        const durationErrorMs = heard.length / 8 - 1500;
        assert.ok(Math.abs(durationErrorMs) < 20, `duration off by ${durationErrorMs} ms`);
        console.log(
          `  ${format}/${sizes}: ${measured.hz.toFixed(3)} Hz (${errorPct.toFixed(4)} %), ` +
            `duration error ${durationErrorMs} ms`,
        );
      },
    );
  });
}

Deno.test("OpenAI TTS attenuates a 5 kHz tone (it would alias to 3 kHz)", async () => {
  await withTts({ speechAudio: tone(5000, 1000) }, async (tts) => {
    const heard = decodeMulaw(await tts.synthesize("tone", {}));
    const input = rms(sine({ hz: 5000, rate: 24_000, ms: 1000, amplitude: 16_000 }));
    // μ-law's smallest step around zero is 8 (its "silence" decodes to 0); floor there.
    const level = Math.max(rms(heard, 80, heard.length - 80), 1);
    const attenuationDb = 20 * Math.log10(level / input);
    assert.ok(attenuationDb < -60, `${attenuationDb} dB`);
    console.log(`  5 kHz at the caller: ${attenuationDb.toFixed(1)} dB (floor: μ-law silence)`);
  });
});

Deno.test("OpenAI TTS maps errors in OpenAI's shape to ProviderError", async () => {
  await withTts({}, async (tts, server) => {
    server.failSpeech(1, 503);
    const down = await rejection(tts.synthesize("a", {}));
    assert.ok(down instanceof ProviderError);
    assert.deepEqual([down.provider, down.category, down.retryable], ["tts", "server", true]);
    assert.match(down.message, /^Speech synthesis at "http:\/\/127\.0\.0\.1:\d+\/v1" failed/);
    server.failSpeech(1, 429);
    const limited = await rejection(tts.synthesize("a", {}));
    assert.ok(limited instanceof ProviderError && limited.category === "rate_limit");
    server.failSpeech(1, 401);
    const auth = await rejection(tts.synthesize("a", {}));
    assert.ok(auth instanceof ProviderError);
    assert.deepEqual([auth.category, auth.retryable], ["authentication", false]);
    const badVoice = await rejection(tts.synthesize("a", { voice: "" }));
    assert.ok(badVoice instanceof ProviderError);
    assert.deepEqual([badVoice.category, badVoice.retryable], ["invalid_request", false]);
    assert.equal(
      server.speeches.at(-1)?.status,
      400,
      "the server refused the empty voice with its own error",
    );
    await server.down(60_000);
    const refused = await rejection(tts.synthesize("a", {}));
    assert.ok(refused instanceof ProviderError);
    assert.deepEqual([refused.category, refused.retryable], ["connectivity", true]);
  });
});

Deno.test("OpenAI TTS times out a slow answer and cancels a stream the caller left", async () => {
  await withTts(
    { speechLatencyMs: 1500, toml: "timeout_ms = 500\n" },
    async (tts) => {
      const started = performance.now();
      const slow = await rejection(tts.synthesize("a", {}));
      assert.ok(slow instanceof ProviderError && slow.category === "timeout", String(slow));
      assert.ok(performance.now() - started < 1400, "the deadline, not the server, ended it");
    },
  );
  await withTts(
    { speechAudio: tone(440, 3000), chunkBytes: 4800, chunkDelayMs: 30 },
    async (tts, server) => {
      const controller = new AbortController();
      const stream = (tts.stream as NonNullable<TtsProvider["stream"]>)("x", {
        signal: controller.signal,
      });
      for await (const _ of stream) {
        break; // barge-in: the consumer stops after the first chunk
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
      const sent = server.speeches[0].bytesSent;
      assert.ok(sent < 3 * 24_000 * 2, `the download stopped after ${sent} bytes`);
      const aborted = new AbortController();
      aborted.abort(new DOMException("cut", "AbortError"));
      const reason = await rejection(tts.synthesize("x", { signal: aborted.signal }));
      assert.ok(reason instanceof DOMException && reason.message === "cut");
    },
  );
});

Deno.test("OpenAI TTS with stream = false answers whole sentences only", async () => {
  await withTts({ toml: "stream = false\n" }, async (tts) => {
    assert.equal(tts.stream, undefined);
    assert.equal((await tts.synthesize("אב", {})).length, 2 * 60 * 8);
  });
});

Deno.test("PhraseCache caches OpenAI TTS phrases and retries a failed one", async () => {
  await withTts({}, async (tts, server) => {
    server.failSpeech(1, 500);
    const cache = new PhraseCache(tts, { greeting: "שלום", apology: "סליחה" }, {
      retry: { backoffMs: 1 },
    });
    const report = await cache.load();
    assert.deepEqual([...report.loaded].sort(), ["apology", "greeting"]);
    assert.equal(cache.get("greeting")?.length, 4 * 60 * 8);
    assert.equal(cache.get("apology")?.length, 5 * 60 * 8);
    assert.equal(server.speeches.length, 3, "one retry");
  });
});

Deno.test("SpeechAudioDecoder refuses WAV answers it cannot play, naming what they are", () => {
  const header = (format: number, channels: number, bits: number) => {
    const bytes = new Uint8Array(44);
    const view = new DataView(bytes.buffer);
    bytes.set(new TextEncoder().encode("RIFF"), 0);
    bytes.set(new TextEncoder().encode("WAVEfmt "), 8);
    view.setUint32(16, 16, true);
    view.setUint16(20, format, true);
    view.setUint16(22, channels, true);
    view.setUint32(24, 22_050, true);
    view.setUint16(34, bits, true);
    bytes.set(new TextEncoder().encode("data"), 36);
    return bytes;
  };
  const stereo = new SpeechAudioDecoder("wav", 24_000);
  assert.throws(() => stereo.push(header(1, 2, 16)), (error: unknown) => {
    assert.ok(error instanceof ProviderError && error.category === "invalid_request");
    assert.match(error.message, /"format 1, 16 bits, 2 ch, 22050 Hz"/);
    return true;
  });
  const float = new SpeechAudioDecoder("wav", 24_000);
  assert.throws(() => float.push(header(3, 1, 32)), ProviderError);
  const notWav = new SpeechAudioDecoder("wav", 24_000);
  assert.throws(() => notWav.push(new TextEncoder().encode("ID3\u0004 an mp3 answer")), /RIFF/);
  const truncated = new SpeechAudioDecoder("wav", 24_000);
  assert.equal(truncated.push(header(1, 1, 16).subarray(0, 30)).length, 0, "header incomplete");
  assert.throws(() => truncated.end(), /Cannot find audio/);
  // A header split byte by byte still works, at the header's own rate.
  const split = new SpeechAudioDecoder("wav", 24_000);
  for (const byte of header(1, 1, 16)) split.push(Uint8Array.of(byte));
  assert.equal(split.sampleRate, 22_050);
});

Deno.test("OpenAI TTS reports time to first byte per provider in /metrics", async () => {
  await withTts({ speechLatencyMs: 30 }, async (tts) => {
    const before = sampleValue(
      parsePrometheusText(metrics.renderMetrics()),
      "kav_tts_first_byte_seconds_count",
      { provider: "openai" },
    ) ?? 0;
    await tts.synthesize("a", {});
    const families = parsePrometheusText(metrics.renderMetrics());
    assert.equal(families.get("kav_tts_first_byte_seconds")?.type, "histogram");
    assert.equal(
      sampleValue(families, "kav_tts_first_byte_seconds_count", { provider: "openai" }),
      before + 1,
    );
    assert.ok(
      (sampleValue(families, "kav_tts_first_byte_seconds_sum", { provider: "openai" }) ?? 0) >=
        0.03,
    );
  });
});
