/**
 * End to end, call control (issue 15, SPEC 6): the agent's transfer and hang-up ride on Twilio's
 * `<Connect action>`: the last sentence is heard (its mark echoed) before Kav closes the socket,
 * the action request gets `<Dial>` or `<Hangup/>`, a dial nobody answers connects the caller back
 * to an agent that knows, and the caller speaking over the last sentence cancels the action.
 */
import assert from "node:assert/strict";
import {
  CallerLine,
  clip,
  readEndedCall,
  waitUntil,
  withSandbox,
} from "./support/_conversation.ts";
import { followConnectAction, followDialAction, TwilioClient } from "../tools/twilio/client.ts";
import { renderMetrics } from "../src/observe/metrics.ts";
import { openCallReader } from "../src/store/read.ts";
import { sharedScheduler } from "../src/call/scheduler.ts";

const TIMEOUT = { timeoutMs: 20_000 };
const MS_PER_CHAR = 20;
const FROM = "+972501234567";
const TO = "+97231234567";
const SALES = "+97231234500";
const TRANSFER = `[call.transfer]\nsales = "${SALES}"\nsupport = "sip:support@pbx.example.com"`;

async function connect(mediaUrl: string, callSid?: string, extra: Record<string, string> = {}) {
  const client = await TwilioClient.connect({
    url: mediaUrl,
    callSid,
    customParameters: { From: FROM, To: TO, ...extra },
  });
  const line = new CallerLine(client);
  client.begin();
  line.start();
  return { client, line };
}

Deno.test("transfer: the last sentence is heard before the socket closes, the action gets <Dial>, no-answer connects the caller back to an agent that knows", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR }, extra: TRANSFER }, async (sandbox) => {
    const { llm } = sandbox.servers;
    const last = "מעבירה אותך למחלקת המכירות.";
    const back = "לא הצלחתי להשיג את המכירות. להשאיר להם הודעה?";
    llm.script(
      { text: last, toolCalls: [{ name: "transfer_call", arguments: { department: "sales" } }] },
      { text: back },
    );
    const { client, line } = await connect(sandbox.mediaUrl);
    const closedAt = client.closed.then(() => sharedScheduler().now());
    await client.waitForEcho("greeting_end", TIMEOUT);
    await line.say(clip("appointment").audio);
    const closed = await Promise.race([
      closedAt,
      new Promise<null>((resolve) => setTimeout(() => resolve(null), 20_000)),
    ]);
    await line.stop();
    assert.ok(closed !== null, "Kav closed the socket");
    const echo = client.echoes.find((e) => e.name === "a1_0");
    assert.ok(echo && !echo.cleared, "the last sentence's mark came back as played");
    assert.ok(echo.echoedAt <= closed, "the socket closed after the mark was echoed");
    // The transfer tool offered only the configured departments, never a number.
    const transferTool = (llm.requests[0].body.tools as {
      function: { name: string; parameters: { properties: { department: { enum: string[] } } } };
    }[]).find((t) => t.function.name === "transfer_call");
    assert.deepEqual(transferTool?.function.parameters.properties.department.enum, [
      "sales",
      "support",
    ]);

    // Twilio requests the <Connect action>: Kav answers <Dial> with the number, from memory.
    const call = { callSid: client.callSid, from: FROM, to: TO };
    const next = await followConnectAction(sandbox.baseUrl, call);
    assert.equal(next.kind, "dial");
    if (next.kind !== "dial") return;
    assert.equal(next.target, SALES);
    assert.equal(next.sip, false);
    assert.equal(next.action, "http://127.0.0.1:8080/webhook/dial_ended");

    // Nobody answers: the caller is connected back to a new stream of the same call.
    const back$ = await followDialAction(sandbox.baseUrl, next, { ...call, status: "no-answer" });
    assert.equal(back$.kind, "stream");
    if (back$.kind !== "stream") return;
    assert.deepEqual(back$.parameters, {
      From: FROM,
      To: TO,
      CallSid: client.callSid,
      KavDialStatus: "no-answer",
    });
    const again = await connect(sandbox.mediaUrl, client.callSid, back$.parameters);
    try {
      await again.client.waitForEcho("a1_1", TIMEOUT);
      assert.ok(!again.client.marks.includes("greeting_end"), "no second greeting");
    } finally {
      await again.line.hangUp();
    }
    // The agent knew why: the history so far and a note that the transfer failed.
    const resumed = llm.requests[1].messages;
    const note = resumed.find((m) => m.role === "system" && m.content.includes("no-answer"));
    assert.ok(note, JSON.stringify(resumed));
    assert.match(note.content, /transfer to sales did not go through/);
    assert.ok(resumed.some((m) => m.role === "user" && m.content === clip("appointment").text));
    assert.ok(resumed.some((m) => m.role === "assistant" && m.content === last));

    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.equal(detail.call.outcome, "completed", "the caller hung up on the second stream");
    assert.deepEqual(
      detail.transfers.map((t) => [t.department, t.target, t.dialStatus]),
      [["sales", SALES, "no-answer"]],
    );
    assert.deepEqual(detail.turns.map((t) => [t.speaker, t.text]).slice(1), [
      ["caller", clip("appointment").text],
      ["agent", last],
      ["agent", back],
    ]);
    assert.match(renderMetrics(), /kav_transfers_total\{outcome="no-answer"\} [1-9]/);
    assert.ok(
      sandbox.lines.some((l) => l.includes("outcome=transferred")),
      "the first stream ended as transferred, not as a caller hang-up",
    );
  });
});

Deno.test("transfer: a completed dial ends the call with <Hangup/>; a SIP department dials <Sip>", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR }, extra: TRANSFER }, async (sandbox) => {
    const { llm } = sandbox.servers;
    llm.script({
      text: "מעבירה לתמיכה.",
      toolCalls: [{ name: "transfer_call", arguments: { department: "support" } }],
    });
    const { client, line } = await connect(sandbox.mediaUrl);
    await client.waitForEcho("greeting_end", TIMEOUT);
    await line.say(clip("hours").audio);
    await client.closed;
    await line.stop();
    const call = { callSid: client.callSid, from: FROM, to: TO };
    const dial = await followConnectAction(sandbox.baseUrl, call);
    assert.deepEqual(dial, {
      kind: "dial",
      action: "http://127.0.0.1:8080/webhook/dial_ended",
      target: "sip:support@pbx.example.com",
      sip: true,
    });
    if (dial.kind !== "dial") return;
    const end = await followDialAction(sandbox.baseUrl, dial, {
      ...call,
      status: "completed",
      durationS: 42,
    });
    assert.deepEqual(end, { kind: "hangup" });
    await waitUntil(() => {
      try {
        return readEndedCallSync(sandbox.storagePath, client.callSid) === "completed";
      } catch {
        return false;
      }
    }, { timeoutMs: 10_000, what: "the dial outcome in the record" });
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.equal(detail.call.outcome, "transferred");
    assert.deepEqual(detail.transfers.map((t) => [t.dialStatus, t.dialDurationS]), [[
      "completed",
      42,
    ]]);
  });
});

/** The dial status of the call's last transfer as stored, or null. */
function readEndedCallSync(path: string, callSid: string): string | null {
  const reader = openCallReader(path);
  try {
    return reader.getCall(callSid)?.transfers.at(-1)?.dialStatus ?? null;
  } finally {
    reader.close();
  }
}

Deno.test("hang-up: the goodbye is heard, the socket closes, the action gets <Hangup/>, the record says agent_hangup", async () => {
  await withSandbox({ tts: { msPerChar: MS_PER_CHAR } }, async (sandbox) => {
    const { llm } = sandbox.servers;
    // No text with the call: Kav asks once more, offering no tools, for the goodbye.
    llm.script({ toolCalls: [{ name: "end_call", arguments: {} }] }, { text: "תודה, להתראות." });
    const { client, line } = await connect(sandbox.mediaUrl);
    await client.waitForEcho("greeting_end", TIMEOUT);
    await line.say(clip("goodbye").audio);
    await client.closed;
    await line.stop();
    const echo = client.echoes.find((e) => e.name === "a1_0");
    assert.ok(echo && !echo.cleared, "the goodbye was heard before the close");
    assert.equal(llm.requests.length, 2);
    assert.equal(llm.requests[1].body.tools, undefined, "the goodbye request offers no tools");
    const next = await followConnectAction(sandbox.baseUrl, {
      callSid: client.callSid,
      from: FROM,
      to: TO,
    });
    assert.deepEqual(next, { kind: "hangup" });
    // Asked again (Twilio retries), the call is no longer Kav's: 204.
    const again = await followConnectAction(sandbox.baseUrl, {
      callSid: client.callSid,
      from: FROM,
      to: TO,
    });
    assert.deepEqual(again, { kind: "none", status: 204 });
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.equal(detail.call.outcome, "agent_hangup");
    assert.equal(detail.turns.at(-1)?.text, "תודה, להתראות.");
  });
});

Deno.test("transfer: the caller speaking over the last sentence cancels it and the model is told", async () => {
  await withSandbox({ extra: TRANSFER }, async (sandbox) => {
    const { llm } = sandbox.servers;
    const last = "אני מעבירה אותך עכשיו למחלקת המכירות, שם יוכלו לעזור לך עם כל מה שצריך, רק רגע.";
    llm.script(
      { text: last, toolCalls: [{ name: "transfer_call", arguments: { department: "sales" } }] },
      { text: "בסדר, אני כאן." },
    );
    const { client, line } = await connect(sandbox.mediaUrl);
    try {
      await client.waitForEcho("greeting_end", TIMEOUT);
      await line.say(clip("appointment").audio);
      // Half a second into the last sentence (about 5 s long), the caller speaks.
      const greetingEnd = client.received.findIndex((m) => m.event === "mark");
      await client.waitFor(
        () => client.received.slice(greetingEnd).some((m) => m.event === "media"),
        { ...TIMEOUT, what: "the last sentence's first frame" },
      );
      await new Promise((resolve) => setTimeout(resolve, 500));
      const hungUp = client.closed.then(() => {
        throw new Error("Kav closed the socket: the transfer was not cancelled");
      });
      hungUp.catch(() => {});
      await Promise.race([line.say(clip("tomorrow").audio), hungUp]);
      await client.waitForEcho("a2_0", TIMEOUT);
      assert.equal(client.socket.readyState, WebSocket.OPEN, "no transfer: the call goes on");
      assert.ok(client.clears.length >= 1, "the last sentence was cleared");
    } finally {
      await line.hangUp();
    }
    const told = llm.requests[1].messages.find((m) => m.role === "tool");
    assert.match(told?.content ?? "", /Not done: the caller spoke/);
    const next = await followConnectAction(sandbox.baseUrl, {
      callSid: client.callSid,
      from: FROM,
      to: TO,
    });
    assert.deepEqual(next, { kind: "none", status: 204 }, "nothing to dial");
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    assert.equal(detail.call.outcome, "completed");
    assert.deepEqual(detail.transfers, []);
    assert.ok(detail.events.some((e) => e.kind === "action_cancelled"));
  });
});
