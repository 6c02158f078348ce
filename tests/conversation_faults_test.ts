/**
 * End to end provider faults (issue 3 acceptance 6): an LLM that stalls past `llm.timeout_ms`
 * (before the first token, or after the first sentence) and a TTS that fails twice each produce
 * the cached apology audio, and the call goes on: the next turn is answered normally.
 */
import * as grpc from "@grpc/grpc-js";
import assert from "node:assert/strict";
import { DEFAULT_APOLOGY, DEFAULT_GREETING } from "../src/config/_schema.ts";
import {
  audioSince,
  CallerLine,
  clip,
  indexOfBytes,
  readEndedCall,
  ttsAudio,
  withSandbox,
} from "./support/_conversation.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT = { timeoutMs: 20_000 };
/** The local TTS server speaks 20 ms per character here, to keep the calls short. */
const MS_PER_CHAR = 20;

/** Index in `client.received` of the mark `name`. */
function markIndex(client: TwilioClient, name: string): number {
  return client.received.findIndex((m) =>
    m.event === "mark" && (m.data["mark"] as { name: string }).name === name
  );
}

Deno.test("conversation: an LLM stall past timeout_ms plays the apology and the call goes on", async () => {
  await withSandbox({
    tts: { msPerChar: MS_PER_CHAR },
    extra: "[llm]\ntimeout_ms = 700",
  }, async (sandbox) => {
    const { llm } = sandbox.servers;
    const first = "רגע, אני בודק.";
    llm.script(
      { text: "לא יגיע.", stallAfterTokens: 0 }, // nothing, ever
      { tokens: ["רגע,", " אני", " בודק.", " ואז"], stallAfterTokens: 4 }, // a sentence, then nothing
      { text: "הכול תקין עכשיו." },
    );
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(clip("hours").audio);
      await client.waitForEcho("a1_0", TIMEOUT);
      await line.pause(200);
      await line.say(clip("appointment").audio);
      await client.waitForEcho("a2_1", TIMEOUT);
      await line.pause(200);
      await line.say(clip("tomorrow").audio);
      await client.waitForEcho("a3_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }
    const apology = ttsAudio(DEFAULT_APOLOGY, MS_PER_CHAR);
    // Turn 1: the apology alone; turn 2: the sentence that came, then the apology; turn 3: normal.
    const a1 = audioSince(client, markIndex(client, "greeting_end"));
    assert.equal(indexOfBytes(a1, apology), 0, "turn 1 is answered with the apology");
    const a2 = audioSince(client, markIndex(client, "a1_0"));
    assert.equal(indexOfBytes(a2, ttsAudio(first, MS_PER_CHAR)), 0);
    assert.equal(indexOfBytes(a2, apology), ttsAudio(first, MS_PER_CHAR).length);
    assert.deepEqual(
      audioSince(client, markIndex(client, "a2_1")),
      ttsAudio("הכול תקין עכשיו.", MS_PER_CHAR),
    );
    assert.deepEqual(client.marks, ["greeting_end", "a1_0", "a2_0", "a2_1", "a3_0"]);
    assert.equal(client.clears.length, 0);

    // The stalled requests were given up; the history holds what the caller heard.
    assert.equal(llm.requests.length, 3);
    assert.ok(llm.requests[0].disconnected && llm.requests[1].disconnected);
    assert.deepEqual(llm.requests[2].messages.slice(1).map((m) => [m.role, m.content]), [
      ["assistant", DEFAULT_GREETING],
      ["user", clip("hours").text],
      ["assistant", DEFAULT_APOLOGY],
      ["user", clip("appointment").text],
      ["assistant", `${first} ${DEFAULT_APOLOGY}`],
      ["user", clip("tomorrow").text],
    ]);
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.equal(detail.call.outcome, "completed");
    const agent = detail.turns.filter((t) => t.speaker === "agent").slice(1);
    assert.deepEqual(agent.map((t) => t.text), [
      DEFAULT_APOLOGY,
      `${first} ${DEFAULT_APOLOGY}`,
      "הכול תקין עכשיו.",
    ]);
    const errors = detail.events.filter((e) => e.kind === "provider_error");
    assert.equal(errors.length, 2);
    assert.ok(errors.every((e) => e.detail.startsWith("llm timeout")), JSON.stringify(errors));
    assert.ok(sandbox.lines.some((l) => /\[TURN\].* apology=1 /.test(l)));
  });
});

Deno.test("conversation: a TTS error plays the apology after one retry and the call goes on", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR } }, async (sandbox) => {
    const { llm, tts } = sandbox.servers;
    llm.script(
      { text: "המשפט הזה לא יושמע. וגם לא זה." },
      { text: "המשפט הזה כן יושמע." },
    );
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      tts.failNext(2); // the first sentence and its retry
      await line.say(clip("goodbye").audio);
      await client.waitForEcho("a1_0", TIMEOUT);
      await line.pause(200);
      tts.failNext(1); // one failure only: the retry succeeds, no apology
      await line.say(clip("hours").audio);
      await client.waitForEcho("a2_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }
    const apology = ttsAudio(DEFAULT_APOLOGY, MS_PER_CHAR);
    assert.deepEqual(
      audioSince(client, markIndex(client, "greeting_end")).subarray(0, apology.length),
      apology,
    );
    assert.deepEqual(
      audioSince(client, markIndex(client, "a1_0")),
      ttsAudio("המשפט הזה כן יושמע.", MS_PER_CHAR),
    );
    assert.deepEqual(client.marks, ["greeting_end", "a1_0", "a2_0"]);
    // After the apology nothing more of answer 1 was synthesized; answer 2 needed its retry.
    assert.deepEqual(tts.requests.slice(2).map((r) => r.text), [
      "המשפט הזה לא יושמע.",
      "המשפט הזה לא יושמע.",
      "המשפט הזה כן יושמע.",
      "המשפט הזה כן יושמע.",
    ]);
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const agent = detail.turns.filter((t) => t.speaker === "agent").slice(1);
    assert.deepEqual(agent.map((t) => [t.text, t.generated]), [
      [DEFAULT_APOLOGY, null],
      ["המשפט הזה כן יושמע.", null],
    ]);
    const errors = detail.events.filter((e) => e.kind === "provider_error");
    assert.deepEqual(errors.map((e) => e.detail.split(":")[0]), [
      "tts connectivity",
      "tts connectivity",
      "tts connectivity",
    ]);
  });
});

Deno.test("conversation: a TTS refusal (not retryable) plays the apology at once, without a retry", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR } }, async (sandbox) => {
    const { llm, tts } = sandbox.servers;
    llm.script({ text: "המשפט הזה לא יושמע." }, { text: "המשפט הזה כן יושמע." });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      tts.failNext(1, grpc.status.PERMISSION_DENIED, "The voice is not allowed");
      await line.say(clip("goodbye").audio);
      await client.waitForEcho("a1_0", TIMEOUT);
      await line.pause(200);
      await line.say(clip("hours").audio);
      await client.waitForEcho("a2_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }
    const apology = ttsAudio(DEFAULT_APOLOGY, MS_PER_CHAR);
    assert.deepEqual(
      audioSince(client, markIndex(client, "greeting_end")).subarray(0, apology.length),
      apology,
    );
    // The refused sentence was asked for once; the next answer is spoken normally.
    assert.deepEqual(tts.requests.slice(2).map((r) => r.text), [
      "המשפט הזה לא יושמע.",
      "המשפט הזה כן יושמע.",
    ]);
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const errors = detail.events.filter((e) => e.kind === "provider_error");
    assert.deepEqual(errors.map((e) => e.detail.split(":")[0]), ["tts authentication"]);
    assert.ok(!sandbox.lines.some((l) => l.includes("[TTS]") && l.includes("failed, retrying")));
  });
});
