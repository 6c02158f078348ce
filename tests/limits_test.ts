/**
 * Issue 7, item 1: every limit in `[server]` enforced end to end, through a real Kav (`runKav` via
 * the sandbox, config parsed from TOML, SQLite records) or a real `Deno.serve`. Complements the
 * narrower tests already in http_test.ts (413), call_lifecycle_test.ts (CallManager idle, max
 * duration, refusal), call_malformed_test.ts (oversized) and signature_test.ts (403/429 logs).
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/config/load.ts";
import { createHandler } from "../src/http/handler.ts";
import { readBody } from "../src/http/_body.ts";
import { createLogger } from "../src/observe/log.ts";
import { renderMetrics } from "../src/observe/metrics.ts";
import { parsePrometheusText, sampleValue } from "../src/observe/prom_parse.ts";
import { openCallReader } from "../src/store/read.ts";
import type { CallEvent } from "../src/store/types.ts";
import { computeSignature } from "../src/twilio/signature.ts";
import { busyTwiml } from "../src/twilio/twiml.ts";
import { patternAudio, startCallServer, testCallConfig } from "./support/call_server.ts";
import { startSandbox } from "../tools/sandbox/sandbox.ts";
import { TwilioClient } from "../tools/twilio/client.ts";

const TIMEOUT_MS = 20_000;

function metric(name: string, labels: Record<string, string> = {}): number {
  return sampleValue(parsePrometheusText(renderMetrics()), name, labels) ?? 0;
}

/** Sends raw bytes and returns the response's status line and head (a WebSocket hides them). */
async function rawRequest(port: number, request: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(request));
    let head = "";
    const buffer = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    return head;
  } finally {
    conn.close();
  }
}

function statusOf(head: string): number {
  const match = /^HTTP\/1\.1 (\d{3})/.exec(head);
  assert.ok(match, `no status line in ${JSON.stringify(head.slice(0, 80))}`);
  return Number(match[1]);
}

function upgradeRequest(headers: Record<string, string> = {}): string {
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  return "GET /ws/twilio-media HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" +
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
    `Sec-WebSocket-Version: 13\r\n${extra}\r\n`;
}

function voiceUrlPost(baseUrl: string, form: Record<string, string>, signature?: string) {
  return fetch(`${baseUrl}/twiml`, {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      ...(signature === undefined ? {} : { "x-twilio-signature": signature }),
    },
    body: new URLSearchParams(form).toString(),
  });
}

/** Polls the SQLite store (what is on disk) until `sid` has an outcome. */
async function storedEnd(
  storagePath: string,
  sid: string,
): Promise<{ outcome: string; reason: string; events: readonly CallEvent[] }> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (true) {
    const reader = openCallReader(storagePath);
    try {
      const detail = reader.getCall(sid);
      if (detail?.call.outcome) {
        return {
          outcome: detail.call.outcome,
          reason: detail.call.reason ?? "",
          events: detail.events,
        };
      }
    } finally {
      reader.close();
    }
    if (Date.now() > deadline) throw new Error(`Timed out waiting for the record of ${sid}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

Deno.test({
  name:
    "Kav over server.max_calls answers the Voice URL busy and the upgrade 503, then takes calls again",
}, async () => {
  const sandbox = await startSandbox({ extra: "[server]\nmax_calls = 2" });
  const port = Number(new URL(sandbox.baseUrl).port);
  const clients: TwilioClient[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const client = await TwilioClient.connect({ url: sandbox.mediaUrl });
      clients.push(client);
      client.begin();
    }
    await Promise.all(clients.map((c) => c.waitForFrames(1, { timeoutMs: TIMEOUT_MS })));

    const busy = await voiceUrlPost(sandbox.baseUrl, { CallSid: "CA_THIRD" });
    assert.equal(busy.status, 200);
    assert.equal(await busy.text(), busyTwiml());
    assert.equal(statusOf(await rawRequest(port, upgradeRequest())), 503);
    await assert.rejects(TwilioClient.connect({ url: sandbox.mediaUrl }), /Cannot open WebSocket/);
    assert.ok(sandbox.lines.some((l) => /\[TWIML\] busy call=CA_THIRD reason=max_calls/.test(l)));
    assert.ok(sandbox.lines.some((l) => /\[WS\] upgrade refused .*reason=max_calls/.test(l)));

    // One call ends: capacity is back for both routes.
    clients[0].sendStop();
    await clients[0].closed;
    await storedEnd(sandbox.storagePath, clients[0].callSid);
    const deadline = Date.now() + TIMEOUT_MS;
    while (metric("kav_active_calls") >= 2 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const stream = await voiceUrlPost(sandbox.baseUrl, { CallSid: "CA_FOURTH" });
    assert.match(await stream.text(), /<Connect action=.*<Stream url="ws/);
    const next = await TwilioClient.connect({ url: sandbox.mediaUrl });
    clients.push(next);
    next.begin();
    await next.waitForFrames(1, { timeoutMs: TIMEOUT_MS });
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await sandbox.stop();
  }
});

Deno.test("Kav closes and records a call with no media for idle_media_timeout_s (TOML)", async () => {
  const sandbox = await startSandbox({ extra: "[server]\nidle_media_timeout_s = 0.5" });
  const silent = await TwilioClient.connect({ url: sandbox.mediaUrl });
  try {
    silent.begin();
    const idle = await storedEnd(sandbox.storagePath, silent.callSid);
    assert.equal(idle.outcome, "idle");
    assert.match(idle.reason, /no media for 0.5 s/);
    assert.equal(idle.events.filter((e) => e.kind === "limit").length, 1);
    assert.equal((await silent.closed).code, 1000);
  } finally {
    await silent.close();
    await sandbox.stop();
  }
});

Deno.test("Kav closes and records a call at max_call_duration_s while media flows (TOML)", async () => {
  const sandbox = await startSandbox({ extra: "[server]\nmax_call_duration_s = 1" });
  const talker = await TwilioClient.connect({ url: sandbox.mediaUrl });
  try {
    talker.begin();
    const sent = await talker.streamSilence(4000);
    assert.ok(sent < 200, `the close stopped the stream after ${sent} of 200 frames`);
    const long = await storedEnd(sandbox.storagePath, talker.callSid);
    assert.equal(long.outcome, "max_duration");
    assert.match(long.reason, /call reached 1 s/);
    assert.equal(long.events.filter((e) => e.kind === "limit").length, 1);
    assert.equal((await talker.closed).code, 1000);
  } finally {
    await talker.close();
    await sandbox.stop();
  }
});

Deno.test("CallSession counts UTF-8 bytes against max_ws_message_bytes: at the limit passes, one over is refused", async () => {
  const server = await startCallServer({
    config: testCallConfig({ server: { max_ws_message_bytes: 4096 } }),
  });
  try {
    const client = await server.connect();
    client.begin();
    const mark = (name: string) =>
      `{"event":"mark","sequenceNumber":"3","streamSid":"${client.streamSid}","mark":{"name":"${name}"}}`;
    const bytes = (text: string) => new TextEncoder().encode(text).length;
    const overhead = bytes(mark(""));
    const asciiAtLimit = mark("a".repeat(4096 - overhead));
    // "א" is 2 bytes in UTF-8: 2047 characters short of the limit by count, one byte over by size.
    const hebrewOver = mark("א".repeat((4096 - overhead + 1) / 2));
    const hebrewAtLimit = mark("א".repeat((4096 - overhead - 1) / 2) + "a");
    assert.equal(bytes(asciiAtLimit), 4096);
    assert.equal(bytes(hebrewAtLimit), 4096);
    assert.equal(bytes(hebrewOver), 4097);
    assert.ok(hebrewOver.length < 4096, "fewer characters than the limit");
    client.sendRaw(asciiAtLimit);
    client.sendRaw(hebrewOver);
    client.sendRaw(hebrewAtLimit);
    const audio = patternAudio(10, 4);
    await client.streamAudio(audio);
    client.sendStop();
    const ended = await server.store.waitForEnded(client.callSid, { timeoutMs: TIMEOUT_MS });
    assert.equal(ended.outcome, "completed");
    assert.equal(ended.counters.malformed, 1, "only the message one byte over");
    assert.deepEqual(server.store.events(client.callSid, "malformed").map((e) => e.detail), [
      "oversized",
    ]);
    assert.equal(
      server.lines.filter((l) => l.includes("unknown mark echoed")).length,
      2,
      "both messages at the limit were parsed and handled",
    );
    assert.deepEqual(server.stt.sessions[0].bytes(), audio, "the call went on");
  } finally {
    await server.close();
  }
});

Deno.test("readBody() gives up on a body that stops arriving and cancels it", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode("CallSid=CA"));
    },
    cancel() {
      cancelled = true;
    },
  });
  const req = new Request("http://127.0.0.1/webhook/stream_status", { method: "POST", body });
  assert.deepEqual(await readBody(req, { maxBytes: 1024, timeoutMs: 100 }), {
    ok: false,
    reason: "timeout",
  });
  assert.equal(cancelled, true);
  const quick = new Request("http://127.0.0.1/", { method: "POST", body: "a=1" });
  const read = await readBody(quick, { maxBytes: 1024, timeoutMs: 100 });
  assert.ok(read.ok);
});

Deno.test("readBody() reads a declared-length body in one go and still times it out", async () => {
  const form = "CallSid=CA1&StreamSid=MZ1";
  const whole = new Request("http://127.0.0.1/", {
    method: "POST",
    body: form,
    headers: { "content-length": String(form.length) },
  });
  const read = await readBody(whole, { maxBytes: 1024, timeoutMs: 1000 });
  assert.ok(read.ok);
  assert.equal(new TextDecoder().decode(read.bytes), form);
  const stalled = new Request("http://127.0.0.1/", {
    method: "POST",
    body: new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode("CallSid=CA"));
      },
    }),
    headers: { "content-length": "200" },
  });
  assert.deepEqual(await readBody(stalled, { maxBytes: 1024, timeoutMs: 100 }), {
    ok: false,
    reason: "timeout",
  });
});

Deno.test("a webhook body trickled in (slowloris) gets 408 and Kav keeps serving", async () => {
  const config = parseConfig(
    `[server]\npublic_url = "https://kav.example.com"\n[twilio]\nvalidate_signatures = false\n`,
    { env: {}, credentialsDir: null },
  );
  const handler = createHandler({
    config,
    log: createLogger(() => {}),
    calls: { canAccept: () => true, attach: (socket) => socket.close() },
    onStatusEvent: () => {},
    isDraining: () => false,
    bodyTimeoutMs: 300,
  });
  const controller = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: controller.signal, onListen() {} },
    handler,
  );
  try {
    const head = await rawRequest(
      server.addr.port,
      "POST /webhook/stream_status HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nCallSid=CA",
    );
    assert.equal(statusOf(head), 408);
    assert.match(head, /connection: close/i);
    const health = await fetch(`http://127.0.0.1:${server.addr.port}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
  } finally {
    controller.abort();
    await server.finished;
  }
});

Deno.test({
  name:
    "bad signatures are capped per IP on every route with 429, counted, and Twilio still gets through",
}, async () => {
  const token = "test-auth-token";
  const sandbox = await startSandbox({
    env: { TWILIO_AUTH_TOKEN: token },
    extra: "[twilio]\nvalidate_signatures = true\n[server]\nbad_signature_per_ip_per_min = 3",
  });
  const port = Number(new URL(sandbox.baseUrl).port);
  const publicUrl = sandbox.config.server.public_url;
  const bad = (route: string) => metric("kav_bad_signatures_total", { route });
  const limited = (route: string) => metric("kav_rate_limited_requests_total", { route });
  const before = {
    twiml: [bad("twiml"), limited("twiml")],
    media: [bad("media"), limited("media")],
    status: [bad("stream_status"), limited("stream_status")],
  };
  const statusForm = { CallSid: "CA1", StreamSid: "MZ1", StreamEvent: "stream-started" };
  const postStatus = async (signature: string) => {
    const response = await fetch(`${sandbox.baseUrl}/webhook/stream_status`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": signature,
      },
      body: new URLSearchParams(statusForm).toString(),
    });
    await response.body?.cancel();
    return response.status;
  };
  const postTwiml = async () => {
    const response = await voiceUrlPost(sandbox.baseUrl, { CallSid: "CA_X" }, "forged");
    await response.body?.cancel();
    return response.status;
  };
  const upgrade = async () =>
    statusOf(await rawRequest(port, upgradeRequest({ "X-Twilio-Signature": "forged" })));
  try {
    const statuses = [
      await postTwiml(),
      await postTwiml(),
      await upgrade(),
      await postTwiml(),
      await postStatus("forged"),
      await upgrade(),
    ];
    assert.deepEqual(statuses, [403, 403, 403, 429, 429, 429]);
    assert.deepEqual([bad("twiml") - before.twiml[0], limited("twiml") - before.twiml[1]], [3, 1]);
    assert.deepEqual([bad("media") - before.media[0], limited("media") - before.media[1]], [2, 1]);
    assert.deepEqual(
      [bad("stream_status") - before.status[0], limited("stream_status") - before.status[1]],
      [1, 1],
    );
    // Logged per request up to the cap, then once: a flood cannot flood the log.
    assert.equal(sandbox.lines.filter((l) => l.includes("[HTTP] bad signature route=")).length, 3);
    assert.equal(sandbox.lines.filter((l) => l.includes("over the per-IP cap")).length, 1);

    // Correctly signed requests from the same address are never locked out.
    const signed = computeSignature(token, {
      url: `${publicUrl}/webhook/stream_status`,
      params: Object.entries(statusForm),
    });
    assert.equal(await postStatus(signed), 204);
    const voiceForm = { CallSid: "CA_REAL", From: "+972500000001", To: "+97230000000" };
    const voiceSignature = computeSignature(token, {
      url: `${publicUrl}/twiml`,
      params: Object.entries(voiceForm),
    });
    const voice = await voiceUrlPost(sandbox.baseUrl, voiceForm, voiceSignature);
    assert.equal(voice.status, 200);
    assert.match(await voice.text(), /<Stream /);
  } finally {
    await sandbox.stop();
  }
});
