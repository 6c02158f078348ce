/**
 * Issue 7, item 3: fault injection under load. 50 simultaneous calls on one Kav (sandbox: real
 * Google and OpenAI clients against the local servers) while the LLM stalls, the TTS server
 * returns errors, and the Speech server is killed and restarted. Every call keeps its cadence
 * (no gap over 100 ms between agent frames within an utterance), recovers (a clip said after the
 * restart is transcribed on every call) and is recorded with the faults as events.
 *
 * "Gap" is measured where the agent is speaking: between consecutive media frames of one
 * utterance, an utterance being the frames between two of Kav's marks (each spoken sentence, the
 * greeting and the apology are followed by a mark) or a `clear`. Silence between utterances (the
 * agent waiting for the caller, a provider, a retry) is not a cadence gap.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { openCallReader } from "../src/store/read.ts";
import type { CallDetail } from "../src/store/read.ts";
import { fixtureClip, sayAndWait } from "./support/kav_process.ts";
import { type Sandbox, startSandbox } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const CALLS = 50;
const TIMEOUT_MS = 45_000;
/** The acceptance bound: no gap over this at the client, within an utterance. */
const MAX_GAP_MS = 100;
const LLM_STALLS = 8;
const TTS_FAILURES = 12;
/** What a stalled LLM starts to say: one token, then nothing (the apology follows). */
const STALLED_ANSWER = "רגע אחד, אני בודקת את זה בשבילך.";

/** Largest interval between consecutive media frames of one utterance (see the module comment). */
function maxUtteranceGap(client: TwilioClient): { gap: number; utterances: number } {
  let gap = 0;
  let utterances = 0;
  let last = NaN;
  for (const message of client.received) {
    if (message.event === "media") {
      if (Number.isNaN(last)) utterances++;
      else gap = Math.max(gap, message.at - last);
      last = message.at;
    } else {
      last = NaN; // a mark or clear ends the utterance
    }
  }
  return { gap, utterances };
}

async function storedCalls(sandbox: Sandbox, sids: readonly string[]): Promise<CallDetail[]> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (true) {
    const reader = openCallReader(sandbox.storagePath);
    try {
      const details = sids.map((sid) => reader.getCall(sid));
      if (details.every((d) => d?.call.outcome)) return details as CallDetail[];
    } finally {
      reader.close();
    }
    if (Date.now() > deadline) throw new Error("Timed out waiting for the call records");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Resolves once the agent's answer to turn `n` (its first sentence's mark) was echoed. */
function answered(client: TwilioClient, n: number): Promise<void> {
  return client.waitFor(() => client.echoes.some((e) => e.name.startsWith(`a${n}_`)), {
    timeoutMs: TIMEOUT_MS,
    what: `answer ${n}`,
  });
}

Deno.test("50 calls keep their cadence, recover and are recorded while Speech dies, the LLM stalls and TTS fails", async () => {
  const sandbox = await startSandbox({
    // A stalled LLM is given up after 1.5 s (then the cached apology).
    extra: "[llm]\ntimeout_ms = 1500",
    tts: { msPerChar: 40 },
  });
  const { speech, llm, tts } = sandbox.servers;
  const first = fixtureClip("appointment");
  const second = fixtureClip("hours");
  const clients: TwilioClient[] = [];
  try {
    for (let i = 0; i < CALLS; i++) {
      clients.push(await TwilioClient.connect({ url: sandbox.mediaUrl, keepAudio: false }));
    }
    for (const client of clients) client.begin();
    await Promise.all(clients.map((c) => c.waitForEcho("greeting_end", { timeoutMs: TIMEOUT_MS })));

    // Turn 1 while the LLM stalls for some answers and TTS fails some requests.
    llm.script(
      ...Array.from({ length: LLM_STALLS }, () => ({ text: STALLED_ANSWER, stallAfterTokens: 1 })),
    );
    tts.failNext(TTS_FAILURES, grpc.status.UNAVAILABLE, "TTS overloaded (test)");
    await Promise.all(clients.map((c) => sayAndWait(c, first.audio, answered(c, 1))));

    // The Speech server dies mid-call and comes back; every call hears the caller again.
    const killedAt = speech.stats.streams.length;
    await speech.kill();
    await Promise.all(clients.map((c) => c.streamSilence(1500)));
    await speech.restart();
    await Promise.all(clients.map((c) => sayAndWait(c, second.audio, answered(c, 2))));
    for (const client of clients) client.sendStop();
    const details = await storedCalls(sandbox, clients.map((c) => c.callSid));

    // Cadence: within every utterance, on every call.
    let worst = 0;
    for (const client of clients) {
      const { gap, utterances } = maxUtteranceGap(client);
      assert.ok(utterances >= 3, `greeting and two answers (${utterances})`);
      assert.equal(client.invalid.length, 0);
      worst = Math.max(worst, gap);
    }
    assert.ok(worst <= MAX_GAP_MS, `worst gap within an utterance: ${worst.toFixed(1)} ms`);

    // Recovery: after the restart every call's second turn was transcribed.
    let llmErrors = 0;
    let ttsErrors = 0;
    for (const detail of details) {
      const sid = detail.call.callSid;
      assert.equal(detail.call.outcome, "completed", `${sid}: ${detail.call.reason}`);
      const said = detail.turns.filter((t) => t.speaker === "caller").map((t) => t.text);
      assert.deepEqual(said, [first.text, second.text], `${sid}: transcripts`);
      const kinds = detail.events.map((e) => `${e.kind} ${e.detail}`);
      assert.ok(
        kinds.some((k) => /^(provider_error stt|stt_restart)/.test(k)),
        `${sid}: the Speech outage is recorded (${kinds.join("; ")})`,
      );
      llmErrors += detail.events.filter((e) =>
        /^provider_error$/.test(e.kind) &&
        e.detail.startsWith("llm")
      ).length;
      ttsErrors += detail.events.filter((e) =>
        e.kind === "provider_error" &&
        e.detail.startsWith("tts")
      ).length;
    }
    assert.equal(llmErrors, LLM_STALLS, "each stalled answer recorded once");
    assert.equal(ttsErrors, TTS_FAILURES, "each failed synthesis recorded once");
    // The restarted server heard every second clip (on a reopened stream or per-utterance recognize).
    const heard = speech.stats.streams.slice(killedAt).flatMap((st) => st.finals)
      .concat(speech.stats.recognizeCalls.flatMap((r) => r.texts))
      .filter((text) => text === second.text);
    assert.equal(heard.length, CALLS, "no transcript lost after the restart");
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await sandbox.stop();
  }
});
