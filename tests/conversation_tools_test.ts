/**
 * End to end, the agent's tools (issue 15, SPEC 6): the real `openai` client streams parallel tool
 * calls from the local server, Kav checks the arguments, POSTs each (signed) to the local CRM, hands
 * the results back and speaks the next answer; a slow tool gets its filler once; failures become
 * results the model speaks about and the call goes on.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import {
  audioSince,
  CallerLine,
  clip,
  indexOfBytes,
  readEndedCall,
  ttsAudio,
  withSandbox,
} from "./support/_conversation.ts";
import { startToolServer, type ToolServer } from "../tools/sandbox/tool_server.ts";
import { TwilioClient } from "../tools/twilio/client.ts";
import { renderMetrics } from "../src/observe/metrics.ts";

const TIMEOUT = { timeoutMs: 20_000 };
const MS_PER_CHAR = 20;
const SECRET = "crm-test-secret";
const FILLER = "רגע, אני בודקת.";

function toolsToml(tools: ToolServer, extra = ""): string {
  return `${extra}
[[tools]]
name = "lookup_customer"
description = "Find the caller's customer record"
url = "${tools.url("lookup_customer")}"
timeout_ms = 3000
filler = "${FILLER}"
[tools.parameters]
type = "object"
required = ["phone"]
[tools.parameters.properties.phone]
type = "string"

[[tools]]
name = "open_ticket"
description = "Open a ticket"
url = "${tools.url("open_ticket")}"
timeout_ms = 3000
[tools.parameters]
type = "object"
required = ["subject"]
[tools.parameters.properties.subject]
type = "string"
`;
}

async function withTools(
  run: (tools: ToolServer) => Promise<void>,
): Promise<void> {
  const tools = await startToolServer();
  try {
    await run(tools);
  } finally {
    await tools.close();
  }
}

/** Connects a caller, waits for the greeting, says `clipName`; returns client and line. */
async function callAndSay(mediaUrl: string, clipName: string, from = "+972501234567") {
  const client = await TwilioClient.connect({
    url: mediaUrl,
    customParameters: { From: from, To: "+97231234567" },
  });
  const line = new CallerLine(client);
  client.begin();
  line.start();
  await client.waitForEcho("greeting_end", TIMEOUT);
  await line.pause(200);
  await line.say(clip(clipName).audio);
  return { client, line };
}

Deno.test("tools: two parallel calls run, signed, with the CallSid and checked arguments; the result reaches the model and the caller hears the answer", async () => {
  await withTools(async (tools) => {
    tools.set("lookup_customer", {
      kind: "json",
      body: { name: "דנה", plan: "gold" },
      delayMs: 300,
    });
    tools.set("open_ticket", { kind: "json", body: { ticket: 7 }, delayMs: 300 });
    await withSandbox({
      tts: { msPerChar: MS_PER_CHAR },
      extra: toolsToml(tools, "[call]\nfiller_after_ms = 2000"),
      env: { KAV_CRM_SECRET: SECRET },
    }, async (sandbox) => {
      const { llm } = sandbox.servers;
      const answer = "מצאתי אותך, דנה. פתחתי פנייה מספר שבע.";
      llm.script({
        toolCalls: [
          { id: "call_a", name: "lookup_customer", arguments: { phone: "+972501234567" } },
          { id: "call_b", name: "open_ticket", arguments: { subject: "תור למחר" } },
        ],
        argumentPieces: 6,
      }, { text: answer });
      const { client, line } = await callAndSay(sandbox.mediaUrl, "appointment");
      try {
        await client.waitForEcho("a1_1", TIMEOUT);
      } finally {
        await line.hangUp();
      }
      // The CRM got one signed request per call, with the call's CallSid and checked arguments.
      assert.equal(tools.requests.length, 2);
      const [lookup] = tools.requestsFor("lookup_customer");
      const [ticket] = tools.requestsFor("open_ticket");
      assert.deepEqual(lookup.body, {
        call_sid: client.callSid,
        tool: "lookup_customer",
        tool_call_id: "call_a",
        arguments: { phone: "+972501234567" },
        from: "+972501234567",
        to: "+97231234567",
      });
      assert.deepEqual(ticket.body.arguments, { subject: "תור למחר" });
      for (const request of tools.requests) {
        const expected = "sha256=" + createHmac("sha256", SECRET).update(request.raw).digest("hex");
        assert.equal(request.signature, expected);
        assert.equal(request.contentType, "application/json");
      }
      // Concurrent: the second started before the first answered.
      const [first, second] = [...tools.requests].sort((a, b) => a.at - b.at);
      assert.ok(second.at < first.answeredAt!, "both calls ran at the same time");

      // The model's next request carries both results after the message with the calls.
      assert.equal(llm.requests.length, 2);
      assert.deepEqual(
        (llm.requests[0].body.tools as { function: { name: string } }[]).map((t) =>
          t.function.name
        ),
        ["lookup_customer", "open_ticket", "end_call"],
      );
      const tail = llm.requests[1].messages.slice(-3);
      assert.deepEqual(tail.map((m) => m.role), ["assistant", "tool", "tool"]);
      assert.deepEqual(tail[0].tool_calls?.map((c) => c.name), ["lookup_customer", "open_ticket"]);
      assert.equal(tail[1].tool_call_id, "call_a");
      assert.deepEqual(JSON.parse(tail[1].content), { name: "דנה", plan: "gold" });
      assert.deepEqual(JSON.parse(tail[2].content), { ticket: 7 });

      // The caller heard the answer.
      const audio = audioSince(client, 0);
      for (const sentence of ["מצאתי אותך, דנה.", "פתחתי פנייה מספר שבע."]) {
        assert.ok(indexOfBytes(audio, ttsAudio(sentence, MS_PER_CHAR)) > 0, sentence);
      }
      const detail = await readEndedCall(sandbox.storagePath, client.callSid);
      assert.deepEqual(detail.toolCalls.map((t) => [t.name, t.error]).sort(), [
        ["lookup_customer", null],
        ["open_ticket", null],
      ]);
      assert.ok(detail.toolCalls.every((t) => t.ms >= 250 && t.result !== null));
      assert.equal(detail.turns.at(-1)?.text, answer);
      const metrics = renderMetrics();
      assert.match(metrics, /kav_tool_calls_total\{tool="lookup_customer"\} [1-9]/);
      assert.match(metrics, /kav_tool_duration_seconds_count\{tool="open_ticket"\} [1-9]/);
    });
  });
});

Deno.test("tools: a tool slower than filler_after_ms gets its filler once, whole, before the answer", async () => {
  await withTools(async (tools) => {
    tools.set("lookup_customer", { kind: "json", body: { name: "דנה" }, delayMs: 1500 });
    await withSandbox({
      tts: { msPerChar: MS_PER_CHAR },
      extra: toolsToml(tools, "[call]\nfiller_after_ms = 300"),
    }, async (sandbox) => {
      const { llm, tts } = sandbox.servers;
      const answer = "מצאתי אותך, דנה.";
      llm.script({
        toolCalls: [{ name: "lookup_customer", arguments: { phone: "+972501234567" } }],
      }, { text: answer });
      const { client, line } = await callAndSay(sandbox.mediaUrl, "appointment");
      try {
        await client.waitForEcho("a1_1", TIMEOUT);
      } finally {
        await line.hangUp();
      }
      // Synthesized at boot (cached like the greeting), never again.
      assert.equal(tts.requests.filter((r) => r.text === FILLER).length, 1);
      const audio = audioSince(client, 0);
      const filler = ttsAudio(FILLER, MS_PER_CHAR);
      const at = indexOfBytes(audio, filler);
      assert.ok(at > 0, "the filler was played");
      assert.equal(indexOfBytes(audio, filler, at + 1), -1, "only once");
      const answerAt = indexOfBytes(audio, ttsAudio(answer, MS_PER_CHAR));
      assert.ok(answerAt >= at + filler.length, "the answer starts after the filler's end");
      assert.deepEqual(client.marks.slice(1), ["a1_0", "a1_1"]);
      assert.ok(client.echoes.every((e) => !e.cleared), "nothing was cut");
      assert.equal(client.clears.length, 0);
      const detail = await readEndedCall(sandbox.storagePath, client.callSid);
      assert.equal(detail.turns.at(-1)?.text, `${FILLER} ${answer}`);
    });
  });
});

Deno.test("tools: timeout, 500, bad JSON, an oversized answer and invalid arguments come back as errors; the call goes on", async () => {
  await withTools(async (tools) => {
    tools.set("t_hang", { kind: "hang" });
    tools.set("t_500", { kind: "status", status: 500 });
    tools.set("t_bad", { kind: "bad_json" });
    tools.set("t_big", { kind: "large", bytes: 64 * 1024 });
    const tool = (name: string, timeout = 3000) => `
[[tools]]
name = "${name}"
description = "x"
url = "${tools.url(name)}"
timeout_ms = ${timeout}
[tools.parameters]
type = "object"
required = ["id"]
[tools.parameters.properties.id]
type = "integer"
`;
    await withSandbox({
      tts: { msPerChar: MS_PER_CHAR },
      extra: tool("t_hang", 400) + tool("t_500") + tool("t_bad") + tool("t_big") +
        tool("t_valid"),
    }, async (sandbox) => {
      const { llm } = sandbox.servers;
      const sorry = "סליחה, המערכת לא זמינה כרגע.";
      const next = "בסדר גמור.";
      llm.script(
        {
          toolCalls: [
            { id: "h", name: "t_hang", arguments: { id: 1 } },
            { id: "s", name: "t_500", arguments: { id: 1 } },
            { id: "b", name: "t_bad", arguments: { id: 1 } },
            { id: "g", name: "t_big", arguments: { id: 1 } },
            { id: "v", name: "t_valid", arguments: { id: "not a number" } },
          ],
        },
        { text: sorry },
        { text: next },
      );
      const { client, line } = await callAndSay(sandbox.mediaUrl, "appointment");
      try {
        await client.waitForEcho("a1_0", TIMEOUT);
        // The call goes on: the next turn is answered as usual.
        await line.pause(300);
        await line.say(clip("tomorrow").audio);
        await client.waitForEcho("a2_0", TIMEOUT);
      } finally {
        await line.hangUp();
      }
      assert.equal(tools.requestsFor("t_valid").length, 0, "invalid arguments never reach the CRM");
      assert.equal(tools.requests.length, 4);
      const results = Object.fromEntries(
        llm.requests[1].messages.filter((m) => m.role === "tool").map((m) => [
          m.tool_call_id,
          JSON.parse(m.content).error as string,
        ]),
      );
      assert.match(results.h, /timed out after 400 ms/);
      assert.match(results.s, /status 500/);
      assert.match(results.b, /not JSON/);
      assert.match(results.g, /larger than 16384 bytes/);
      assert.match(results.v, /invalid arguments: arguments\/id must be integer/);
      assert.ok(
        indexOfBytes(audioSince(client, 0), ttsAudio(sorry, MS_PER_CHAR)) > 0,
        "the caller heard the model speak about it",
      );
      const detail = await readEndedCall(sandbox.storagePath, client.callSid);
      assert.equal(detail.call.outcome, "completed");
      assert.equal(detail.toolCalls.length, 5);
      assert.ok(detail.toolCalls.every((t) => t.error !== null && t.result === null));
      const metrics = renderMetrics();
      for (
        const [name, reason] of [
          ["t_hang", "timeout"],
          ["t_500", "status"],
          ["t_bad", "bad_json"],
          ["t_big", "too_large"],
          ["t_valid", "invalid_arguments"],
        ]
      ) {
        assert.match(
          metrics,
          new RegExp(`kav_tool_errors_total\\{reason="${reason}",tool="${name}"\\} [1-9]`),
        );
      }
    });
  });
});

Deno.test("tools: barge-in over the filler stops it but not the tool; its result reaches the next request", async () => {
  await withTools(async (tools) => {
    tools.set("lookup_customer", { kind: "json", body: { name: "דנה" }, delayMs: 2000 });
    await withSandbox({
      extra: toolsToml(tools, "[call]\nfiller_after_ms = 300"),
    }, async (sandbox) => {
      const { llm } = sandbox.servers;
      llm.script({
        toolCalls: [{ id: "slow", name: "lookup_customer", arguments: { phone: "+972501234567" } }],
      }, { text: "בסדר, מחר בבוקר." });
      const { client, line } = await callAndSay(sandbox.mediaUrl, "appointment");
      try {
        // The filler starts playing (the greeting's mark came first): the caller speaks over it.
        await client.waitFor(() => client.marks.length === 1 && client.mediaFrames > 60, {
          ...TIMEOUT,
          what: "the filler playing",
        });
        const cleared = client.clears.length;
        await line.say(clip("tomorrow").audio);
        await client.waitFor(() => client.clears.length > cleared, { ...TIMEOUT, what: "clear" });
        await client.waitForEcho("a2_0", TIMEOUT);
      } finally {
        await line.hangUp();
      }
      const [request] = tools.requestsFor("lookup_customer");
      assert.ok(request.answeredAt !== null, "the tool ran to its answer");
      assert.equal(llm.requests.length, 2, "the cut answer made no second request");
      const messages = llm.requests[1].messages;
      const result = messages.find((m) => m.role === "tool" && m.tool_call_id === "slow");
      assert.deepEqual(JSON.parse(result?.content ?? "null"), { name: "דנה" });
      assert.equal(messages.at(-1)?.content, clip("tomorrow").text);
      const detail = await readEndedCall(sandbox.storagePath, client.callSid);
      assert.equal(detail.toolCalls[0]?.result, '{"name":"דנה"}');
    });
  });
});
