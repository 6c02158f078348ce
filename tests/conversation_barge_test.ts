/**
 * End to end barge-in and overlapping turns (issue 3 acceptance 5 and the races around it): the
 * caller cuts an answer, cuts the greeting, or speaks again before the answer is ready.
 */
import assert from "node:assert/strict";
import { DEFAULT_GREETING } from "../src/config/_schema.ts";
import {
  audioSince,
  CallerLine,
  clip,
  firstVoicedFrame,
  readEndedCall,
  ttsAudio,
  waitUntil,
  withSandbox,
} from "./support/_conversation.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT = { timeoutMs: 20_000 };

/** Index in `client.received` of the first message matching `pred`, or -1. */
function indexOf(client: TwilioClient, pred: (event: string, name: string) => boolean): number {
  return client.received.findIndex((m) =>
    pred(m.event, m.event === "mark" ? (m.data["mark"] as { name: string }).name : "")
  );
}

Deno.test("conversation: caller speech 500 ms into an answer clears it within 100 ms", async () => {
  await withSandbox({}, async (sandbox) => {
    const { llm } = sandbox.servers;
    // About 5 s of audio at 60 ms per character; the barge-in lands inside the second sentence,
    // far from any sentence boundary.
    const answer = [
      "כן.",
      "אנחנו פתוחים בימים ראשון עד חמישי משמונה בבוקר.",
      "ובימי שישי אנחנו פתוחים עד שתיים בצהריים.",
    ];
    const next = "בסדר גמור.";
    llm.script({ text: answer.join(" ") }, { text: next });
    const hours = clip("hours");
    const tomorrow = clip("tomorrow");
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    let spokeAt = NaN;
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(hours.audio);
      // The answer's first frame, then half a second of it.
      const greetingEnd = indexOf(client, (e, n) => e === "mark" && n === "greeting_end");
      await client.waitFor(
        () => client.received.slice(greetingEnd).some((m) => m.event === "media"),
        {
          ...TIMEOUT,
          what: "the answer's first frame",
        },
      );
      const answerStart = client.received.slice(greetingEnd).find((m) => m.event === "media")!.at;
      await waitUntil(() => performance.now() >= answerStart + 500, {
        timeoutMs: 5000,
        what: "500 ms of answer",
      });
      const sentAt = await line.say(tomorrow.audio);
      spokeAt = sentAt[firstVoicedFrame(tomorrow.audio)];
      await client.waitForEcho("a2_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }

    // One clear, within 100 ms of the caller's first voiced frame leaving the client.
    assert.equal(client.clears.length, 1);
    const clearAfter = client.clears[0] - spokeAt;
    assert.ok(
      clearAfter >= 0 && clearAfter < 100,
      `clear came ${clearAfter.toFixed(1)} ms after onset`,
    );

    // Nothing of the cut answer after the clear: only the next answer's audio follows it.
    const clearIndex = indexOf(client, (e) => e === "clear");
    assert.deepEqual(audioSince(client, clearIndex), ttsAudio(next));

    // The caller heard sentence 1 (its mark echoed as played); the rest was cut.
    const playedMarks = client.echoes.filter((e) => !e.cleared && e.name.startsWith("a1_"));
    assert.deepEqual(playedMarks.map((e) => e.name), ["a1_0"]);
    const system = sandbox.config.call.system_prompt;
    assert.deepEqual(llm.requests[1].messages, [
      { role: "system", content: system },
      { role: "assistant", content: DEFAULT_GREETING },
      { role: "user", content: hours.text },
      { role: "assistant", content: answer[0] },
      { role: "user", content: tomorrow.text },
    ]);

    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const agent = detail.turns.filter((t) => t.speaker === "agent").slice(1);
    assert.deepEqual(agent.map((t) => [t.text, t.cut]), [[answer[0], true], [next, false]]);
    assert.ok(agent[0].generated?.startsWith(answer.slice(0, 2).join(" ")));
    assert.ok(detail.events.some((e) => e.kind === "barge_in"));
    assert.ok(sandbox.lines.some((l) => l.includes("[BARGE_IN]") && l.includes("cause=vad")));
  });
});

Deno.test("conversation: barging into the greeting cuts it and drops it from the history", async () => {
  await withSandbox({}, async (sandbox) => {
    const { llm } = sandbox.servers;
    llm.script({ text: "בשמחה." });
    const appointment = clip("appointment");
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForFrames(15, TIMEOUT); // 300 ms of the 2 s greeting
      await line.say(appointment.audio);
      await client.waitForEcho("a1_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }
    assert.equal(client.clears.length, 1);
    const greetingEcho = client.echoes.find((e) => e.name === "greeting_end");
    assert.ok(greetingEcho === undefined || greetingEcho.cleared, "the greeting did not finish");
    const clearIndex = indexOf(client, (e) => e === "clear");
    assert.ok(
      audioSince(client, 0).length - audioSince(client, clearIndex).length <
        ttsAudio(DEFAULT_GREETING).length,
    );
    assert.deepEqual(audioSince(client, clearIndex), ttsAudio("בשמחה."));
    assert.deepEqual(llm.requests[0].messages, [
      { role: "system", content: sandbox.config.call.system_prompt },
      { role: "user", content: appointment.text },
    ]);
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.deepEqual(
      detail.turns.map((t) => [t.speaker, t.text, t.cut, t.generated]),
      [
        ["agent", "", true, DEFAULT_GREETING],
        ["caller", appointment.text, false, null],
        ["agent", "בשמחה.", false, null],
      ],
    );
  });
});

Deno.test("conversation: speaking again before the answer is ready supersedes it", async () => {
  await withSandbox({ extra: "[llm]\ntimeout_ms = 10000" }, async (sandbox) => {
    const { llm } = sandbox.servers;
    // The first answer is slow to start; the caller adds to the question meanwhile.
    llm.script({ text: "תשובה ישנה.", firstTokenDelayMs: 6000 }, { text: "תשובה חדשה." });
    const hours = clip("hours");
    const appointment = clip("appointment");
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(hours.audio);
      await waitUntil(() => llm.requests.length === 1, { timeoutMs: 10_000, what: "request 1" });
      await line.pause(300);
      await line.say(appointment.audio);
      await client.waitForEcho("a2_0", TIMEOUT);
      await line.pause(100);
    } finally {
      await line.hangUp();
    }
    assert.equal(llm.requests.length, 2);
    await llm.requests[0].settled;
    assert.equal(llm.requests[0].disconnected, true, "the superseded request was cancelled");
    assert.deepEqual(llm.requests[1].messages.slice(1), [
      { role: "assistant", content: DEFAULT_GREETING },
      { role: "user", content: hours.text },
      { role: "user", content: appointment.text },
    ]);
    assert.deepEqual(client.marks, ["greeting_end", "a2_0"]);
    assert.equal(client.clears.length, 0, "nothing was playing, so nothing to clear");
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.deepEqual(
      detail.turns.map((t) => [t.speaker, t.text]),
      [
        ["agent", DEFAULT_GREETING],
        ["caller", hours.text],
        ["caller", appointment.text],
        ["agent", "תשובה חדשה."],
      ],
    );
  });
});
