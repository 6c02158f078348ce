/**
 * A fleet behind a load balancer: Twilio signs `/twiml` for the balancer's address
 * (`server.voice_url`), while the TwiML still sends the stream to this node's own `public_url`.
 */
import assert from "node:assert/strict";
import { computeSignature } from "../src/twilio/signature.ts";
import { startSandbox } from "../tools/sandbox/sandbox.ts";

Deno.test("/twiml accepts a signature for server.voice_url and streams to this node's public_url", async () => {
  const token = "test-auth-token";
  const sandbox = await startSandbox({
    env: { TWILIO_AUTH_TOKEN: token },
    extra:
      '[twilio]\nvalidate_signatures = true\n[server]\nvoice_url = "https://voice.example.com/"',
  });
  try {
    const publicUrl = sandbox.config.server.public_url;
    assert.equal(sandbox.config.server.voice_url, "https://voice.example.com");
    const form = { CallSid: "CA_LB", From: "+972500000001", To: "+97230000000" };
    const post = async (signedFor: string) => {
      const signature = computeSignature(token, {
        url: `${signedFor}/twiml`,
        params: Object.entries(form),
      });
      return await fetch(`${sandbox.baseUrl}/twiml`, {
        method: "POST",
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          "x-twilio-signature": signature,
        },
        body: new URLSearchParams(form).toString(),
      });
    };
    for (const base of ["https://voice.example.com", publicUrl]) {
      const response = await post(base);
      assert.equal(response.status, 200, base);
      const xml = await response.text();
      const stream = /<Stream url="([^"]+)"/.exec(xml)?.[1] ?? "";
      assert.ok(stream.startsWith(publicUrl.replace(/^http/, "ws")), xml);
    }
    const forged = await post("https://other.example.com");
    assert.equal(forged.status, 403);
    await forged.body?.cancel();
    // Status callbacks come to the node itself: only public_url signs them.
    const statusForm = { CallSid: "CA_LB", StreamSid: "MZ1", StreamEvent: "stream-started" };
    const status = await fetch(`${sandbox.baseUrl}/webhook/stream_status`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": computeSignature(token, {
          url: "https://voice.example.com/webhook/stream_status",
          params: Object.entries(statusForm),
        }),
      },
      body: new URLSearchParams(statusForm).toString(),
    });
    assert.equal(status.status, 403);
    await status.body?.cancel();
  } finally {
    await sandbox.stop();
  }
});
