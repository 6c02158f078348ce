import assert from "node:assert/strict";
import { computeSignature } from "../src/twilio/signature.ts";
import { fixtureClips, startSandbox } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TOKEN = "status-load-token";
const PUBLIC_URL = "http://127.0.0.1:8080";

function statusParams(i: number): Record<string, string> {
  return {
    AccountSid: "AC00000000000000000000000000000000",
    CallSid: `CA${String(i).padStart(32, "0")}`,
    StreamSid: `MZ${String(i).padStart(32, "0")}`,
    StreamEvent: "stream-started",
    Timestamp: new Date().toISOString(),
  };
}

Deno.test("status callbacks are answered 204 while 20 signed calls stream media", async () => {
  const sandbox = await startSandbox({
    env: { TWILIO_AUTH_TOKEN: TOKEN },
    extra: `[twilio]\nvalidate_signatures = true\n[server]\npublic_url = "${PUBLIC_URL}"`,
  });
  const clients: TwilioClient[] = [];
  try {
    const wssUrl = "ws://127.0.0.1:8080/ws/twilio-media";
    const signature = computeSignature(TOKEN, { url: wssUrl });
    for (let i = 0; i < 20; i++) {
      clients.push(
        await TwilioClient.connect({
          url: sandbox.mediaUrl,
          protocols: ["audio.twilio.com"],
          headers: { "X-Twilio-Signature": signature },
        }),
      );
    }
    for (const client of clients) client.begin();
    const caller = fixtureClips()[0].audio;
    const streaming = Promise.all(clients.map(async (client) => {
      await client.streamAudio(caller);
      await client.streamSilence(1000);
    }));

    // Signed status callbacks, back to back, for as long as the media flows.
    const statuses: number[] = [];
    let done = false;
    streaming.finally(() => (done = true));
    for (let i = 0; !done || i < 20; i++) {
      const path = i % 2 === 0 ? "/webhook/stream_status" : "/webhook/stream_ended/";
      const params = statusParams(i);
      const response = await fetch(`${sandbox.baseUrl}${path}`, {
        method: "POST",
        headers: {
          "Content-Type": "application/x-www-form-urlencoded",
          "X-Twilio-Signature": computeSignature(TOKEN, {
            url: PUBLIC_URL + path,
            params: Object.entries(params),
          }),
        },
        body: new URLSearchParams(params),
      });
      assert.equal(await response.text(), "");
      assert.equal(response.headers.get("cache-control"), "no-store");
      statuses.push(response.status);
    }
    await streaming;

    assert.ok(statuses.length >= 20, `callbacks sent: ${statuses.length}`);
    assert.deepEqual(new Set(statuses), new Set([204]));
    for (const client of clients) {
      assert.ok(client.mediaFrames > 0, "every call received agent audio");
      assert.equal(client.invalid.length, 0);
    }
    // An unsigned callback is still refused under the same load.
    const unsigned = await fetch(`${sandbox.baseUrl}/webhook/stream_status`, {
      method: "POST",
      body: new URLSearchParams(statusParams(999)),
    });
    await unsigned.body?.cancel();
    assert.equal(unsigned.status, 403);
  } finally {
    for (const client of clients) {
      client.sendStop();
      await client.close();
    }
    await sandbox.stop();
  }
});
