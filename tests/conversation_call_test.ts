/**
 * End to end, one real Kav against the local gRPC Speech/TTS servers and the OpenAI-compatible SSE
 * server, driven by a Twilio-like client: a whole conversation (issue 3 acceptance 1), the LLM
 * streamed into TTS sentence by sentence (acceptance 7), per-turn timings and `[TURN]` lines, and a
 * call that ends mid-answer.
 */
import assert from "node:assert/strict";
import { DEFAULT_GREETING } from "../src/config/_schema.ts";
import {
  audioSince,
  CallerLine,
  clip,
  indexOfBytes,
  readEndedCall,
  ttsAudio,
  waitUntil,
  withSandbox,
} from "./support/_conversation.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT = { timeoutMs: 20_000 };
/** The local TTS server speaks 20 ms per character (60 by default), to keep the calls short. */
const MS_PER_CHAR = 20;

Deno.test("conversation: a full call answers the caller and records what was played", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR } }, async (sandbox) => {
    const { llm, tts } = sandbox.servers;
    const answer1 = ["בוודאי, אפשר לקבוע תור.", "מתי נוח לך?"];
    const answer2 = ["מצוין, קבעתי לך למחר בתשע."];
    llm.script({ text: answer1.join(" "), tokenDelayMs: 5 }, { text: answer2.join(" ") });
    const appointment = clip("appointment");
    const tomorrow = clip("tomorrow");

    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.pause(200);
      await line.say(appointment.audio);
      await client.waitForEcho("a1_1", TIMEOUT);
      await line.pause(200);
      await line.say(tomorrow.audio);
      await client.waitForEcho("a2_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }

    // The LLM saw the history the caller heard: greeting, first exchange, then the new question.
    assert.equal(llm.requests.length, 2);
    const system = sandbox.config.call.system_prompt;
    assert.deepEqual(llm.requests[0].messages, [
      { role: "system", content: system },
      { role: "assistant", content: DEFAULT_GREETING },
      { role: "user", content: appointment.text },
    ]);
    assert.deepEqual(llm.requests[1].messages, [
      { role: "system", content: system },
      { role: "assistant", content: DEFAULT_GREETING },
      { role: "user", content: appointment.text },
      { role: "assistant", content: answer1.join(" ") },
      { role: "user", content: tomorrow.text },
    ]);
    assert.ok(llm.requests.every((r) => r.stream), "chat completions are streamed");

    // Each sentence went to TTS on its own and was played in order, a mark after each.
    // (The first two requests are the greeting and apology, cached at boot.)
    assert.deepEqual(tts.requests.slice(2).map((r) => r.text), [...answer1, ...answer2]);
    assert.deepEqual(client.marks, ["greeting_end", "a1_0", "a1_1", "a2_0"]);
    assert.ok(client.echoes.every((e) => !e.cleared));
    const audio = client.audio();
    let at = indexOfBytes(audio, ttsAudio(DEFAULT_GREETING, MS_PER_CHAR));
    assert.equal(at, 0, "the greeting is played first");
    for (const sentence of [...answer1, ...answer2]) {
      const next = indexOfBytes(audio, ttsAudio(sentence, MS_PER_CHAR), at);
      assert.ok(next > at, `"${sentence}" is played after what came before`);
      at = next;
    }
    assert.deepEqual(client.invalid, []);

    // The record: greeting, caller, agent, caller, agent; agent text = what was played.
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.equal(detail.call.outcome, "completed");
    assert.deepEqual(
      detail.turns.map((t) => [t.index, t.speaker, t.text, t.cut, t.generated]),
      [
        [0, "agent", DEFAULT_GREETING, false, null],
        [1, "caller", appointment.text, false, null],
        [2, "agent", answer1.join(" "), false, null],
        [3, "caller", tomorrow.text, false, null],
        [4, "agent", answer2.join(" "), false, null],
      ],
    );
    // Caller turns span the caller's speech (VAD onset to end), not the moment of the decision.
    for (
      const [turn, c] of [[detail.turns[1], appointment], [detail.turns[3], tomorrow]] as const
    ) {
      const spoken = turn.endedAt - turn.startedAt;
      const clipMs = c.audio.length / 8;
      assert.ok(spoken > clipMs * 0.5 && spoken < clipMs * 1.5, `${spoken} ms for ${clipMs} ms`);
    }
    for (const turn of detail.turns.filter((t) => t.speaker === "agent" && t.index > 0)) {
      const timings = turn.timings;
      assert.ok(timings !== null, "agent turns store their timings");
      for (const name of ["e2e_latency", "server_latency", "llm_ttft", "tts_ttfb"] as const) {
        const value: number | null = timings[name];
        assert.ok(value !== null && value >= 0, `${name} is stored (${value})`);
      }
      assert.ok(timings.e2e_latency! >= timings.server_latency!, "providers count in e2e only");
      // The caller's speech end is known (VAD), so end-of-turn delays are measured too.
      assert.ok(timings.end_of_turn_delay !== null && timings.end_of_turn_delay < 1000);
      assert.ok(timings.stt_final_delay !== null && timings.stt_final_delay < 1000);
    }
    assert.equal(detail.call.counters?.rx_drops, 0);

    // One [TURN] line per agent answer, with its latencies, and no transcript text in it.
    const turnLines = sandbox.lines.filter((l) => l.includes("[TURN]"));
    assert.equal(turnLines.length, 2, turnLines.join("\n"));
    for (const line of turnLines) {
      assert.match(line, new RegExp(`call=${client.callSid} `));
      assert.match(line, / e2e_latency_ms=\d/);
      assert.match(line, / server_latency_ms=\d/);
      assert.match(line, / llm_ttft_ms=\d/);
      assert.match(line, / tts_ttfb_ms=\d/);
      assert.doesNotMatch(line, /[\u0590-\u05FF]/, "no Hebrew text in [TURN] lines");
    }
  });
});

Deno.test("conversation: the first sentence reaches TTS before the LLM stream ends", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR } }, async (sandbox) => {
    const { llm, tts } = sandbox.servers;
    // Sentence 1 completes at token 3 (its end is seen with the next token); 20 more tokens follow
    // 150 ms apart, so the whole stream takes ~3.5 s.
    const first = "כן, בטח.";
    const rest = Array.from({ length: 20 }, (_, i) => ` מילה${i}`);
    const tokens = ["כן,", " בטח.", ...rest, "."];
    llm.script({ tokens, tokenDelayMs: 150 });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(clip("hours").audio);
      await waitUntil(() => tts.requests.some((r) => r.text === first), {
        timeoutMs: 20_000,
        what: "the first sentence at TTS",
      });
      const request = llm.requests[0];
      assert.ok(
        request.tokensSent < tokens.length,
        `TTS got sentence 1 after ${request.tokensSent} of ${tokens.length} tokens`,
      );
      // Its audio is on the wire while the LLM is still streaming.
      const played = ttsAudio(first, MS_PER_CHAR).subarray(0, 1600);
      await waitUntil(() => indexOfBytes(audioSince(client, 0), played) >= 0, {
        timeoutMs: 20_000,
        what: "the first sentence's audio",
      });
      assert.ok(request.tokensSent < tokens.length, "first audio left before the LLM finished");
      await request.settled;
      await client.waitForEcho("a1_1", TIMEOUT);
    } finally {
      await line.hangUp();
    }
    assert.deepEqual(tts.requests.slice(2).map((r) => r.text), [first, rest.join("").trim() + "."]);
  });
});

Deno.test("conversation: a call that ends mid-answer records only what was heard", async () => {
  await withSandbox({}, async (sandbox) => {
    const { llm } = sandbox.servers;
    const sentences = ["בסדר.", "זו תשובה ארוכה מאוד שלא תסתיים לפני שהשיחה תנותק, כי היא ממשיכה."];
    llm.script({ text: sentences.join(" ") });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(clip("goodbye").audio);
      await client.waitForEcho("a1_0", TIMEOUT);
      // Half a second into the long second sentence, the caller hangs up.
      await line.pause(500);
    } finally {
      await line.hangUp();
    }
    assert.ok(!client.echoes.some((e) => e.name === "a1_1"), "the second sentence never ended");
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const agent = detail.turns.filter((t) => t.speaker === "agent");
    assert.equal(agent.length, 2);
    assert.equal(agent[1].text, sentences[0]);
    assert.equal(agent[1].generated, sentences.join(" "));
    assert.equal(agent[1].cut, false);
    assert.ok(agent[1].timings?.e2e_latency !== null);
  });
});
