/**
 * End to end, keypad input and the caller's context (issue 15, SPEC 6): digits reach the model as
 * the caller's turn and the record as keypad input; a key pressed while the agent speaks clears
 * it at once; the CRM's context reaches the first request's prompt without delaying the greeting.
 */
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { keypadMessage } from "../src/agent/keypad.ts";
import { DEFAULT_GREETING } from "../src/config/_schema.ts";
import { sharedScheduler } from "../src/call/scheduler.ts";
import {
  CallerLine,
  clip,
  readEndedCall,
  waitUntil,
  withSandbox,
} from "./support/_conversation.ts";
import { startToolServer } from "../tools/sandbox/tool_server.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT = { timeoutMs: 20_000 };

Deno.test("keypad: digits ended by # reach the model as the caller's turn and the record as keypad input; a key clears agent speech at once", async () => {
  await withSandbox({ extra: "[log]\ntranscripts = false" }, async (sandbox) => {
    const { llm } = sandbox.servers;
    llm.script({ text: "תודה, מצאתי את ההזמנה." });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    let pressedAt = NaN;
    try {
      client.begin();
      line.start();
      // The greeting is playing: a key interrupts it like speech.
      await client.waitForFrames(10, TIMEOUT);
      pressedAt = sharedScheduler().now();
      for (const digit of ["4", "2", "7", "#"]) client.sendDtmf(digit);
      await client.waitFor(() => client.clears.length > 0, { ...TIMEOUT, what: "a clear" });
      await client.waitForEcho("a1_0", TIMEOUT);
    } finally {
      await line.hangUp();
    }
    const clearAfter = client.clears[0] - pressedAt;
    assert.ok(clearAfter < 100, `clear arrived ${clearAfter.toFixed(1)} ms after the key`);
    const user = llm.requests[0].messages.filter((m) => m.role === "user");
    assert.deepEqual(user.map((m) => m.content), [keypadMessage("427")]);
    const detail = await readEndedCall(sandbox.storagePath, client.callSid);
    const caller = detail.turns.filter((t) => t.speaker === "caller");
    assert.deepEqual(caller.map((t) => [t.text, t.input]), [["427", "keypad"]]);
    assert.equal(detail.turns[0].cut, true, "the greeting was cut by the key");
    // Digits can be card or ID numbers: with transcripts off the log never carries them.
    const logged = sandbox.lines.filter((l) => /\[(DTMF|KEYPAD)\]/.test(l));
    assert.ok(logged.length >= 4, logged.join("\n"));
    assert.ok(logged.every((l) => !/digit=|digits=427/.test(l)), logged.join("\n"));
    assert.ok(sandbox.lines.some((l) => /\[BARGE_IN\].*cause=dtmf/.test(l)));
  });
});

Deno.test("keypad: a pause after the last key ends the input", async () => {
  await withSandbox({}, async (sandbox) => {
    const { llm } = sandbox.servers;
    llm.script({ text: "קיבלתי." });
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", TIMEOUT);
      client.sendDtmf("1");
      client.sendDtmf("2");
      await client.waitForEcho("a1_0", TIMEOUT);
    } finally {
      await line.hangUp();
    }
    assert.equal(llm.requests[0].messages.at(-1)?.content, keypadMessage("12"));
  });
});

Deno.test("context: the CRM's context reaches the first request's prompt; a slow CRM does not delay the greeting", async () => {
  const crm = await startToolServer();
  const secret = "ctx-secret";
  try {
    crm.set("context", { kind: "json", body: { context: "Dana Levi, gold plan, open ticket #7" } });
    await withSandbox({
      extra: `[crm]\ncontext_url = "${crm.url("context")}"`,
      env: { KAV_CRM_SECRET: secret },
    }, async (sandbox) => {
      const { llm } = sandbox.servers;
      llm.script({ text: "שלום דנה." });
      const client = await TwilioClient.connect({
        url: sandbox.mediaUrl,
        customParameters: { From: "+972501234567", To: "+97231234567" },
      });
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
      const [request] = crm.requestsFor("context");
      assert.deepEqual(request.body, {
        call_sid: client.callSid,
        from: "+972501234567",
        to: "+97231234567",
      });
      assert.equal(
        request.signature,
        "sha256=" + createHmac("sha256", secret).update(request.raw).digest("hex"),
      );
      const system = llm.requests[0].messages[0];
      assert.equal(system.role, "system");
      assert.match(system.content, /Dana Levi, gold plan, open ticket #7$/);
      assert.ok(system.content.startsWith(sandbox.config.call.system_prompt));
      assert.equal(llm.requests[0].messages[1].content, DEFAULT_GREETING);
      const detail = await readEndedCall(sandbox.storagePath, client.callSid);
      assert.ok(
        detail.events.some((e) => e.kind === "caller_context" && /received/.test(e.detail)),
      );

      // A CRM that takes a second: the greeting's first frame still leaves at once, long before
      // the context arrives (it is fetched beside the greeting, never before it).
      crm.set("context", { kind: "json", body: { context: "late" }, delayMs: 1000 });
      const slow = await TwilioClient.connect({ url: sandbox.mediaUrl });
      try {
        slow.sendConnected();
        await new Promise((resolve) => setTimeout(resolve, 50));
        const startedAt = sharedScheduler().now();
        slow.sendStart();
        await slow.waitForFrames(1, TIMEOUT);
        const firstFrame = slow.mediaArrivals[0] - startedAt;
        await waitUntil(() => crm.requestsFor("context").length === 2, {
          timeoutMs: 500,
          what: "the context request",
        });
        assert.equal(crm.requestsFor("context")[1].answeredAt, null, "and had not come yet");
        assert.ok(firstFrame < 200, `greeting's first frame after ${firstFrame.toFixed(1)} ms`);
      } finally {
        slow.sendStop();
        await slow.close();
      }
    });
  } finally {
    await crm.close();
  }
});
