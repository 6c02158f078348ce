/**
 * The OpenAI-compatible STT provider against the local speech server
 * (tools/sandbox/openai_speech_server.ts), with the real `npm:openai` client over loopback:
 * utterances cut by Kav's VAD and uploaded as WAV in a multipart form, SSE partials in OpenAI's and
 * vLLM's shapes, and the no-loss promise (retries in order, drops only past a bound, logged and
 * counted).
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import type { SttConfig } from "../src/config/types.ts";
import { createLogger } from "../src/observe/log.ts";
import * as metrics from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import {
  createOpenAiStt,
  type OpenAiSttOptions,
  transcriptionLanguage,
} from "../src/stt/openai.ts";
import type { SpeechSession, SttEvent } from "../src/stt/types.ts";
import {
  type OpenAiSpeechServer,
  startOpenAiSpeechServer,
} from "../tools/sandbox/openai_speech_server.ts";
import { clip, CLIPS, silence } from "./support/stt_harness.ts";
import { waitUntil } from "./support/_conversation.ts";

/** `[stt]` with `[stt.openai]` through the real config loader. */
function sttConfig(baseUrl: string, extra = ""): SttConfig {
  return parseConfig(
    `[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n` +
      `[stt]\nprovider = "openai"\n[stt.openai]\nbase_url = "${baseUrl}"\n${extra}`,
    { env: { OPENAI_API_KEY: "sk-test" }, credentialsDir: null },
  ).stt;
}

interface Session {
  readonly session: SpeechSession;
  readonly events: SttEvent[];
  readonly lines: string[];
  readonly controller: AbortController;
  /** Writes `audio` in 20 ms frames, as the RX worker does (not paced: the VAD counts bytes). */
  say(audio: Uint8Array): void;
  finals(): string[];
  /** Closes the session and waits for `results()` to end. */
  close(): Promise<void>;
}

function openSession(config: SttConfig, options: OpenAiSttOptions = {}): Session {
  const lines: string[] = [];
  const log = createLogger((line) => lines.push(line));
  const controller = new AbortController();
  const stt = createOpenAiStt(config, { log, ...options });
  const session = stt.open({ language: "he-IL", signal: controller.signal, log });
  const events: SttEvent[] = [];
  const consumed = (async () => {
    for await (const event of session.results()) events.push(event);
  })();
  return {
    session,
    events,
    lines,
    controller,
    say(audio) {
      for (let at = 0; at < audio.length; at += 160) session.write(audio.subarray(at, at + 160));
    },
    finals: () => events.flatMap((e) => e.type === "final" ? [e.text] : []),
    async close() {
      await session.close();
      await consumed;
      controller.abort();
      await stt.close();
    },
  };
}

async function withServer(
  options: Partial<Parameters<typeof startOpenAiSpeechServer>[0]>,
  fn: (server: OpenAiSpeechServer) => Promise<void>,
): Promise<void> {
  const server = await startOpenAiSpeechServer({ clips: CLIPS, ...options });
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

function metric(name: string, labels: Record<string, string>): number {
  return sampleValue(parsePrometheusText(metrics.renderMetrics()), name, labels) ?? 0;
}

const WAIT = { timeoutMs: 10_000 };

Deno.test("transcriptionLanguage() sends the primary subtag of call.language", () => {
  assert.equal(transcriptionLanguage("he-IL"), "he");
  assert.equal(transcriptionLanguage("en"), "en");
  assert.equal(transcriptionLanguage("ZH-Hant-TW"), "zh");
});

Deno.test("OpenAI STT uploads each utterance cut by the VAD as a WAV in a multipart form", async () => {
  await withServer({}, async (server) => {
    const h = openSession(sttConfig(server.baseUrl, 'prompt = "קב"\n'));
    try {
      await h.session.ready;
      const appointment = clip("appointment");
      const hours = clip("hours");
      h.say(silence(400));
      h.say(appointment.audio);
      h.say(silence(800));
      h.say(hours.audio);
      h.say(silence(800));
      await waitUntil(() => h.finals().length === 2, { ...WAIT, what: "two finals" });
      assert.deepEqual(h.finals(), [appointment.text, hours.text]);
      assert.equal(server.transcriptions.length, 2, "one request per utterance");
      const first = server.transcriptions[0];
      assert.deepEqual(
        [first.model, first.language, first.prompt, first.stream, first.responseFormat],
        ["gpt-4o-transcribe", "he", "קב", false, "json"],
      );
      assert.deepEqual([first.fileName, first.fileType, first.encoding], [
        "utterance.wav",
        "audio/wav",
        "pcm16",
      ]);
      assert.equal(first.authorization, "Bearer sk-test");
      // The utterance holds the whole clip with a little audio around it (preroll, hangover).
      const extraMs = first.audio.length / 8 - appointment.audio.length / 8;
      assert.ok(extraMs >= 300 && extraMs <= 1000, `${extraMs} ms around the clip`);
      assert.ok(h.lines.some((l) => l.includes("[STT] utterance queued")), h.lines.join("\n"));
    } finally {
      await h.close();
    }
  });
});

for (const format of ["openai", "vllm"] as const) {
  Deno.test(`OpenAI STT with stream = true turns ${format} SSE deltas into partials, then the final`, async () => {
    await withServer({ sseFormat: format, deltaDelayMs: 20 }, async (server) => {
      const h = openSession(sttConfig(server.baseUrl, "stream = true\n"));
      try {
        const appointment = clip("appointment");
        h.say(silence(200));
        h.say(appointment.audio);
        h.say(silence(800));
        await waitUntil(() => h.finals().length === 1, { ...WAIT, what: "the final" });
        assert.equal(server.transcriptions[0].stream, true);
        const partials = h.events.flatMap((e) => e.type === "partial" ? [e.text] : []);
        const words = appointment.text.split(" ");
        assert.deepEqual(partials, words.map((_, i) => words.slice(0, i + 1).join(" ")));
        assert.deepEqual(h.events.at(-1), { type: "final", text: appointment.text, confidence: 0 });
      } finally {
        await h.close();
      }
    });
  });
}

Deno.test("OpenAI STT: a server failing twice then answering loses no utterance, order kept", async () => {
  await withServer({}, async (server) => {
    const retriesBefore = metric("kav_stt_retries_total", { provider: "openai" });
    const h = openSession(sttConfig(server.baseUrl), { tuning: { retryFirstMs: 50 } });
    try {
      server.failTranscriptions(2, 503);
      h.say(clip("appointment").audio);
      h.say(silence(800));
      h.say(clip("tomorrow").audio);
      h.say(silence(800));
      await waitUntil(() => h.finals().length === 2, { ...WAIT, what: "both finals" });
      assert.deepEqual(h.finals(), [clip("appointment").text, clip("tomorrow").text]);
      assert.deepEqual(server.transcriptions.map((t) => t.status), [503, 503, 200, 200]);
      const errors = h.events.filter((e) => e.type === "error");
      assert.equal(errors.length, 2);
      assert.ok(errors.every((e) => e.type === "error" && !e.fatal && e.error.retryable));
      assert.equal(metric("kav_stt_retries_total", { provider: "openai" }), retriesBefore + 2);
      assert.equal(
        h.lines.filter((l) => l.includes("transcription failed, retrying")).length,
        2,
      );
    } finally {
      await h.close();
    }
  });
});

Deno.test("OpenAI STT: a stream cut after its first delta is transcribed again", async () => {
  await withServer({}, async (server) => {
    const h = openSession(sttConfig(server.baseUrl, "stream = true\n"), {
      tuning: { retryFirstMs: 20 },
    });
    try {
      server.cutStreams(1);
      h.say(clip("hours").audio);
      h.say(silence(800));
      await waitUntil(() => h.finals().length === 1, { ...WAIT, what: "the final" });
      assert.deepEqual(h.finals(), [clip("hours").text]);
      assert.equal(server.transcriptions.length, 2);
      const error = h.events.find((e) => e.type === "error");
      assert.ok(error?.type === "error" && error.error.category === "connectivity");
    } finally {
      await h.close();
    }
  });
});

Deno.test("OpenAI STT: a server down at the start gets the first words once it is back", async () => {
  await withServer({}, async (server) => {
    const h = openSession(sttConfig(server.baseUrl), { tuning: { retryFirstMs: 50 } });
    try {
      await server.down(1500);
      const started = performance.now();
      h.say(clip("appointment").audio);
      h.say(silence(800));
      await waitUntil(() => h.finals().length === 1, { ...WAIT, what: "the final" });
      assert.deepEqual(h.finals(), [clip("appointment").text]);
      assert.ok(performance.now() - started >= 1400, "it came once the server was back");
      const errors = h.events.filter((e) => e.type === "error");
      assert.ok(errors.length >= 2, `${errors.length} failed attempts while down`);
      assert.ok(errors.every((e) => e.type === "error" && e.error.category === "connectivity"));
    } finally {
      await h.close();
    }
  });
});

Deno.test("OpenAI STT tries the fallback server when the primary fails", async () => {
  await withServer({}, async (fallback) => {
    await withServer({}, async (primary) => {
      await primary.down(60_000);
      const h = openSession(
        sttConfig(primary.baseUrl, `fallback_base_url = "${fallback.baseUrl}"\n`),
      );
      try {
        h.say(clip("goodbye").audio);
        h.say(silence(800));
        await waitUntil(() => h.finals().length === 1, { ...WAIT, what: "the final" });
        assert.deepEqual(h.finals(), [clip("goodbye").text]);
        assert.equal(fallback.transcriptions.length, 1);
        assert.equal(h.events.filter((e) => e.type === "error").length, 0, "no retry needed");
      } finally {
        await h.close();
      }
    });
  });
});

Deno.test("OpenAI STT drops an utterance the server refuses for good, logged and counted", async () => {
  await withServer({}, async (server) => {
    const droppedBefore = metric("kav_stt_dropped_utterances_total", {
      provider: "openai",
      reason: "refused",
    });
    const h = openSession(sttConfig(server.baseUrl));
    try {
      server.failTranscriptions(1, 400);
      h.say(clip("appointment").audio);
      h.say(silence(800));
      h.say(clip("hours").audio);
      h.say(silence(800));
      await waitUntil(() => h.finals().length === 1, { ...WAIT, what: "the second final" });
      assert.deepEqual(h.finals(), [clip("hours").text], "the next utterance still went through");
      assert.equal(
        metric("kav_stt_dropped_utterances_total", { provider: "openai", reason: "refused" }),
        droppedBefore + 1,
      );
      const line = h.lines.find((l) => l.includes("utterance dropped"));
      assert.ok(line?.includes("reason=refused") && /ms=\d+/.test(line), String(line));
      const error = h.events.find((e) => e.type === "error");
      assert.ok(error?.type === "error" && error.error.category === "invalid_request");
    } finally {
      await h.close();
    }
  });
});

Deno.test("OpenAI STT bounds the backlog: past it the oldest utterance goes, logged and counted", async () => {
  await withServer({}, async (server) => {
    await server.down(60_000);
    const secondsBefore = metric("kav_stt_dropped_audio_seconds_total", { provider: "openai" });
    // Room for about two utterances of audio.
    const h = openSession(sttConfig(server.baseUrl), {
      tuning: { maxPendingMs: 5000, retryFirstMs: 50, closeTimeoutMs: 200 },
    });
    try {
      for (const name of ["appointment", "hours", "goodbye"]) {
        h.say(clip(name).audio);
        h.say(silence(800));
      }
      await waitUntil(() => h.lines.some((l) => l.includes("reason=backlog")), {
        ...WAIT,
        what: "the backlog drop",
      });
      const dropped = metric("kav_stt_dropped_audio_seconds_total", { provider: "openai" }) -
        secondsBefore;
      assert.ok(dropped > 2 && dropped < 4, `${dropped} s of the first utterance`);
    } finally {
      await h.close();
    }
    assert.ok(
      h.lines.some((l) => l.includes("utterance dropped") && l.includes("reason=call_ended")),
      "what was still waiting at the end is reported too",
    );
  });
});

Deno.test("OpenAI STT close() sends the utterance in progress and waits for its final", async () => {
  await withServer({ transcribeLatencyMs: 100 }, async (server) => {
    const h = openSession(sttConfig(server.baseUrl));
    h.say(clip("tomorrow").audio); // the caller hangs up right after speaking
    await h.close();
    assert.deepEqual(h.finals(), [clip("tomorrow").text]);
    assert.equal(server.transcriptions.length, 1);
  });
});

Deno.test("OpenAI STT reports latency to the final transcript per provider in /metrics", async () => {
  await withServer({ transcribeLatencyMs: 50 }, async (server) => {
    const name = "kav_stt_final_latency_seconds_count";
    const before = metric(name, { provider: "openai" });
    const h = openSession(sttConfig(server.baseUrl));
    try {
      h.say(clip("hours").audio);
      h.say(silence(800));
      await waitUntil(() => h.finals().length === 1, { ...WAIT, what: "the final" });
      assert.equal(metric(name, { provider: "openai" }), before + 1);
      assert.ok(metric("kav_stt_final_latency_seconds_sum", { provider: "openai" }) >= 0.05);
    } finally {
      await h.close();
    }
  });
});
