/**
 * End to end with `stt.provider = "openai"` and `tts.provider = "openai"` (SPEC 10, issue 19): one
 * real Kav against the local OpenAI-compatible speech server and the chat server, driven by a
 * Twilio-like client. The caller's words reach the LLM and the answer is played with no Google
 * request; a 24 kHz tone reaches the caller as the same tone at 8 kHz μ-law, as long as it was;
 * transcription failures and a server down at call start lose no word.
 */
import assert from "node:assert/strict";
import { encodeMulaw } from "../src/audio/mulaw.ts";
import { decodeMulaw } from "../tools/bytes.ts";
import { resample } from "../src/audio/resample.ts";
import { DEFAULT_GREETING } from "../src/config/_schema.ts";
import {
  audioSince,
  CallerLine,
  clip,
  indexOfBytes,
  readEndedCall,
  waitUntil,
  withSandbox,
} from "./support/_conversation.ts";
import { TwilioClient } from "../tools/twilio/client.ts";
import { synthWaveform } from "../tools/sandbox/tts_server.ts";
import { measureTone, sine } from "./support/tones.ts";

const TIMEOUT = { timeoutMs: 20_000 };
const MS_PER_CHAR = 20;

/** What the caller hears for `text` from the local speech server: its 24 kHz tones at 8 kHz. */
function spoken(text: string): Uint8Array {
  return encodeMulaw(resample(synthWaveform(text, MS_PER_CHAR, 24_000), 24_000, 8000));
}

Deno.test("openai speech: a whole call gives the caller's words to the LLM and plays the answer, no Google request", async () => {
  await withSandbox({
    speechProvider: "openai",
    openaiSpeech: { msPerChar: MS_PER_CHAR, chunkBytes: 2400, chunkDelayMs: 5 },
  }, async (sandbox) => {
    const { llm, openaiSpeech, speech, tts } = sandbox.servers;
    const answer = ["בוודאי, אפשר לקבוע תור.", "מתי נוח לך?"];
    llm.script({ text: answer.join(" ") });
    const appointment = clip("appointment");
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.pause(200);
      await line.say(appointment.audio);
      await client.waitForEcho("a1_1", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }
    assert.equal(llm.requests.length, 1);
    assert.deepEqual(llm.requests[0].messages.at(-1), { role: "user", content: appointment.text });
    // Boot cached the greeting and apology; then one request per sentence.
    assert.deepEqual(openaiSpeech.speeches.map((s) => s.input).slice(2), answer);
    assert.ok(openaiSpeech.speeches.every((s) => s.status === 200 && s.voice === "alloy"));
    assert.deepEqual(openaiSpeech.texts(), [appointment.text]);
    const audio = client.audio();
    assert.equal(indexOfBytes(audio, spoken(DEFAULT_GREETING)), 0, "the greeting comes first");
    let at = 0;
    for (const sentence of answer) {
      const next = indexOfBytes(audio, spoken(sentence), at);
      assert.ok(next > at, `"${sentence}" is played, in order`);
      at = next;
    }
    // No Google request of any kind.
    assert.equal(speech.stats.streams.length, 0, "no StreamingRecognize");
    assert.equal(speech.stats.recognizeCalls.length, 0, "no Recognize");
    assert.equal(tts.requests.length, 0, "no SynthesizeSpeech");
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.deepEqual(
      detail.turns.map((t) => [t.speaker, t.text]),
      [["agent", DEFAULT_GREETING], ["caller", appointment.text], ["agent", answer.join(" ")]],
    );
    const timings = detail.turns[2].timings;
    assert.ok(timings !== null && timings.tts_ttfb !== null && timings.stt_final_delay !== null);
    assert.equal(detail.call.counters?.rx_drops, 0);
  });
});

Deno.test("openai speech: a 1 kHz tone at 24 kHz reaches the caller as 1 kHz at 8 kHz μ-law, as long", async () => {
  // Every text is spoken as a 1 kHz tone, 50 ms per character; the answer arrives in 100 ms
  // chunks 100 ms apart, slower than it plays, so it is heard while still arriving.
  const msPerChar = 50;
  const greeting = "שלום לכם";
  const answer = "בוודאי, אפשר.";
  await withSandbox({
    speechProvider: "openai",
    extra: `[call]\ngreeting = "${greeting}"`,
    openaiSpeech: {
      speechAudio: (text, rate) =>
        sine({ hz: 1000, rate, ms: [...text].length * msPerChar, amplitude: 12_000 }),
      chunkBytes: 4800,
      chunkDelayMs: 100,
    },
  }, async (sandbox) => {
    const { llm, openaiSpeech } = sandbox.servers;
    llm.script({ text: answer });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    let greetingAudio: Uint8Array;
    let answerFrom = 0;
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      greetingAudio = client.audio();
      answerFrom = client.received.length;
      await line.say(clip("hours").audio);
      await client.waitForEcho("a1_0", TIMEOUT);
    } finally {
      await line.hangUp();
    }
    const answerAudio = audioSince(client, answerFrom);
    for (
      const [name, audio, text] of [
        ["greeting", greetingAudio, greeting],
        ["answer", answerAudio, answer],
      ] as const
    ) {
      const samples = decodeMulaw(audio);
      const tone = measureTone(samples, 8000);
      const errorPct = (tone.hz - 1000) / 10;
      assert.ok(Math.abs(errorPct) < 1, `${name}: ${tone.hz} Hz`);
      const wantMs = [...text].length * msPerChar;
      const errorMs = samples.length / 8 - wantMs;
      assert.ok(Math.abs(errorMs) < 20, `${name}: ${samples.length / 8} ms for ${wantMs} ms`);
      console.log(
        `  ${name}: ${tone.hz.toFixed(3)} Hz (${errorPct.toFixed(4)} %), ` +
          `${samples.length / 8} ms for ${wantMs} ms (${errorMs} ms)`,
      );
    }
    // Streamed: the answer's first frame reached the caller before the server had sent it all.
    const answerSpeech = openaiSpeech.speeches.find((s) => s.input === answer);
    const firstAnswerFrame = client.received.slice(answerFrom).find((m) => m.event === "media");
    assert.ok(answerSpeech?.lastByteAt && firstAnswerFrame, "answer spoken and heard");
    assert.ok(
      firstAnswerFrame.at < answerSpeech.lastByteAt,
      `first frame ${answerSpeech.lastByteAt - firstAnswerFrame.at} ms before the last byte`,
    );
  });
});

Deno.test("openai speech: a transcription server failing twice then answering loses no utterance", async () => {
  await withSandbox({ speechProvider: "openai" }, async (sandbox) => {
    const { llm, openaiSpeech } = sandbox.servers;
    llm.script({ text: "כן." });
    openaiSpeech.failTranscriptions(2, 503);
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(clip("appointment").audio);
      await client.waitForEcho("a1_0", TIMEOUT);
    } finally {
      await line.hangUp();
    }
    assert.deepEqual(openaiSpeech.transcriptions.map((t) => t.status), [503, 503, 200]);
    assert.deepEqual(llm.requests[0].messages.at(-1), {
      role: "user",
      content: clip("appointment").text,
    });
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const errors = detail.events.filter((e) => e.kind === "provider_error");
    assert.equal(errors.length, 2, "each failure is on the call's record");
  });
});

Deno.test("openai speech: a transcription server down 5 s at call start gets the first words to the LLM once back", async () => {
  await withSandbox({ speechProvider: "openai" }, async (sandbox) => {
    const { llm, openaiSpeech } = sandbox.servers;
    llm.script({ text: "כן." });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    await openaiSpeech.down(5000);
    const downAt = performance.now();
    try {
      client.begin();
      line.start();
      // The caller speaks at once, while the server is down.
      await line.say(clip("tomorrow").audio);
      await line.pause(600);
      await waitUntil(() => llm.requests.length === 1, { timeoutMs: 20_000, what: "the LLM" });
      const waitedMs = performance.now() - downAt;
      assert.ok(waitedMs >= 4900, `the words reached the LLM after ${waitedMs} ms`);
      await client.waitForEcho("a1_0", TIMEOUT);
    } finally {
      await line.hangUp();
    }
    assert.deepEqual(llm.requests[0].messages.at(-1), {
      role: "user",
      content: clip("tomorrow").text,
    });
    assert.ok(
      sandbox.lines.some((l) => l.includes("transcription failed, retrying")),
      "the outage is in the log",
    );
    assert.ok(!sandbox.lines.some((l) => l.includes("utterance dropped")), "nothing was dropped");
  });
});

Deno.test("openai speech: an answer whose audio breaks off keeps what was played, then apologizes", async () => {
  await withSandbox({
    speechProvider: "openai",
    openaiSpeech: { msPerChar: MS_PER_CHAR, chunkBytes: 4800, chunkDelayMs: 20 },
  }, async (sandbox) => {
    const { llm, openaiSpeech } = sandbox.servers;
    const answer = ["בוודאי, אפשר לקבוע תור למחר בבוקר.", "מתי נוח לך?"];
    llm.script({ text: answer.join(" ") });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    let answerFrom = 0;
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      answerFrom = client.received.length;
      // 9600 bytes: the first 200 ms of the first sentence, then a connection reset.
      openaiSpeech.cutSpeech(9600);
      await line.say(clip("appointment").audio);
      await client.waitForEcho("a1_1", TIMEOUT);
      await line.pause(200);
    } finally {
      await line.hangUp();
    }
    assert.deepEqual(
      openaiSpeech.speeches.slice(2).map((s) => s.input),
      [answer[0]],
      "nothing after the broken sentence was synthesized",
    );
    const heard = audioSince(client, answerFrom);
    // 4800 samples at 24 kHz give 1600 at 8 kHz, less the filter's look-ahead: 9 whole frames.
    const partial = spoken(answer[0]).subarray(0, 9 * 160);
    assert.equal(indexOfBytes(heard, partial), 0, "what arrived was played");
    assert.equal(indexOfBytes(heard, spoken(answer[0])), -1, "not the whole sentence");
    assert.ok(
      indexOfBytes(heard, spoken(sandbox.config.call.apology)) >= 9 * 160,
      "the cached apology follows",
    );
    assert.deepEqual(client.marks.slice(1), ["a1_0", "a1_1"]);
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.ok(detail.events.some((e) => e.kind === "provider_error" && e.detail.startsWith("tts")));
  });
});
