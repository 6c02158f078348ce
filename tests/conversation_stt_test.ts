/**
 * End to end speech recognition at the edges (issue 3 acceptance 2 and 4): a Speech server slow to
 * open loses no inbound audio, and one that refuses streaming (primary and fallback endpoint) falls
 * back to per-utterance `Recognize` while the agent's audio keeps its 20 ms cadence.
 */
import assert from "node:assert/strict";
import {
  CallerLine,
  clip,
  mediaRuns,
  readEndedCall,
  waitUntil,
  withSandbox,
} from "./support/_conversation.ts";
import { fixtureClips } from "../tools/sandbox/sandbox.ts";
import { startSpeechServer } from "../tools/sandbox/speech_server.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT = { timeoutMs: 20_000 };

Deno.test("conversation: a Speech server that takes 2 s to open loses no inbound audio", async () => {
  await withSandbox({ speech: { openDelayMs: 2000 } }, async (sandbox) => {
    const { speech, llm } = sandbox.servers;
    llm.script({ text: "כן." });
    const appointment = clip("appointment");
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      // The caller talks over the greeting, while the stream is still opening.
      await line.pause(300);
      await line.say(appointment.audio);
      await client.waitForEcho("a1_0", TIMEOUT);
      await line.pause(200);
    } finally {
      // Whole 40 ms batches (stt.batch_ms): Kav's batcher holds nothing back.
      await line.stop({ alignFrames: 2 });
    }
    // Every byte sent reaches the one stream, in order, while the call is live.
    const sent = line.sent();
    try {
      await waitUntil(() => speech.bytesReceived() >= sent.length, {
        timeoutMs: 10_000,
        what: "the speech server to receive what was sent",
      }).catch(() => {}); // the assertions below say what is missing
      assert.equal(speech.stats.streams.length, 1);
      assert.equal(speech.bytesReceived(), sent.length);
      assert.deepEqual(speech.stats.streams[0].matcher.audio, sent);
    } finally {
      client.sendStop();
      await client.close();
    }
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.deepEqual(speech.finals(), [appointment.text]);
    assert.equal(llm.requests[0].messages.at(-1)?.content, appointment.text);
    assert.equal(detail.call.counters?.rx_drops, 0);
    assert.deepEqual(detail.turns.filter((t) => t.speaker === "caller").map((t) => t.text), [
      appointment.text,
    ]);
    // Start-up order: the greeting was queued while the stream was still opening.
    const order = [
      "RX_WORKER started",
      "TX_WORKER started",
      "STT_SESSION init requested",
      "GREETING queued",
      "STT_SESSION ready",
    ];
    const at = order.map((text) => sandbox.lines.findIndex((l) => l.includes(text)));
    assert.ok(at.every((i, k) => i >= 0 && (k === 0 || i > at[k - 1])), JSON.stringify(at));
  });
});

Deno.test("conversation: refused streaming falls back to Recognize with the media cadence kept", async () => {
  const fallback = await startSpeechServer({ clips: fixtureClips() });
  try {
    await withSandbox({
      extra: `[stt.google]\nfallback_endpoint = "${fallback.address}"`,
    }, async (sandbox) => {
      const { speech, llm } = sandbox.servers;
      speech.refuseStreams(3);
      fallback.refuseStreams(3);
      llm.script({ text: "אנחנו פתוחים כל יום משמונה בבוקר." });
      const hours = clip("hours");
      const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
      const line = new CallerLine(client);
      try {
        client.begin();
        line.start();
        await client.waitForEcho("greeting_end", TIMEOUT);
        await line.say(hours.audio);
        await client.waitForEcho("a1_0", TIMEOUT);
        await line.pause(100);
      } finally {
        await line.hangUp();
      }
      // Primary refused 3 times, then the fallback endpoint 3 times, then Recognize did the work.
      assert.equal(speech.stats.refused, 3);
      assert.equal(fallback.stats.refused, 3);
      // Then at most one streaming retry, after the utterance was recognized (stt_recovery_test.ts).
      const opened = [...speech.stats.streams, ...fallback.stats.streams];
      assert.equal(opened.filter((s) => s.status === "refused").length, 6);
      assert.ok(opened.length <= 7, `${opened.length} streams`);
      const recognized = [...speech.stats.recognizeCalls, ...fallback.stats.recognizeCalls]
        .flatMap((c) => c.texts);
      assert.deepEqual(recognized, [hours.text]);
      assert.equal(llm.requests[0].messages.at(-1)?.content, hours.text);
      assert.ok(sandbox.lines.some((l) => l.includes("using fallback endpoint")));
      assert.ok(sandbox.lines.some((l) => l.includes("using per-utterance recognize")));

      // Agent audio (greeting, during the failover; then the answer) kept its cadence: inside each
      // spoken item, after the tx_lead_ms burst, frames arrive every 20 ms.
      const lead = sandbox.config.audio.tx_lead_ms / 20;
      const steady: number[] = [];
      for (const run of mediaRuns(client)) {
        for (let i = lead + 1; i < run.length; i++) steady.push(run[i] - run[i - 1]);
      }
      assert.ok(steady.length > 150, `${steady.length} intervals`);
      const mean = steady.reduce((a, b) => a + b, 0) / steady.length;
      const worst = Math.max(...steady);
      assert.ok(Math.abs(mean - 20) <= 0.5, `mean interval ${mean.toFixed(2)} ms`);
      assert.ok(worst <= 100, `largest gap ${worst.toFixed(1)} ms`);
      assert.equal(client.underruns, 0);
      const detail = await readEndedCall(sandbox.storagePath, client.callSid);
      assert.equal(detail.call.counters?.tx_late, 0);
    });
  } finally {
    await fallback.close();
  }
});

Deno.test("conversation: Speech down for the first 5 s of a call, every word reaches the LLM once, in order", async () => {
  await withSandbox({ speech: { headers: "with_first_result" } }, async (sandbox) => {
    const { speech, llm } = sandbox.servers;
    const said = [clip("appointment"), clip("hours"), clip("tomorrow")];
    const back = speech.downFor(5000);
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      // One clip about every 2.5 s, the first over the greeting: all said while the server is down
      // or just back.
      for (const c of said) {
        await line.say(c.audio);
        await line.pause(800);
      }
      await back;
      const users = () =>
        llm.requests.flatMap((r) =>
          r.messages.filter((m) => m.role === "user").map((m) => String(m.content))
        );
      await waitUntil(() => users().at(-1)?.includes(said.at(-1)!.text) ?? false, {
        timeoutMs: 20_000,
        what: "the last word to reach the LLM",
      }).catch(() => {});
    } finally {
      await line.hangUp();
    }
    // The last request's history holds every caller turn: each word once, in order.
    const last = llm.requests.at(-1);
    const heard = (last?.messages ?? []).filter((m) => m.role === "user").map((m) => m.content)
      .join(" ");
    const at = said.map((c) => heard.indexOf(c.text));
    assert.ok(at.every((i, k) => i >= 0 && (k === 0 || i > at[k - 1])), `${heard} ${at}`);
    for (const c of said) {
      assert.equal(heard.split(c.text).length - 1, 1, `"${c.text}" once in ${heard}`);
    }
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const callerTurns = detail.turns.filter((t) => t.speaker === "caller").map((t) => t.text)
      .join(" ");
    assert.deepEqual(said.map((c) => callerTurns.indexOf(c.text) >= 0), [true, true, true]);
    assert.ok(sandbox.lines.some((l) => l.includes("streaming unavailable")));
    assert.ok(
      sandbox.lines.some((l) =>
        l.includes("streaming resumed") || l.includes("recognize recovered")
      ),
    );
  });
});
