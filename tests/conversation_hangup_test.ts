/**
 * The caller says something and hangs up at once: Twilio's `stop` follows the last media frame.
 * The audio still queued goes to STT, the stream ends cleanly, and the last words are recorded.
 */
import assert from "node:assert/strict";
import { CallerLine, clip, readEndedCall, withSandbox } from "./support/_conversation.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

Deno.test("CallSession records the caller's last words when stop follows them at once", async () => {
  await withSandbox({}, async (sandbox) => {
    const lastWords = clip("tomorrow"); // 59 frames: an odd count
    const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
    const line = new CallerLine(client);
    try {
      client.begin();
      line.start();
      await client.waitForEcho("greeting_end", { timeoutMs: 20_000 });
      await line.pause(200);
      await line.say(lastWords.audio);
      // `stop` right behind the last frame, with no trailing silence: an odd frame count leaves a
      // half-filled 40 ms STT batch, and the last frames are still in rx_q when `stop` arrives.
      client.sendStop();
      await line.stop();
    } finally {
      await client.close();
    }
    const record = await readEndedCall(sandbox.storagePath, client.callSid, { timeoutMs: 20_000 });
    assert.equal(record.call.outcome, "completed");
    const caller = record.turns.filter((turn) => turn.speaker === "caller");
    assert.deepEqual(caller.map((turn) => turn.text), [lastWords.text]);
    // Every byte sent reached the speech server before its stream ended.
    assert.equal(sandbox.servers.speech.bytesReceived(), line.sent().length);
  });
});
